package kafka_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// Two services that both have a "billing" handler, on different topics,
// share no consumer group: groups are named from topic and handler
// ("{topic}.billing", and the tier topic's name for a tier).
func TestKafka_sameHandlerNameOnTwoTopicsSharesNoGroup(t *testing.T) {
	env := kafkatest.Start(t)
	policy := tiered.Policy{Delays: []time.Duration{200 * time.Millisecond}, MaxAttempts: 2}
	orders, invoices := kafkatest.Topic(t)+".orders", kafkatest.Topic(t)+".invoices"
	a := newHarness(t, kafkatest.New(t, env.Config()), orders, "billing", policy, failFirst)
	b := newHarness(t, kafkatest.New(t, env.Config()), invoices, "billing", policy, failFirst)
	a.publish(message.NewMessage(watermill.NewUUID(), []byte("order")))
	b.publish(message.NewMessage(watermill.NewUUID(), []byte("invoice")))
	ca, cb := a.waitCalls(2), b.waitCalls(2)
	require.Equal(t, []string{orders, a.handler.Topics.Tiers[0]}, topicsOf(ca))
	require.Equal(t, []string{invoices, b.handler.Topics.Tiers[0]}, topicsOf(cb))

	groups, err := admin(t, env.Brokers).ListConsumerGroups()
	require.NoError(t, err)
	for _, g := range []string{orders + ".billing", invoices + ".billing", a.handler.Topics.Tiers[0], b.handler.Topics.Tiers[0]} {
		require.Contains(t, groups, g)
	}
	require.NotContains(t, groups, "billing")
	require.NotContains(t, groups, "billing.retry.200ms")
	time.Sleep(500 * time.Millisecond) // nothing else may arrive
	ca, _ = a.snapshot()
	cb, _ = b.snapshot()
	require.Len(t, ca, 2, "each service sees only its own topic")
	require.Len(t, cb, 2)
}

// With Sarama's AutoCommit turned off, the backend commits main and tier
// offsets itself, so a restart replays nothing.
func TestKafka_manualCommitCommitsMainAndTier(t *testing.T) {
	env := kafkatest.Start(t)
	cfg := env.Config()
	cfg.Sarama.Consumer.Offsets.AutoCommit.Enable = false
	b := kafkatest.New(t, cfg)
	topic := kafkatest.Topic(t)
	policy := tiered.Policy{Delays: []time.Duration{200 * time.Millisecond}, MaxAttempts: 2}
	h := newHarness(t, b, topic, "billing", policy, func(msg *message.Message, attempt int) error {
		if msg.Metadata.Get("fail") != "" {
			return failFirst(msg, attempt)
		}
		return nil
	})
	for i := range 8 {
		msg := message.NewMessage(watermill.NewUUID(), []byte(strconv.Itoa(i)))
		if i%3 == 0 {
			msg.Metadata.Set("fail", "1")
		}
		h.publish(msg)
	}
	h.waitCalls(8 + 3)
	h.stop()
	require.Equal(t, int64(8), committed(t, env.Brokers, h.handler.Topics.Group(topic), topic), "main topic")
	tier := h.handler.Topics.Tiers[0]
	require.Equal(t, int64(3), committed(t, env.Brokers, h.handler.Topics.Group(tier), tier), "tier")
}

