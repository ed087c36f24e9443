package kafka_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
)

func TestParseURL(t *testing.T) {
	c, err := kafka.ParseURL("kafka://h1:9092,h2:9093?group_prefix=app.&create_topics=true&partitions=3&replication_factor=2")
	require.NoError(t, err)
	require.Equal(t, []string{"h1:9092", "h2:9093"}, c.Brokers)
	require.Equal(t, "app.", c.ConsumerGroupPrefix)
	require.True(t, c.CreateTopics)
	require.Equal(t, int32(3), c.MainTopicPartitions)
	require.Equal(t, int16(2), c.ReplicationFactor)

	for url, want := range map[string]string{
		"redis://h:6379":                      "must start with kafka://",
		"kafka://":                            "names no broker",
		"kafka://h:9092?partitions=0":         "partitions",
		"kafka://h:9092?create_topics=yes!":   "create_topics",
		"kafka://h:9092?replication_factor=0": "replication_factor",
		"kafka://h:9092?colour=blue":          `unknown parameter "colour"`,
	} {
		_, err := kafka.ParseURL(url)
		require.ErrorContains(t, err, want, url)
	}
}

func TestNew_invalidConfig(t *testing.T) {
	for name, tc := range map[string]struct {
		config kafka.Config
		want   string
	}{
		"no brokers":      {kafka.Config{}, "Brokers is empty"},
		"blank broker":    {kafka.Config{Brokers: []string{" "}}, "Brokers[0] is empty"},
		"bad replication": {kafka.Config{Brokers: []string{"h:1"}, ReplicationFactor: -2}, "ReplicationFactor"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := kafka.New(tc.config, nil)
			require.ErrorContains(t, err, "invalid config")
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestOpen_embedded(t *testing.T) {
	b, err := kafka.Open(context.Background(), "kafka://embedded?group_prefix=demo.", nil)
	require.NoError(t, err)
	defer b.Close()
	require.NotEqual(t, []string{"embedded"}, b.Brokers(), "the embedded broker's own address is used")

	_, err = kafka.Open(context.Background(), "kafka://embedded,h:9092", nil)
	require.ErrorContains(t, err, `"embedded" cannot be listed with other brokers`)
	_, err = kafka.Open(context.Background(), "kafka://embedded?colour=blue", nil)
	require.ErrorContains(t, err, `unknown parameter "colour"`)
}
