package redisstream_test

import (
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// TestBackend_closeLetsTheHandlerFinish: a router closing while its
// handler works on a message waits for it, and the Ack reaches Redis, so the
// message is not delivered again after a restart.
func TestBackend_closeLetsTheHandlerFinish(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{}, logger)
	topic := redistest.Name(t, "orders")

	started := make(chan struct{})
	release := make(chan struct{})
	var rec recorder
	r, _ := runRouter(t, b, tiered.Policy{Delays: []time.Duration{time.Second}}, "billing", topic,
		func(msg *message.Message) error {
			rec.record(msg)
			close(started)
			<-release
			return nil
		}, logger)
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", nil)))
	select {
	case <-started:
	case <-time.After(waitFor):
		t.Fatal("handler never ran")
	}

	closed := make(chan error, 1)
	go func() { closed <- r.Close() }()
	require.Eventually(t, func() bool {
		for _, m := range logger.at(watermill.DebugLogLevel) {
			if m.Msg == redisstream.WaitingInFlight && m.Fields["topic"] == topic {
				return true
			}
		}
		return false
	}, waitFor, tick, "the subscription never started closing")
	close(release)
	select {
	case err := <-closed:
		require.NoError(t, err)
	case <-time.After(waitFor):
		t.Fatal("router did not close")
	}
	require.Zero(t, pending(client, topic, topic+".billing"), "the Ack given after Close began reached Redis")
	require.Equal(t, 1, rec.count())
}

// TestBackend_restartWhileHeldLosesNothing: a router closing while a
// message is held in a tier leaves it pending; the next router's consumer
// claims it after the tier's claim idle time and runs it once, not early.
func TestBackend_restartWhileHeldLosesNothing(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{MaxIdleTime: 500 * time.Millisecond, ClaimInterval: testInterval}, logger)
	topic := redistest.Name(t, "orders")
	const delay = time.Second
	policy := tiered.Policy{Delays: []time.Duration{delay}}

	var rec recorder
	h := func(msg *message.Message) error {
		if rec.record(msg) == 1 {
			return errors.New("try later")
		}
		return nil
	}
	r1, handler := runRouter(t, b, policy, "billing", topic, h, logger)
	tier := handler.Topics.Tiers[0]
	group := handler.Topics.Group(tier)
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", nil)))
	require.Eventually(t, func() bool { return pending(client, tier, group) == 1 }, waitFor, tick, "the tier entry is read and held")
	require.NoError(t, r1.Close())
	require.Equal(t, 1, rec.count(), "not handed on while held")
	require.EqualValues(t, 1, pending(client, tier, group), "left pending on the closed consumer")

	runRouter(t, b, policy, "billing", topic, h, logger)
	require.Eventually(t, func() bool { return rec.count() == 2 }, waitFor, tick)
	require.Eventually(t, func() bool { return pending(client, tier, group) == 0 }, waitFor, tick)
	calls := rec.all()
	require.Equal(t, []string{topic, tier}, rec.topics())
	require.False(t, calls[1].at.Before(calls[1].due), "handled at %v, before its due time %v", calls[1].at, calls[1].due)
	require.GreaterOrEqual(t, calls[1].at.Sub(calls[0].at), delay, "never early")
	require.Never(t, func() bool { return rec.count() > 2 }, 300*time.Millisecond, tick)
}
