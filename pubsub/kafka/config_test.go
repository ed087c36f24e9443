package kafka_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
)

func TestParseURL_readsEveryParameter(t *testing.T) {
	c, err := kafka.ParseURL("kafka://h1:9092,h2:9093?group_prefix=app.&create_topics=true&partitions=3&replication_factor=2")
	require.NoError(t, err)
	require.Equal(t, []string{"h1:9092", "h2:9093"}, c.Brokers)
	require.Equal(t, "app.", c.ConsumerGroupPrefix)
	require.True(t, c.CreateTopics)
	require.Equal(t, int32(3), c.MainTopicPartitions)
	require.Equal(t, int16(2), c.ReplicationFactor)

	c, err = kafka.ParseURL("kafka://h:9092/")
	require.NoError(t, err)
	require.Equal(t, []string{"h:9092"}, c.Brokers)
}

func TestParseURL_badURLsNameTheProblem(t *testing.T) {
	for _, tt := range []struct {
		url  string
		want []string
	}{
		{"redis://h:6379", []string{"must start with kafka://"}},
		{"kafka://", []string{"names no broker"}},
		{"kafka://%zz", []string{`"kafka://%zz"`, "cannot be parsed", "%zz"}},
		{"kafka://h:9092?partitions=0", []string{"partitions"}},
		{"kafka://h:9092?create_topics=yes!", []string{"create_topics"}},
		{"kafka://h:9092?replication_factor=0", []string{"replication_factor"}},
		{"kafka://h:9092?colour=blue", []string{`unknown parameter "colour"`, "known: group_prefix, create_topics, partitions, replication_factor"}},
		{"kafka://h:9092?partitions=1&partitions=2", []string{`parameter "partitions" is given 2 times`}},
		{"kafka://h:9092?group_prefix=a&group_prefix=a", []string{`"group_prefix" is given 2 times`}},
		{"kafka://h:9092?a=%zz", []string{"bad query"}},
		{"kafka://h:9092/orders", []string{`unexpected path "/orders"`}},
		{"kafka://h:9092#x", []string{`unexpected fragment "x"`}},
	} {
		t.Run(tt.url, func(t *testing.T) {
			_, err := kafka.ParseURL(tt.url)
			for _, want := range tt.want {
				require.ErrorContains(t, err, want)
			}
		})
	}
}

func TestParseURL_neverEchoesAPassword(t *testing.T) {
	_, err := kafka.ParseURL("kafka://user:s3cret@h:9092")
	require.ErrorContains(t, err, "a user is not supported")
	require.NotContains(t, err.Error(), "s3cret")
}

func TestNew_invalidConfig(t *testing.T) {
	for name, tc := range map[string]struct {
		config kafka.Config
		want   string
	}{
		"no brokers":      {kafka.Config{}, "Brokers is empty"},
		"blank broker":    {kafka.Config{Brokers: []string{" "}}, "Brokers[0] is empty"},
		"bad replication": {kafka.Config{Brokers: []string{"h:1"}, ReplicationFactor: -2}, "ReplicationFactor"},
		"bad window":      {kafka.Config{Brokers: []string{"h:1"}, PartitionWindow: -1}, "PartitionWindow"},
		"bad drain":       {kafka.Config{Brokers: []string{"h:1"}, DrainTimeout: -1}, "DrainTimeout"},
		"embedded":        {kafka.Config{Brokers: []string{"embedded"}}, "pubsub/embedded"},
		"drain too long":  {kafka.Config{Brokers: []string{"h:1"}, DrainTimeout: time.Minute}, "must be below Sarama's Consumer.Group.Rebalance.Timeout"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := kafka.New(context.Background(), tc.config, nil)
			require.ErrorContains(t, err, "invalid config")
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// kafka://embedded is served by package pubsub/embedded, so that this
// package never links an in-process broker.
func TestOpen_embeddedNamesItsPackage(t *testing.T) {
	_, err := kafka.Open(context.Background(), "kafka://embedded", nil)
	require.ErrorContains(t, err, "github.com/retry-kafka/retry-kafka/pubsub/embedded")
	_, err = kafka.Open(context.Background(), "kafka://embedded?colour=blue", nil)
	require.ErrorContains(t, err, `unknown parameter "colour"`)
}
