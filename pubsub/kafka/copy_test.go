package kafka_test

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// failFirst fails a message's first attempt.
func failFirst(_ *message.Message, attempt int) error {
	if attempt == 1 {
		return errors.New("transient")
	}
	return nil
}

// A tier copy that fails with a temporary error is produced again; the
// handler is not run again, the partition moves on to the next message
// meanwhile, and the failed message's offset is not committed until its
// copy is confirmed (guarantee 1). On the embedded broker whatever
// KAFKA_BROKERS says: the failures are injected.
func TestKafka_temporaryCopyFailureRetriesTheProduceNotTheHandler(t *testing.T) {
	env := kafkatest.StartEmbedded(t)
	b := kafkatest.New(t, env.Config())
	topic := kafkatest.Topic(t)
	policy := tiered.Policy{Delays: []time.Duration{200 * time.Millisecond}, MaxAttempts: 2}
	topics := prepare(t, b, policy, topic, "billing")
	stop := produceFailure(t, env, topics.Tiers[0])

	h := newHarness(t, b, topic, "billing", policy, func(msg *message.Message, attempt int) error {
		if string(msg.Payload) == "a" {
			return failFirst(msg, attempt)
		}
		return nil
	})
	a := message.NewMessage(watermill.NewUUID(), []byte("a"))
	next := message.NewMessage(watermill.NewUUID(), []byte("b"))
	h.publish(a, next)
	calls := h.waitCalls(2)
	require.Equal(t, []string{"a", "b"}, []string{calls[0].payload, calls[1].payload},
		"the next message is handled while the copy of the first one fails")

	// Past several commit intervals and Sarama's own retries, the first
	// message is still unresolved: its offset (0) stays uncommitted, and
	// its handler ran once.
	group := topics.Group(topic)
	time.Sleep(3 * time.Second) // let commits happen, if they wrongly would
	require.LessOrEqual(t, committed(t, env.Brokers, group, topic), int64(0), "committed past a record whose copy is not confirmed")
	calls, _ = h.snapshot()
	require.Len(t, calls, 2, "a failing produce must not run the handler again")

	stop()
	h.waitTierCall(a.UUID, topics.Tiers[0])
	require.Eventually(t, func() bool { return committed(t, env.Brokers, group, topic) == 2 }, 30*time.Second, 50*time.Millisecond,
		"once the copy is confirmed the partition is committed past both records")
	calls, _ = h.snapshot()
	require.Len(t, calls, 3)
}

// A copy that can never be published (too large for the broker, or for
// the producer's MaxMessageBytes, on its way to a tier or to the
// dead-letter topic) is replaced by a dead-letter stub that fits: the same
// UUID, no payload, a reason, the original's coordinates. The handler runs
// once and the partition moves on.
func TestKafka_unpublishableCopyBecomesADeadLetterStub(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload int
		setup   func(t *testing.T, env kafkatest.Env, cfg *kafka.Config)
		prepare func(t *testing.T, env kafkatest.Env, topics tiered.Topics)
		fail    func(attempt int) error
	}{
		{
			name:    "tier topic too small for the copy",
			payload: 8 << 10,
			prepare: func(t *testing.T, env kafkatest.Env, topics tiered.Topics) {
				setTopicConfig(t, env.Brokers, topics.Tiers[0], "max.message.bytes", "4096")
			},
			fail: func(int) error { return errors.New("transient") },
		},
		{
			name:    "dead-letter topic too small for the copy",
			payload: 8 << 10,
			prepare: func(t *testing.T, env kafkatest.Env, topics tiered.Topics) {
				setTopicConfig(t, env.Brokers, topics.DLQ, "max.message.bytes", "4096")
			},
			fail: func(int) error { return tiered.Permanent(errors.New("card declined")) },
		},
		{
			// The original fits the producer's MaxMessageBytes; its copy,
			// with retry metadata and 1 KiB of error text, does not.
			name:    "copy larger than the producer's MaxMessageBytes",
			payload: 16<<10 - 600,
			setup: func(_ *testing.T, _ kafkatest.Env, cfg *kafka.Config) {
				cfg.Sarama.Producer.MaxMessageBytes = 16 << 10
			},
			fail: func(int) error { return errors.New(strings.Repeat("e", 2000)) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := kafkatest.Start(t)
			cfg := env.Config()
			if tc.setup != nil {
				tc.setup(t, env, &cfg)
			}
			logger := newCaptureLogger()
			b := newLogged(t, cfg, logger)
			topic := kafkatest.Topic(t)
			policy := tiered.Policy{Delays: []time.Duration{200 * time.Millisecond}, MaxAttempts: 2}
			topics := prepare(t, b, policy, topic, "billing")
			if tc.prepare != nil {
				tc.prepare(t, env, topics)
			}
			h := newHarness(t, b, topic, "billing", policy, func(msg *message.Message, attempt int) error {
				if msg.Metadata.Get("big") != "" {
					return tc.fail(attempt)
				}
				return nil
			})
			big := message.NewMessage(watermill.NewUUID(), bytes.Repeat([]byte("x"), tc.payload))
			big.Metadata.Set("big", "1")
			after := message.NewMessage(watermill.NewUUID(), []byte("after"))
			h.publish(big, after)

			dead := h.waitDead(1)[0]
			require.Equal(t, big.UUID, dead.UUID)
			require.Empty(t, dead.Payload, "the payload is dropped")
			require.Contains(t, dead.Metadata.Get(wmiddleware.ReasonForPoisonedKey), "cannot be published")
			require.Contains(t, dead.Metadata.Get(wmiddleware.ReasonForPoisonedKey), "payload of "+strconv.Itoa(tc.payload)+" bytes")
			origin, ok := kafka.ReadOrigin(dead)
			require.True(t, ok, "the original's coordinates are kept")
			require.Equal(t, int64(0), origin.Offset)
			require.Equal(t, topic, dead.Metadata.Get(tiered.KeyOriginalTopic))
			require.Equal(t, "billing", dead.Metadata.Get(wmiddleware.PoisonedHandlerKey))

			calls := h.waitCalls(2)
			require.Equal(t, "after", calls[len(calls)-1].payload, "the partition moves on")
			group := topics.Group(topic)
			require.Eventually(t, func() bool { return committed(t, env.Brokers, group, topic) == 2 }, 30*time.Second, 50*time.Millisecond)
			calls, _ = h.snapshot()
			require.Len(t, calls, 2, "the handler ran once per message")
			require.Equal(t, 1, logger.errorsContaining("dead-letter stub"), "logged once, at Error")
		})
	}
}

