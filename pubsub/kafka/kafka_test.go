package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// call is one handler invocation.
type call struct {
	uuid, topic, payload string
	at                   time.Time // wall clock, like due times
	due                  time.Time
}

// harness runs one handler with tiered retries on a router and records
// every call and every dead letter.
type harness struct {
	t       *testing.T
	backend tiered.Backend
	topic   string
	handler *router.Handler
	router  *message.Router

	stop func()

	mu    sync.Mutex
	calls []call
	dead  []*message.Message
}

// newHarness starts the router; setup functions run on it before the
// handler is added (router-level middleware, say).
func newHarness(t *testing.T, backend tiered.Backend, topic, name string, policy tiered.Policy, fn func(msg *message.Message, attempt int) error, setup ...func(*message.Router)) *harness {
	t.Helper()
	h := &harness{t: t, backend: backend, topic: topic}
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	require.NoError(t, err)
	for _, f := range setup {
		f(r)
	}
	retrying, err := router.New(router.Config{Backend: backend, Policy: policy}, nil)
	require.NoError(t, err)
	attempts := map[string]int{}
	h.handler, err = retrying.AddConsumerHandler(r, name, topic, func(msg *message.Message) error {
		due, _, _ := tiered.DueAt(msg.Metadata)
		h.mu.Lock()
		attempts[msg.UUID]++
		n := attempts[msg.UUID]
		h.calls = append(h.calls, call{uuid: msg.UUID, topic: message.SubscribeTopicFromCtx(msg.Context()), payload: string(msg.Payload), at: time.Now().Round(0), due: due})
		h.mu.Unlock()
		return fn(msg, n)
	})
	require.NoError(t, err)
	dlqSub, err := backend.Subscriber(tiered.SubscribeParams{Group: h.handler.Topics.DLQ + ".reader", Topic: h.handler.Topics.DLQ})
	require.NoError(t, err)
	r.AddConsumerHandler(name+".dlq-reader", h.handler.Topics.DLQ, dlqSub, func(msg *message.Message) error {
		h.mu.Lock()
		h.dead = append(h.dead, msg)
		h.mu.Unlock()
		return nil
	})
	h.router = r
	h.run()
	return h
}

func (h *harness) run() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.router.Run(ctx)
	}()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			_ = h.router.Close()
			cancel()
			<-done
		})
	}
	h.t.Cleanup(h.stop)
	select {
	case <-h.router.Running():
	case <-time.After(30 * time.Second):
		h.t.Fatal("router did not start")
	}
}

func (h *harness) publish(msgs ...*message.Message) {
	h.t.Helper()
	require.NoError(h.t, h.backend.Publisher().Publish(h.topic, msgs...))
}

func (h *harness) snapshot() ([]call, []*message.Message) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]call(nil), h.calls...), append([]*message.Message(nil), h.dead...)
}

func (h *harness) waitDead(n int) []*message.Message {
	h.t.Helper()
	var dead []*message.Message
	require.Eventually(h.t, func() bool {
		_, dead = h.snapshot()
		return len(dead) >= n
	}, 60*time.Second, 20*time.Millisecond, "waiting for %d dead letters", n)
	return dead
}

func (h *harness) waitCalls(n int) []call {
	h.t.Helper()
	var calls []call
	require.Eventually(h.t, func() bool {
		calls, _ = h.snapshot()
		return len(calls) >= n
	}, 60*time.Second, 20*time.Millisecond, "waiting for %d handler calls", n)
	return calls
}

// waitTierCall waits until the message uuid was handled from tier.
func (h *harness) waitTierCall(uuid, tier string) {
	h.t.Helper()
	require.Eventually(h.t, func() bool {
		calls, _ := h.snapshot()
		for _, c := range calls {
			if c.uuid == uuid && c.topic == tier {
				return true
			}
		}
		return false
	}, 60*time.Second, 20*time.Millisecond, "waiting for %s on %s", uuid, tier)
}

func topicsOf(calls []call) []string {
	var out []string
	for _, c := range calls {
		out = append(out, c.topic)
	}
	return out
}

// recordCount returns how many records topic holds.
func recordCount(t *testing.T, brokers []string, topic string) int64 {
	t.Helper()
	client, err := sarama.NewClient(brokers, kafkatest.SaramaConfig())
	require.NoError(t, err)
	defer client.Close()
	parts, err := client.Partitions(topic)
	require.NoError(t, err)
	var n int64
	for _, p := range parts {
		newest, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		require.NoError(t, err)
		oldest, err := client.GetOffset(topic, p, sarama.OffsetOldest)
		require.NoError(t, err)
		n += newest - oldest
	}
	return n
}

