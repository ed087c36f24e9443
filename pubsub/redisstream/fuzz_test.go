package redisstream_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
)

// The URL parser never panics; what it accepts has valid settings and
// leaves go-redis a URL it parses too; no error shows a password.
//
//	go test -run '^$' -fuzz FuzzParseURL -fuzztime 10s ./pubsub/redisstream
func FuzzParseURL(f *testing.F) {
	for _, seed := range []string{
		"redis://127.0.0.1:6379/0",
		"redis://u:secret@h:6379/1?max_len=100000&consumer_group_prefix=app.&max_idle_time=60s&claim_interval=5s",
		"rediss://h:6380?dial_timeout=3s",
		"unix:///tmp/redis.sock?db=2",
		"redis://h:6379?max_len=1&max_len=2",
		"redis://%zz",
		"redis://h:6379?nope=1",
		"redis://:secret@h?max_idle_time=-1s",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c, rest, err := redisstream.ParseURL(raw)
		if err != nil {
			if u, perr := url.Parse(raw); perr == nil && u.User != nil {
				if pw, ok := u.User.Password(); ok && len(pw) >= 3 && strings.Contains(err.Error(), ":"+pw+"@") {
					t.Fatalf("error %q shows the password of %q", err, raw)
				}
			}
			return
		}
		if c.MaxLen < 0 || c.MaxIdleTime < 0 || c.ClaimInterval < 0 {
			t.Fatalf("%q accepted with %+v", raw, c)
		}
		if u, err := url.Parse(rest); err == nil {
			for _, own := range []string{"max_len", "consumer_group_prefix", "max_idle_time", "claim_interval"} {
				if u.Query().Has(own) {
					t.Fatalf("%q: the backend's own parameter %s reaches go-redis: %q", raw, own, rest)
				}
			}
		}
		// go-redis may still refuse what is left (a bad scheme, say), but
		// it must not panic on it.
		_, _ = redis.ParseURL(rest)
	})
}
