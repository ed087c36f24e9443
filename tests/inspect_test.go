package tests_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// forEachInspector runs fn as a parallel subtest per backend that
// implements tiered.Inspector (every one but mem).
func forEachInspector(t *testing.T, fn func(t *testing.T, b tiered.Backend, in tiered.Inspector)) {
	t.Helper()
	forEachBackend(t, func(t *testing.T, b Backend) {
		backend := b.New(t)
		in, ok := backend.(tiered.Inspector)
		if b.Name == "mem" {
			require.False(t, ok, "the in-memory backend is documented not to inspect")
			return
		}
		require.True(t, ok, "%s backend must implement tiered.Inspector", b.Name)
		fn(t, backend, in)
	})
}

// prepare makes the topics of a handler "h" on topic and returns them.
func prepare(t *testing.T, backend tiered.Backend, topic string) tiered.Topics {
	t.Helper()
	topics, err := tiered.Policy{Delays: []time.Duration{time.Second, time.Minute}}.Topics(topic, "h", nil)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, backend.Prepare(ctx, topics))
	return topics
}

func publishN(t *testing.T, backend tiered.Backend, topic string, n int) {
	t.Helper()
	for range n {
		require.NoError(t, backend.Publisher().Publish(topic, message.NewMessage(watermill.NewUUID(), []byte("x"))))
	}
}

func TestInspector_listTopicsByPrefix(t *testing.T) {
	forEachInspector(t, func(t *testing.T, backend tiered.Backend, in tiered.Inspector) {
		ctx := context.Background()
		topic := uniqueTopic(t)
		topics := prepare(t, backend, topic)
		// Redis creates a stream on its first entry.
		for _, name := range append([]string{topics.Main, topics.DLQ}, topics.Tiers...) {
			publishN(t, backend, name, 1)
		}

		got, err := in.ListTopics(ctx, topic)
		require.NoError(t, err)
		require.Equal(t, []string{topic, topic + ".h.dlq", topic + ".h.retry.1m", topic + ".h.retry.1s"}, got, "sorted, every topic of the prefix")

		got, err = in.ListTopics(ctx, topic+".h.retry.")
		require.NoError(t, err)
		require.Equal(t, []string{topic + ".h.retry.1m", topic + ".h.retry.1s"}, got)

		got, err = in.ListTopics(ctx, topic+".nothing")
		require.NoError(t, err)
		require.Empty(t, got)

		all, err := in.ListTopics(ctx, "")
		require.NoError(t, err)
		require.Subset(t, all, []string{topic, topic + ".h.dlq"}, `"" lists every topic`)
	})
}

func TestInspector_lagCountsWhatTheGroupHasNotConsumed(t *testing.T) {
	forEachInspector(t, func(t *testing.T, backend tiered.Backend, in tiered.Inspector) {
		ctx := context.Background()
		topic := uniqueTopic(t)
		prepare(t, backend, topic)
		publishN(t, backend, topic, 5)
		group := groupFor(t, ".lag")

		lag, err := in.Lag(ctx, topic, group)
		require.NoError(t, err)
		require.EqualValues(t, 5, lag, "a group that does not exist lags by the whole topic")

		sub, err := backend.Subscriber(tiered.SubscribeParams{Group: group, Topic: topic})
		require.NoError(t, err)
		subCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		msgs, err := sub.Subscribe(subCtx, topic)
		require.NoError(t, err)
		for range 2 {
			select {
			case msg := <-msgs:
				msg.Ack()
			case <-time.After(waitFor):
				t.Fatal("no message consumed")
			}
		}
		// Kafka commits marked offsets on an interval; Redis counts the
		// entries read ahead as pending, not consumed.
		require.Eventually(t, func() bool {
			lag, err = in.Lag(ctx, topic, group)
			return err == nil && lag == 3
		}, waitFor, 50*time.Millisecond, "two of five consumed: lag 3 (last: %d, %v)", lag, err)
		cancel()
		require.NoError(t, sub.Close())

		lag, err = in.Lag(ctx, topic, group)
		require.NoError(t, err)
		require.EqualValues(t, 3, lag, "closing the subscription consumes nothing more")
	})
}

func TestInspector_missingTopicHasNoLagAndIsNotCreated(t *testing.T) {
	forEachInspector(t, func(t *testing.T, backend tiered.Backend, in tiered.Inspector) {
		ctx := context.Background()
		topic := uniqueTopic(t)

		lag, err := in.Lag(ctx, topic, "any-group")
		require.NoError(t, err)
		require.Zero(t, lag)

		got, err := in.ListTopics(ctx, topic)
		require.NoError(t, err)
		require.Empty(t, got, "asking for a topic's lag must not create it (Kafka brokers auto-create topics on metadata requests)")

		_, err = in.Lag(ctx, topic, "")
		require.Error(t, err, "an empty group is a mistake, not a group")
	})
}

func TestInspector_honoursContext(t *testing.T) {
	forEachInspector(t, func(t *testing.T, _ tiered.Backend, in tiered.Inspector) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := in.ListTopics(ctx, "")
		require.ErrorIs(t, err, context.Canceled)
		_, err = in.Lag(ctx, "t", "g")
		require.ErrorIs(t, err, context.Canceled)
	})
}