// A graceful restart (the router closed while messages are being handled,
// waiting in a tier and having their copies produced) handles no message
// twice: Close lets what it handed on finish, and commits it.
func TestKafka_gracefulRestartHasNoDuplicates(t *testing.T) {
	env := kafkatest.Start(t)
	b := kafkatest.New(t, env.Config())
	topic := kafkatest.Topic(t)
	policy := tiered.Policy{Delays: []time.Duration{300 * time.Millisecond}, MaxAttempts: 2}
	var mu sync.Mutex
	var all []call
	handle := func(msg *message.Message, attempt int) error {
		time.Sleep(20 * time.Millisecond) // some work, so that Close finds some in flight
		mu.Lock()
		all = append(all, call{uuid: msg.UUID, payload: string(msg.Payload), topic: message.SubscribeTopicFromCtx(msg.Context())})
		mu.Unlock()
		if msg.Metadata.Get("fail") != "" && message.SubscribeTopicFromCtx(msg.Context()) == topic {
			return errors.New("fails on the main topic")
		}
		return nil
	}
	const n = 60
	h1 := newHarness(t, b, topic, "billing", policy, handle)
	var msgs []*message.Message
	for i := range n {
		msg := message.NewMessage(watermill.NewUUID(), []byte(strconv.Itoa(i)))
		if i%4 == 0 {
			msg.Metadata.Set("fail", "1")
		}
		msgs = append(msgs, msg)
	}
	h1.publish(msgs...)
	h1.waitCalls(n / 3)
	h1.stop()
	first, _ := h1.snapshot()
	t.Logf("the first router handled %d calls before closing", len(first))

	h2 := newHarness(t, b, topic, "billing", policy, handle)
	want := n + n/4 // every message once from the main topic, the failing ones once more from the tier
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(all) >= want
	}, 60*time.Second, 20*time.Millisecond)
	time.Sleep(time.Second) // duplicates would arrive now
	_ = h2
	mu.Lock()
	defer mu.Unlock()
	seen := map[string]int{}
	for _, c := range all {
		seen[c.uuid+" "+c.topic]++
	}
	for k, v := range seen {
		require.Equal(t, 1, v, "%s handled %d times", k, v)
	}
	require.Len(t, all, want)
}

// A record written by a producer that is not Watermill (no UUID header)
// gets a UUID derived from where it was first consumed, the same on every
// hop and in the dead-letter topic.
func TestKafka_foreignRecordKeepsAStableUUID(t *testing.T) {
	env := kafkatest.Start(t)
	b := kafkatest.New(t, env.Config())
	topic := kafkatest.Topic(t)
	policy := tiered.Policy{Delays: []time.Duration{200 * time.Millisecond}, MaxAttempts: 2}
	h := newHarness(t, b, topic, "billing", policy, func(*message.Message, int) error { return errors.New("always") })

	cfg := kafkatest.SaramaConfig()
	cfg.Producer.Return.Successes = true
	producer, err := sarama.NewSyncProducer(env.Brokers, cfg)
	require.NoError(t, err)
	defer producer.Close()
	partition, offset, err := producer.SendMessage(&sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder("k"), Value: sarama.StringEncoder("plain sarama")})
	require.NoError(t, err)

	want := tiered.OriginUUID("kafka", topic, strconv.Itoa(int(partition)), strconv.FormatInt(offset, 10))
	dead := h.waitDead(1)
	calls, _ := h.snapshot()
	require.Len(t, calls, 2)
	for _, c := range calls {
		require.Equal(t, want, c.uuid, "on %s", c.topic)
	}
	require.Equal(t, want, dead[0].UUID)
	require.Equal(t, "plain sarama", string(dead[0].Payload))
}

// failingUnmarshaler refuses records whose value is "garbage" and marks
// the messages it makes.
type failingUnmarshaler struct{}

func (failingUnmarshaler) Unmarshal(cm *sarama.ConsumerMessage) (*message.Message, error) {
	if string(cm.Value) == "garbage" {
		return nil, errors.New("not an order")
	}
	msg, err := wkafka.DefaultMarshaler{}.Unmarshal(cm)
	if err == nil {
		msg.Metadata.Set("unmarshaled_by", "custom")
	}
	return msg, err
}

