package kafka_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
)

// ParseURL never panics; what it accepts names at least one broker and
// valid settings; what it rejects is an error that never shows a password.
//
//	go test -run '^$' -fuzz FuzzParseURL -fuzztime 10s ./pubsub/kafka
func FuzzParseURL(f *testing.F) {
	for _, seed := range []string{
		"kafka://h:9092",
		"kafka://h1:9092,h2:9092?group_prefix=app.&create_topics=true&partitions=3&replication_factor=3",
		"kafka://embedded",
		"kafka://%zz",
		"kafka://u:secret@h:9092",
		"kafka://h:9092?partitions=1&partitions=2",
		"kafka://h:9092/orders#x",
		"kafka://,,?replication_factor=-1",
		"redis://h:6379",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := kafka.ParseURL(raw)
		if err != nil {
			if u, perr := url.Parse(raw); perr == nil && u.User != nil {
				if pw, ok := u.User.Password(); ok && len(pw) >= 3 && strings.Contains(err.Error(), ":"+pw+"@") {
					t.Fatalf("error %q shows the password of %q", err, raw)
				}
			}
			return
		}
		if len(c.Brokers) == 0 {
			t.Fatalf("%q accepted with no broker", raw)
		}
		for _, b := range c.Brokers {
			if strings.TrimSpace(b) == "" {
				t.Fatalf("%q accepted with an empty broker", raw)
			}
		}
		if c.MainTopicPartitions < 0 || c.ReplicationFactor < -1 {
			t.Fatalf("%q accepted with partitions %d, replication factor %d", raw, c.MainTopicPartitions, c.ReplicationFactor)
		}
	})
}