// When even the dead-letter stub cannot be published, the record stays
// unresolved (its offset uncommitted), the stub is tried again with a
// growing delay, and it is logged at Error once. Once the dead-letter
// topic takes it, the partition is committed.
func TestKafka_stubThatCannotBePublishedKeepsTheOffset(t *testing.T) {
	env := kafkatest.Start(t)
	logger := newCaptureLogger()
	b := newLogged(t, env.Config(), logger)
	topic := kafkatest.Topic(t)
	policy := tiered.Policy{Delays: []time.Duration{200 * time.Millisecond}, MaxAttempts: 2}
	topics := prepare(t, b, policy, topic, "billing")
	setTopicConfig(t, env.Brokers, topics.DLQ, "max.message.bytes", "100")
	h := newHarness(t, b, topic, "billing", policy, func(msg *message.Message, _ int) error {
		if string(msg.Payload) == "poison" {
			return tiered.Permanent(errors.New("card declined"))
		}
		return nil
	})
	poison := message.NewMessage(watermill.NewUUID(), []byte("poison"))
	h.publish(poison, message.NewMessage(watermill.NewUUID(), []byte("after")))
	h.waitCalls(2)

	group := topics.Group(topic)
	time.Sleep(3 * time.Second) // several commit intervals and stub attempts
	require.LessOrEqual(t, committed(t, env.Brokers, group, topic), int64(0))
	require.Equal(t, 1, logger.errorsContaining("stub cannot be published either"), "logged at Error once per message, not per try")
	calls, _ := h.snapshot()
	require.Len(t, calls, 2, "the handler is not run again")

	setTopicConfig(t, env.Brokers, topics.DLQ, "max.message.bytes", "1048588")
	dead := h.waitDead(1)
	require.Equal(t, poison.UUID, dead[0].UUID)
	require.Eventually(t, func() bool { return committed(t, env.Brokers, group, topic) == 2 }, 60*time.Second, 50*time.Millisecond)
}

// The synchronous publisher wraps errors that publishing again cannot fix
// with tiered.ErrUnpublishable, and only those.
func TestPublisher_unpublishableErrorsAreMarked(t *testing.T) {
	env := kafkatest.Start(t)
	cfg := env.Config()
	cfg.Sarama.Producer.MaxMessageBytes = 64 << 10
	b := kafkatest.New(t, cfg)
	small := kafkatest.Topic(t)
	require.NoError(t, b.Publisher().Publish(small, message.NewMessage(watermill.NewUUID(), []byte("x"))))
	setTopicConfig(t, env.Brokers, small, "max.message.bytes", "1024")

	// The broker may report the limit a moment before its log applies it
	// (KRaft): a record it still takes lands in this test's own topic.
	var err error
	require.Eventually(t, func() bool {
		err = b.Publisher().Publish(small, message.NewMessage(watermill.NewUUID(), bytes.Repeat([]byte("x"), 4096)))
		return err != nil
	}, 10*time.Second, 20*time.Millisecond, "the topic's limit takes effect")
	require.ErrorIs(t, err, tiered.ErrUnpublishable, "too large for the topic")
	require.ErrorIs(t, err, sarama.ErrMessageSizeTooLarge)

	err = b.Publisher().Publish(small, message.NewMessage(watermill.NewUUID(), bytes.Repeat([]byte("x"), 70<<10)))
	require.ErrorIs(t, err, tiered.ErrUnpublishable, "larger than the producer's MaxMessageBytes")

	reserved := message.NewMessage(watermill.NewUUID(), nil)
	reserved.Metadata.Set("_watermill_message_uuid", "x")
	require.ErrorIs(t, b.Publisher().Publish(small, reserved), tiered.ErrUnpublishable, "cannot be marshalled")

	require.NoError(t, b.Publisher().Publish(small, message.NewMessage(watermill.NewUUID(), []byte("fits"))))
}

// A temporary produce error is not marked (on the embedded broker, which
// can be told to fail).
func TestPublisher_temporaryErrorsAreNotMarked(t *testing.T) {
	env := kafkatest.StartEmbedded(t)
	cfg := env.Config()
	cfg.Sarama.Producer.Retry.Max = 1
	b := kafkatest.New(t, cfg)
	topic := kafkatest.Topic(t)
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x"))))
	stop := produceFailure(t, env, topic)
	err := b.Publisher().Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("fits")))
	require.Error(t, err)
	require.NotErrorIs(t, err, tiered.ErrUnpublishable, "not enough replicas is temporary")
	stop()
}