// Config.Unmarshaler reads the main topic; a record it refuses goes raw to
// the dead-letter topic with the reason, and the partition moves on.
func TestKafka_unmarshalerAndUndecodableRecords(t *testing.T) {
	env := kafkatest.Start(t)
	cfg := env.Config()
	cfg.Unmarshaler = failingUnmarshaler{}
	b := kafkatest.New(t, cfg)
	topic := kafkatest.Topic(t)
	var by []string
	var mu sync.Mutex
	h := newHarness(t, b, topic, "billing", fastPolicy, func(msg *message.Message, _ int) error {
		mu.Lock()
		by = append(by, msg.Metadata.Get("unmarshaled_by"))
		mu.Unlock()
		return nil
	})
	h.publish(message.NewMessage(watermill.NewUUID(), []byte("garbage")), message.NewMessage(watermill.NewUUID(), []byte("order")))
	dead := h.waitDead(1)[0]
	require.Equal(t, "garbage", string(dead.Payload), "the record goes raw")
	require.Contains(t, dead.Metadata.Get(wmiddleware.ReasonForPoisonedKey), "cannot be unmarshalled: not an order")
	require.Equal(t, "billing", dead.Metadata.Get(wmiddleware.PoisonedHandlerKey))
	origin, ok := kafka.ReadOrigin(dead)
	require.True(t, ok)
	require.Equal(t, int64(0), origin.Offset)

	calls := h.waitCalls(1)
	require.Equal(t, "order", calls[0].payload)
	mu.Lock()
	require.Equal(t, []string{"custom"}, by)
	mu.Unlock()
	require.Eventually(t, func() bool { return committed(t, env.Brokers, h.handler.Topics.Group(topic), topic) == 2 }, 30*time.Second, 50*time.Millisecond)
}

// Tier topics are created with LogAppendTime, an existing tier topic with
// CreateTime is switched to it, and a tier message's Delivery carries the
// record's (append) time.
func TestPrepare_tierTopicsUseLogAppendTime(t *testing.T) {
	env := kafkatest.Start(t)
	b := kafkatest.New(t, env.Config())
	policy := tiered.Policy{Delays: []time.Duration{200 * time.Millisecond, time.Second}, MaxAttempts: 3}
	topic := kafkatest.Topic(t)
	topics, err := policy.Topics(topic, "billing", nil)
	require.NoError(t, err)
	createTime := "CreateTime"
	require.NoError(t, admin(t, env.Brokers).CreateTopic(topics.Tiers[1], &sarama.TopicDetail{
		NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: map[string]*string{"message.timestamp.type": &createTime},
	}, false))
	require.NoError(t, b.Prepare(context.Background(), topics))
	for _, tier := range topics.Tiers {
		require.Equal(t, "LogAppendTime", topicConfig(t, env.Brokers, tier, "message.timestamp.type"), tier)
	}

	var mu sync.Mutex
	appended := map[string]time.Time{}
	h := newHarness(t, b, topic, "billing", policy, func(msg *message.Message, attempt int) error {
		if d := tiered.DeliveryFrom(msg.Context()); d != nil {
			mu.Lock()
			appended[message.SubscribeTopicFromCtx(msg.Context())] = d.AppendTime
			mu.Unlock()
		}
		return failFirst(msg, attempt)
	})
	before := time.Now()
	h.publish(message.NewMessage(watermill.NewUUID(), []byte("order")))
	h.waitCalls(2)
	mu.Lock()
	defer mu.Unlock()
	require.True(t, appended[topic].IsZero(), "no append time is vouched for on the main topic")
	at := appended[topics.Tiers[0]]
	require.False(t, at.IsZero(), "a tier message carries its record's append time")
	require.WithinDuration(t, time.Now(), at, time.Since(before)+time.Second)
}

// Tier and dead-letter topics created with replication factor 3 get
// min.insync.replicas=2 (on a 3-broker embedded cluster); the main topic
// keeps the broker's.
func TestPrepare_minInsyncReplicasWithThreeReplicas(t *testing.T) {
	env := kafkatest.StartEmbedded(t, kfake.NumBrokers(3))
	cfg := env.Config()
	cfg.ReplicationFactor = 3
	cfg.MainTopicPartitions = 3
	b := kafkatest.New(t, cfg)
	topics, err := fastPolicy.Topics(kafkatest.Topic(t), "billing", nil)
	require.NoError(t, err)
	require.NoError(t, b.Prepare(context.Background(), topics))
	for _, topic := range append(slices.Clone(topics.Tiers), topics.DLQ) {
		require.Equal(t, "2", topicConfig(t, env.Brokers, topic, "min.insync.replicas"), topic)
		meta, err := admin(t, env.Brokers).DescribeTopics([]string{topic})
		require.NoError(t, err)
		require.Len(t, meta[0].Partitions, 3)
		for _, p := range meta[0].Partitions {
			require.Len(t, p.Replicas, 3, "%s partition %d", topic, p.ID)
		}
	}
	require.Equal(t, "1", topicConfig(t, env.Brokers, topics.Main, "min.insync.replicas"))

	// It works end to end on three brokers.
	h := newHarness(t, b, topics.Main, "billing", fastPolicy, failFirst)
	for i := range 6 {
		h.publish(message.NewMessage(watermill.NewUUID(), []byte(strconv.Itoa(i))))
	}
	h.waitCalls(12)
}

