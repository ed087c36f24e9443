package kafka_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// newLogged opens a backend on env with config and logger, closed when the
// test ends.
func newLogged(t *testing.T, config kafka.Config, logger watermill.LoggerAdapter) *kafka.Backend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := kafka.New(ctx, config, logger)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// admin returns a cluster admin on brokers, closed when the test ends.
func admin(t *testing.T, brokers []string) sarama.ClusterAdmin {
	t.Helper()
	a, err := sarama.NewClusterAdmin(brokers, kafkatest.SaramaConfig())
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })
	return a
}

// setTopicConfig sets one config of topic and waits until the broker
// reports it. A KRaft controller answers the change once it is in the
// metadata log, before every broker applied it: a real Kafka broker could
// still take a record the new limit refuses.
func setTopicConfig(t *testing.T, brokers []string, topic, key, value string) {
	t.Helper()
	a := admin(t, brokers)
	err := a.IncrementalAlterConfig(sarama.TopicResource, topic, map[string]sarama.IncrementalAlterConfigsEntry{
		key: {Operation: sarama.IncrementalAlterConfigsOperationSet, Value: &value},
	}, false)
	require.NoError(t, err, "set %s=%s on %s", key, value, topic)
	require.Eventually(t, func() bool {
		v, err := describeTopicConfig(a, topic, key)
		return err == nil && v == value
	}, 10*time.Second, 20*time.Millisecond, "the broker reports %s=%s on %s", key, value, topic)
}

// topicConfig reads one config of topic.
func topicConfig(t *testing.T, brokers []string, topic, key string) string {
	t.Helper()
	v, err := describeTopicConfig(admin(t, brokers), topic, key)
	require.NoError(t, err)
	return v
}

// describeTopicConfig reads one config of topic through a.
func describeTopicConfig(a sarama.ClusterAdmin, topic, key string) (string, error) {
	entries, err := a.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{key}})
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if e.Name == key {
			return e.Value, nil
		}
	}
	return "", nil
}

// committed returns the offset group committed on partition 0 of topic,
// -1 when none.
func committed(t *testing.T, brokers []string, group, topic string) int64 {
	t.Helper()
	offsets, err := admin(t, brokers).ListConsumerGroupOffsets(group, map[string][]int32{topic: {0}})
	require.NoError(t, err)
	if blk := offsets.GetBlock(topic, 0); blk != nil {
		return blk.Offset
	}
	return -1
}

// prepare creates the topics of handler on topic with policy, so that a
// test can change them before the handler runs.
func prepare(t *testing.T, b tiered.Backend, policy tiered.Policy, topic, handler string) tiered.Topics {
	t.Helper()
	topics, err := policy.Topics(topic, handler, nil)
	require.NoError(t, err)
	require.NoError(t, b.Prepare(context.Background(), topics))
	return topics
}

// produceFailure makes the embedded broker answer produce requests to
// topic alone with NOT_ENOUGH_REPLICAS (a temporary error) until the
// returned function is called. (A real broker cannot be told to; Kafka 4
// accepts acks=all writes to a one-replica topic whatever its
// min.insync.replicas says.)
func produceFailure(t *testing.T, env kafkatest.Env, topic string) (stop func()) {
	t.Helper()
	require.NotNil(t, env.Cluster, "fault injection needs kafkatest.StartEmbedded")
	var mu sync.Mutex
	failing := true
	env.Cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		env.Cluster.KeepControl()
		produce := req.(*kmsg.ProduceRequest)
		mu.Lock()
		defer mu.Unlock()
		if !failing || len(produce.Topics) != 1 || produce.Topics[0].Topic != topic {
			return nil, nil, false
		}
		resp := produce.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range produce.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.NotEnoughReplicas.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	return func() {
		mu.Lock()
		failing = false
		mu.Unlock()
	}
}

// captureLogger counts log lines by level and message.
type captureLogger struct {
	watermill.LoggerAdapter
	mu     sync.Mutex
	errors map[string]int
	infos  map[string]int
}

func newCaptureLogger() *captureLogger {
	return &captureLogger{LoggerAdapter: watermill.NopLogger{}, errors: map[string]int{}, infos: map[string]int{}}
}

func (l *captureLogger) Error(msg string, _ error, _ watermill.LogFields) {
	l.mu.Lock()
	l.errors[msg]++
	l.mu.Unlock()
}

func (l *captureLogger) Info(msg string, _ watermill.LogFields) {
	l.mu.Lock()
	l.infos[msg]++
	l.mu.Unlock()
}

func (l *captureLogger) With(watermill.LogFields) watermill.LoggerAdapter { return l }

// errorsContaining counts Error lines whose message contains s.
func (l *captureLogger) errorsContaining(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for msg, c := range l.errors {
		if strings.Contains(msg, s) {
			n += c
		}
	}
	return n
}
