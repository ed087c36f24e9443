package redisstream_test

import (
	"context"
	"errors"
	"testing"
	"time"

	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// Scaled-down claim settings: MaxIdleTime plays Watermill's 60s default, the
// tier delay a tier three times as long.
const (
	testIdle     = time.Second
	testInterval = 100 * time.Millisecond
	testDelay    = 3 * time.Second
)

func TestClaimIdle(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		config redisstream.Config
		delay  time.Duration
		want   time.Duration
	}{
		{"main topic, default", redisstream.Config{}, 0, 60 * time.Second},
		{"main topic, configured", redisstream.Config{MaxIdleTime: 30 * time.Second}, 0, 30 * time.Second},
		{"tier adds its delay", redisstream.Config{}, 5 * time.Minute, 6 * time.Minute},
		{"short tier", redisstream.Config{MaxIdleTime: 30 * time.Second}, 10 * time.Second, 40 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, redisstream.ClaimIdle(tc.config, tc.delay))
		})
	}
}

// TestBackend_heldMessageIsNotClaimed runs two routers with the same
// handler (one consumer group per subscription, two consumers each) while
// a message waits in a tier three times longer than MaxIdleTime: it must
// stay with the consumer that read it, and run once.
func TestBackend_heldMessageIsNotClaimed(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	config := redisstream.Config{MaxIdleTime: testIdle, ClaimInterval: testInterval}
	b1 := newBackend(t, client, config, logger)
	b2 := newBackend(t, client, config, logger)
	topic := redistest.Name(t, "orders")
	policy := tiered.Policy{Delays: []time.Duration{testDelay}}

	var rec recorder
	h := func(msg *message.Message) error {
		if message.SubscribeTopicFromCtx(msg.Context()) == topic {
			rec.record(msg)
			return errors.New("try later")
		}
		rec.record(msg)
		return nil
	}
	_, handler := runRouter(t, b1, policy, "billing", topic, h, logger)
	runRouter(t, b2, policy, "billing", topic, h, logger)
	tier := handler.Topics.Tiers[0]
	group := handler.Topics.Group(tier)

	published := time.Now()
	require.NoError(t, b1.Publisher().Publish(topic, message.NewMessage("m1", []byte("one"))))

	// Until the tier attempt ran, the entry stays pending on one consumer
	// that got it once.
	var holder string
	poll := time.NewTicker(tick)
	defer poll.Stop()
	deadline := time.After(testDelay + waitFor)
	for rec.count() < 2 {
		select {
		case <-poll.C:
		case <-deadline:
			t.Fatal("the tier attempt never ran")
		}
		xp, err := client.XPendingExt(context.Background(), &redis.XPendingExtArgs{Stream: tier, Group: group, Start: "-", End: "+", Count: 10}).Result()
		if err == nil && len(xp) > 0 && rec.count() < 2 {
			require.Len(t, xp, 1)
			if holder == "" {
				holder = xp[0].Consumer
			}
			require.Equal(t, holder, xp[0].Consumer, "the held entry was claimed by another consumer after %v", xp[0].Idle)
			require.EqualValues(t, 1, xp[0].RetryCount, "the held entry was delivered again")
		}
	}
	require.NotEmpty(t, holder, "the entry was never seen pending")
	require.GreaterOrEqual(t, time.Since(published), testDelay, "the hold outlasted MaxIdleTime several times over")

	require.Never(t, func() bool { return rec.count() > 2 }, testIdle+5*testInterval, tick, "the message ran twice")
	require.Eventually(t, func() bool { return pending(client, tier, group) == 0 }, waitFor, tick)
	require.Equal(t, []string{topic, tier}, rec.topics())
}

// TestBackend_heldMessageIsClaimedWithMainTopicSettings shows what
// TestBackend_heldMessageIsNotClaimed guards against: a second consumer
// using the main topic's claim idle time (as a plain watermill-redisstream
// subscriber does) takes the held entry long before it is due.
func TestBackend_heldMessageIsClaimedWithMainTopicSettings(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{MaxIdleTime: testIdle, ClaimInterval: testInterval}, logger)
	tier := redistest.Name(t, "orders.billing.retry.3s")
	group := tier
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Our tier subscription, holding.
	sub, err := b.Subscriber(tiered.SubscribeParams{Group: group, Topic: tier, Delay: testDelay})
	require.NoError(t, err)
	held, err := tiered.NewSubscriber(sub, tiered.SubscriberConfig{MaxDelay: testDelay}, logger)
	require.NoError(t, err)
	defer held.Close()
	ours, err := held.Subscribe(ctx, tier)
	require.NoError(t, err)

	pub, err := tiered.NewPublisher(b.Publisher(), logger)
	require.NoError(t, err)
	msg := message.NewMessage("m1", []byte("one"))
	delay.Message(msg, delay.For(testDelay))
	require.NoError(t, pub.Publish(tier, msg))
	require.Eventually(t, func() bool { return pending(client, tier, group) == 1 }, waitFor, tick)
	readAt := time.Now()

	// A plain watermill-redisstream consumer in the same group, claiming
	// after the main topic's idle time.
	raw, err := wmredis.NewSubscriber(wmredis.SubscriberConfig{
		Client:                        redis.NewClient(&redis.Options{Addr: client.Options().Addr}),
		ConsumerGroup:                 group,
		MaxIdleTime:                   testIdle,
		ClaimInterval:                 testInterval,
		DisableIndefiniteInitialBlock: true,
	}, nil)
	require.NoError(t, err)
	defer raw.Close()
	theirs, err := raw.Subscribe(ctx, tier)
	require.NoError(t, err)

	select {
	case m := <-theirs:
		require.Equal(t, "m1", m.UUID)
		require.Less(t, time.Since(readAt), testDelay, "claimed while still held")
		m.Ack()
	case m := <-ours:
		t.Fatalf("our consumer handed on %s before another claimed it", m.UUID)
	case <-time.After(testDelay + waitFor):
		t.Fatal("the held entry was never claimed")
	}
}

// TestBackend_deadConsumersEntryIsRecovered: a consumer of the handler's
// group read an entry of the main topic and died before acking it; the
// handler gets it after MaxIdleTime.
func TestBackend_deadConsumersEntryIsRecovered(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{MaxIdleTime: 500 * time.Millisecond, ClaimInterval: testInterval}, logger)
	topic := redistest.Name(t, "orders")
	ctx := context.Background()

	require.NoError(t, client.XGroupCreateMkStream(ctx, topic, topic+".billing", "0").Err())
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", []byte("one"))))
	read, err := client.XReadGroup(ctx, &redis.XReadGroupArgs{Group: topic + ".billing", Consumer: "dead", Streams: []string{topic, ">"}, Count: 1}).Result()
	require.NoError(t, err)
	require.Len(t, read[0].Messages, 1)
	require.EqualValues(t, 1, pending(client, topic, topic+".billing"))

	var rec recorder
	runRouter(t, b, tiered.Policy{Delays: []time.Duration{time.Second}}, "billing", topic,
		func(msg *message.Message) error { rec.record(msg); return nil }, logger)

	require.Eventually(t, func() bool { return rec.count() == 1 }, waitFor, tick)
	require.Equal(t, "m1", rec.all()[0].uuid)
	require.Eventually(t, func() bool { return pending(client, topic, topic+".billing") == 0 }, waitFor, tick)
	require.Never(t, func() bool { return rec.count() > 1 }, 300*time.Millisecond, tick)
}
