package dlq_test

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/dlq"
	"github.com/retry-kafka/retry-kafka/internal/dlqtest"
	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// waitFor bounds every wait for an outcome.
const waitFor = 60 * time.Second

// broker is one backend under test, with a dlq client on it.
type broker struct {
	name    string
	backend tiered.Backend
	client  *dlq.Client
	url     string // opens the same backend with dlq.Open

	kafka   *kafkatest.Env // Kafka only
	prefix  string         // consumer group prefix
	redis   *redis.Client  // Redis only
	t       *testing.T
	counter int
}

// forEachBroker runs fn as a parallel subtest on Kafka (kfake, or
// KAFKA_BROKERS) and on a real Redis.
func forEachBroker(t *testing.T, fn func(t *testing.T, b *broker)) {
	t.Helper()
	for _, name := range []string{"kafka", "redis"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fn(t, newBroker(t, name))
		})
	}
}

func newBroker(t *testing.T, name string) *broker {
	t.Helper()
	b := &broker{name: name, t: t, prefix: "t" + watermill.NewShortUUID()[:8] + "."}
	switch name {
	case "kafka":
		env := kafkatest.Start(t)
		b.kafka = &env
		config := env.Config()
		config.ConsumerGroupPrefix = b.prefix
		config.MainTopicPartitions = 2
		b.backend = kafkatest.New(t, config)
		b.url = "kafka://" + env.Brokers[0] + "?group_prefix=" + b.prefix
	case "redis":
		addr := redistest.Addr(t)
		b.redis = redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() {
			ctx := context.Background()
			iter := b.redis.Scan(ctx, 0, redistest.Pattern(t), 100).Iterator()
			for iter.Next(ctx) {
				_ = b.redis.Del(ctx, iter.Val()).Err()
			}
			_ = b.redis.Close()
		})
		backend, err := redisstream.New(context.Background(), redisstream.Config{
			Client:              b.redis,
			ConsumerGroupPrefix: b.prefix,
			MaxIdleTime:         2 * time.Second,
			ClaimInterval:       200 * time.Millisecond,
			NackResendSleep:     50 * time.Millisecond,
			CloseTimeout:        5 * time.Second,
		}, nil)
		require.NoError(t, err)
		t.Cleanup(func() { _ = backend.Close() })
		b.backend = backend
		b.url = "redis://" + addr + "/0?consumer_group_prefix=" + b.prefix
	}
	client, err := dlq.New(dlq.Config{Backend: b.backend}, nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, client.Close()) })
	b.client = client
	return b
}

func (b *broker) isKafka() bool { return b.name == "kafka" }

// topic returns a topic name unique to the test and call; on Redis it is
// deleted when the test ends.
func (b *broker) topic(base string) string {
	b.counter++
	if b.isKafka() {
		return kafkatest.Topic(b.t) + "." + base + strconv.Itoa(b.counter)
	}
	return redistest.Name(b.t, base+strconv.Itoa(b.counter))
}

// handler prepares the topics of a handler called name on a new main
// topic, with tiers of 1m and 1h.
func (b *broker) handler(name string) tiered.Topics {
	b.t.Helper()
	topics, err := tiered.Policy{Delays: []time.Duration{time.Minute, time.Hour}}.Topics(b.topic("orders"), name, nil)
	require.NoError(b.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(b.t, b.backend.Prepare(ctx, topics))
	if !b.isKafka() {
		// Streams exist once they hold an entry; a redrive refuses a
		// destination that does not exist.
		for _, s := range append([]string{topics.Main}, topics.Tiers...) {
			require.NoError(b.t, b.redis.XAdd(ctx, &redis.XAddArgs{Stream: s, Values: map[string]any{"init": "1"}}).Err())
			require.NoError(b.t, b.redis.XTrimMaxLen(ctx, s, 0).Err())
		}
	}
	return topics
}

// letter is a dead letter to write.
type letter = dlqtest.Letter

// deadLetters writes letters to topics.DLQ as the retry middleware writes
// dead letters, and returns their UUIDs.
func (b *broker) deadLetters(topics tiered.Topics, letters ...letter) []string {
	b.t.Helper()
	return dlqtest.Write(b.t, b.backend, topics, letters...)
}

// manyDeadLetters writes n plain dead letters.
func (b *broker) manyDeadLetters(topics tiered.Topics, n int) []string {
	letters := make([]letter, n)
	for i := range letters {
		letters[i].Key = "k" + strconv.Itoa(i%7)
	}
	return b.deadLetters(topics, letters...)
}

// all reads every message of topic through the client.
func (b *broker) all(topic string, filter dlq.Filter) []*dlq.Message {
	b.t.Helper()
	var out []*dlq.Message
	for msg, err := range b.client.Messages(context.Background(), topic, filter) {
		require.NoError(b.t, err)
		out = append(out, msg)
	}
	return out
}

func uuidsOf(msgs []*dlq.Message) []string {
	out := make([]string, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, m.UUID)
	}
	slices.Sort(out)
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// rawRecord writes a record that Watermill did not write: no UUID header
// (Kafka), fields of another tool (Redis).
func (b *broker) rawRecord(topic string, fields map[string]string) {
	b.t.Helper()
	if b.isKafka() {
		config := kafkatest.SaramaConfig()
		config.Producer.Return.Successes = true
		producer, err := sarama.NewSyncProducer(b.kafka.Brokers, config)
		require.NoError(b.t, err)
		defer producer.Close()
		rec := &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder("raw-key"), Value: sarama.StringEncoder(fields["payload"])}
		for k, v := range fields {
			rec.Headers = append(rec.Headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
		}
		_, _, err = producer.SendMessage(rec)
		require.NoError(b.t, err)
		return
	}
	values := map[string]any{}
	for k, v := range fields {
		values[k] = v
	}
	require.NoError(b.t, b.redis.XAdd(context.Background(), &redis.XAddArgs{Stream: topic, Values: values}).Err())
}