// An early Ack (Watermill's InstantAck) before a handler that fails: the
// copy is still produced, and the offset is not committed before the copy
// is confirmed (here held back by failing produces).
func TestKafka_earlyAckStillHoldsTheOffsetForTheCopy(t *testing.T) {
	env := kafkatest.StartEmbedded(t)
	b := kafkatest.New(t, env.Config())
	topic := kafkatest.Topic(t)
	policy := tiered.Policy{Delays: []time.Duration{200 * time.Millisecond}, MaxAttempts: 2}
	topics := prepare(t, b, policy, topic, "billing")
	stop := produceFailure(t, env, topics.Tiers[0])
	h := newHarness(t, b, topic, "billing", policy, failFirst, func(r *message.Router) {
		r.AddMiddleware(wmiddleware.InstantAck)
	})
	msg := message.NewMessage(watermill.NewUUID(), []byte("order"))
	h.publish(msg, message.NewMessage(watermill.NewUUID(), []byte("next")))
	h.waitCalls(2)
	time.Sleep(3 * time.Second) // commits would happen now
	require.LessOrEqual(t, committed(t, env.Brokers, topics.Group(topic), topic), int64(0), "committed before the early-acked message's copy was confirmed")
	stop()
	h.waitTierCall(msg.UUID, topics.Tiers[0])
	require.Eventually(t, func() bool { return committed(t, env.Brokers, topics.Group(topic), topic) == 2 }, 30*time.Second, 50*time.Millisecond)
}

// Due tier messages are handed on concurrently across keys and in order
// within a key: while the handler holds one key's message, another key's
// message behind it on the same partition is handled, and the first key's
// next message waits.
func TestKafka_tierHandsOnConcurrentlyAcrossKeysInOrderWithinAKey(t *testing.T) {
	env := kafkatest.Start(t)
	cfg := env.Config()
	cfg.PartitionKey = func(_ string, msg *message.Message) (string, error) { return msg.Metadata.Get("customer"), nil }
	b := kafkatest.New(t, cfg)
	topic := kafkatest.Topic(t)
	policy := tiered.Policy{Delays: []time.Duration{200 * time.Millisecond}, MaxAttempts: 2}
	release := make(chan struct{})
	var mu sync.Mutex
	var done []string
	h := newHarness(t, b, topic, "billing", policy, func(msg *message.Message, attempt int) error {
		if attempt == 1 {
			return errors.New("to the tier")
		}
		if string(msg.Payload) == "a1" {
			<-release
		}
		mu.Lock()
		done = append(done, string(msg.Payload))
		mu.Unlock()
		return nil
	})
	var msgs []*message.Message
	for _, p := range []string{"a1", "a2", "b1"} {
		msg := message.NewMessage(watermill.NewUUID(), []byte(p))
		msg.Metadata.Set("customer", p[:1])
		msgs = append(msgs, msg)
	}
	h.publish(msgs...)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(done, "b1")
	}, 30*time.Second, 10*time.Millisecond, "b1 is handled while a1, before it, is held by its handler")
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	require.Equal(t, []string{"b1"}, done, "a2 waits for a1, its key's message before it")
	mu.Unlock()
	close(release)
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(done) == 3
	}, 30*time.Second, 10*time.Millisecond)
	require.Equal(t, []string{"b1", "a1", "a2"}, done)
}
