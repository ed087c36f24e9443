package kafka_test

import (
	"context"
	"testing"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/kafkaoffsets"
	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
)

// The Inspector's contract is tested on every backend in tests/; these
// are the Kafka-only cases.

func TestInspector_lagPerPartitionAfterRetention(t *testing.T) {
	env := kafkatest.Start(t)
	config := env.Config()
	config.ConsumerGroupPrefix = "app."
	b := kafkatest.New(t, config)
	topic := kafkatest.Topic(t)

	sc := b.SaramaConfig()
	sc.Producer.Partitioner = sarama.NewManualPartitioner
	client, err := sarama.NewClient(env.Brokers, sc)
	require.NoError(t, err)
	defer client.Close()
	admin, err := sarama.NewClusterAdminFromClient(client)
	require.NoError(t, err)
	require.NoError(t, admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 2, ReplicationFactor: 1}, false))
	producer, err := sarama.NewSyncProducerFromClient(client)
	require.NoError(t, err)
	defer producer.Close()
	for p, n := range []int{6, 4} {
		for range n {
			_, _, err := producer.SendMessage(&sarama.ProducerMessage{Topic: topic, Partition: int32(p), Value: sarama.StringEncoder("x")})
			require.NoError(t, err)
		}
	}

	// The group consumed 2 records of partition 0 and 3 of partition 1.
	commit(t, client, "app.g", topic, map[int32]int64{0: 2, 1: 3})
	ctx := context.Background()
	lag, err := b.Lag(ctx, topic, "g")
	require.NoError(t, err)
	require.EqualValues(t, (6-2)+(4-3), lag)

	// Retention (here DeleteRecords) removes partition 0's records before
	// offset 4, past the group's offset: only what is left counts.
	require.NoError(t, admin.DeleteRecords(topic, map[int32]int64{0: 4}))
	lag, err = b.Lag(ctx, topic, "g")
	require.NoError(t, err)
	require.EqualValues(t, (6-4)+(4-3), lag)

	lag, err = b.Lag(ctx, topic, "app.g")
	require.NoError(t, err)
	require.EqualValues(t, (6-4)+4, lag, "the backend's prefix goes before the group, so app.g is another group")
}

// commit commits offsets for group as a client outside the group (no
// member, generation -1), as the dlq package checkpoints a redrive.
func commit(t *testing.T, client sarama.Client, group, topic string, offsets map[int32]int64) {
	t.Helper()
	require.NoError(t, kafkaoffsets.Commit(client, group, topic, offsets))
	admin, err := sarama.NewClusterAdminFromClient(client)
	require.NoError(t, err)
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: keys(offsets)})
	require.NoError(t, err)
	for p, o := range offsets {
		require.EqualValues(t, o, resp.GetBlock(topic, p).Offset)
	}
}

func keys(m map[int32]int64) []int32 {
	var out []int32
	for k := range m {
		out = append(out, k)
	}
	return out
}