var fastPolicy = tiered.Policy{Delays: []time.Duration{300 * time.Millisecond, 600 * time.Millisecond}, MaxAttempts: 3}

func TestKafka_happyPathTouchesNoTier(t *testing.T) {
	env := kafkatest.Start(t)
	b := kafkatest.New(t, env.Config())
	h := newHarness(t, b, kafkatest.Topic(t), "billing", fastPolicy, func(*message.Message, int) error { return nil })
	for i := range 5 {
		h.publish(message.NewMessage(watermill.NewUUID(), []byte(strconv.Itoa(i))))
	}
	calls := h.waitCalls(5)
	for _, c := range calls {
		require.Equal(t, h.topic, c.topic)
	}
	for _, tier := range h.handler.Topics.Tiers {
		require.Zero(t, recordCount(t, env.Brokers, tier), "tier %s must stay empty", tier)
	}
	require.Zero(t, recordCount(t, env.Brokers, h.handler.Topics.DLQ))
}

func TestKafka_failOnceSucceedsFromFirstTier(t *testing.T) {
	env := kafkatest.Start(t)
	b := kafkatest.New(t, env.Config())
	h := newHarness(t, b, kafkatest.Topic(t), "billing", fastPolicy, func(_ *message.Message, attempt int) error {
		if attempt == 1 {
			return errors.New("transient")
		}
		return nil
	})
	msg := message.NewMessage(watermill.NewUUID(), []byte("order"))
	h.publish(msg)
	calls := h.waitCalls(2)
	require.Equal(t, []string{h.topic, h.handler.Topics.Tiers[0]}, topicsOf(calls))
	require.Equal(t, msg.UUID, calls[1].uuid)
	require.False(t, calls[1].at.Before(calls[1].due), "delivered %v before due %v", calls[1].at, calls[1].due)
	require.Zero(t, recordCount(t, env.Brokers, h.handler.Topics.DLQ))
}

func TestKafka_failAlwaysWalksEveryTierThenDLQ(t *testing.T) {
	env := kafkatest.Start(t)
	b := kafkatest.New(t, env.Config())
	h := newHarness(t, b, kafkatest.Topic(t), "billing", fastPolicy, func(*message.Message, int) error {
		return errors.New("always broken")
	})
	msg := message.NewMessage(watermill.NewUUID(), []byte("order"))
	h.publish(msg)
	dead := h.waitDead(1)
	calls, _ := h.snapshot()
	require.Equal(t, []string{h.topic, h.handler.Topics.Tiers[0], h.handler.Topics.Tiers[1]}, topicsOf(calls))
	for _, c := range calls[1:] {
		require.False(t, c.at.Before(c.due), "delivered %v before due %v", c.at, c.due)
	}
	d := dead[0]
	require.Equal(t, msg.UUID, d.UUID)
	require.Equal(t, "order", string(d.Payload))
	require.Equal(t, "3", d.Metadata.Get(tiered.KeyAttempt))
	require.Contains(t, d.Metadata.Get(wmiddleware.ReasonForPoisonedKey), "no attempts left: always broken")
	require.Equal(t, h.handler.Topics.Tiers[1], d.Metadata.Get(wmiddleware.PoisonedTopicKey))
	require.Equal(t, "billing", d.Metadata.Get(wmiddleware.PoisonedHandlerKey))
	require.Equal(t, h.topic, d.Metadata.Get(tiered.KeyOriginalTopic))
}

func TestKafka_permanentErrorGoesToDLQAtOnce(t *testing.T) {
	env := kafkatest.Start(t)
	b := kafkatest.New(t, env.Config())
	h := newHarness(t, b, kafkatest.Topic(t), "billing", fastPolicy, func(*message.Message, int) error {
		return fmt.Errorf("charge: %w", tiered.Permanent(errors.New("card declined")))
	})
	h.publish(message.NewMessage(watermill.NewUUID(), []byte("order")))
	dead := h.waitDead(1)
	calls, _ := h.snapshot()
	require.Len(t, calls, 1)
	require.Equal(t, "1", dead[0].Metadata.Get(tiered.KeyAttempt))
	for _, tier := range h.handler.Topics.Tiers {
		require.Zero(t, recordCount(t, env.Brokers, tier))
	}
}

// rawRecords reads every record of topic.
func rawRecords(t *testing.T, brokers []string, topic string) []*sarama.ConsumerMessage {
	t.Helper()
	consumer, err := sarama.NewConsumer(brokers, kafkatest.SaramaConfig())
	require.NoError(t, err)
	defer consumer.Close()
	client, err := sarama.NewClient(brokers, kafkatest.SaramaConfig())
	require.NoError(t, err)
	defer client.Close()
	parts, err := consumer.Partitions(topic)
	require.NoError(t, err)
	var out []*sarama.ConsumerMessage
	for _, p := range parts {
		newest, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		require.NoError(t, err)
		if newest == 0 {
			continue
		}
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
		require.NoError(t, err)
		for {
			rec := <-pc.Messages()
			out = append(out, rec)
			if rec.Offset >= newest-1 {
				break
			}
		}
		require.NoError(t, pc.Close())
	}
	return out
}

func TestKafka_keyAndPartitionPreservedAcrossHops(t *testing.T) {
	env := kafkatest.Start(t)
	cfg := env.Config()
	cfg.MainTopicPartitions = 4
	cfg.PartitionKey = func(_ string, msg *message.Message) (string, error) { return msg.Metadata.Get("customer"), nil }
	b := kafkatest.New(t, cfg)
	policy := tiered.Policy{Delays: []time.Duration{200 * time.Millisecond}, MaxAttempts: 2}
	h := newHarness(t, b, kafkatest.Topic(t), "billing", policy, func(*message.Message, int) error { return errors.New("nope") })

	const n = 12
	for i := range n {
		msg := message.NewMessage(watermill.NewUUID(), []byte(strconv.Itoa(i)))
		msg.Metadata.Set("customer", "customer-"+strconv.Itoa(i%5))
		h.publish(msg)
	}
	h.waitDead(n)

	main := rawRecords(t, env.Brokers, h.topic)
	require.Len(t, main, n)
	origin := map[string]*sarama.ConsumerMessage{}
	for _, rec := range main {
		origin[string(rec.Value)] = rec
	}
	for _, topic := range []string{h.handler.Topics.Tiers[0], h.handler.Topics.DLQ} {
		recs := rawRecords(t, env.Brokers, topic)
		require.Len(t, recs, n, topic)
		for _, rec := range recs {
			o := origin[string(rec.Value)]
			require.NotNil(t, o)
			require.Equal(t, string(o.Key), string(rec.Key), "record key kept on %s", topic)
			require.Equal(t, o.Partition, rec.Partition, "same partition on %s (same count, same key)", topic)
		}
	}
	_, dead := h.snapshot()
	for _, d := range dead {
		o := origin[string(d.Payload)]
		got, ok := kafka.ReadOrigin(d)
		require.True(t, ok)
		require.Equal(t, kafka.Origin{Partition: o.Partition, Offset: o.Offset, TimestampMs: o.Timestamp.UnixMilli(), Key: o.Key}, got)
	}
}

func TestKafka_forgedOriginOnMainTopicIsReplaced(t *testing.T) {
	env := kafkatest.Start(t)
	b := kafkatest.New(t, env.Config())
	policy := tiered.Policy{MaxAttempts: 1}
	h := newHarness(t, b, kafkatest.Topic(t), "billing", policy, func(*message.Message, int) error { return errors.New("x") })
	msg := message.NewMessage(watermill.NewUUID(), []byte("forged"))
	msg.Metadata.Set(tiered.KeyKafkaPartition, "77")
	msg.Metadata.Set(tiered.KeyKafkaOffset, "9999")
	h.publish(msg)
	dead := h.waitDead(1)
	got, ok := kafka.ReadOrigin(dead[0])
	require.True(t, ok)
	require.Equal(t, int32(0), got.Partition)
	require.Equal(t, int64(0), got.Offset)
}

func TestKafka_prepareIsIdempotentAndCopiesPartitions(t *testing.T) {
	env := kafkatest.Start(t)
	cfg := env.Config()
	cfg.MainTopicPartitions = 3
	b := kafkatest.New(t, cfg)
	topics, err := fastPolicy.Topics(kafkatest.Topic(t), "billing", nil)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, b.Prepare(ctx, topics))
	require.NoError(t, b.Prepare(ctx, topics))

	client, err := sarama.NewClient(env.Brokers, kafkatest.SaramaConfig())
	require.NoError(t, err)
	defer client.Close()
	for _, topic := range append([]string{topics.Main, topics.DLQ}, topics.Tiers...) {
		require.NoError(t, client.RefreshMetadata(topic))
		parts, err := client.Partitions(topic)
		require.NoError(t, err)
		require.Len(t, parts, 3, topic)
	}
}

func TestKafka_missingMainTopicIsAClearError(t *testing.T) {
	env := kafkatest.Start(t)
	cfg := env.Config()
	cfg.CreateTopics = false
	b := kafkatest.New(t, cfg)
	topics, err := fastPolicy.Topics(kafkatest.Topic(t), "billing", nil)
	require.NoError(t, err)
	err = b.Prepare(context.Background(), topics)
	require.ErrorContains(t, err, fmt.Sprintf("main topic %q does not exist", topics.Main))
	require.ErrorContains(t, err, "CreateTopics")
}
