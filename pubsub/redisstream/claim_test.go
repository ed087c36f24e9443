package redisstream_test

import (
	"context"
	"errors"
	"sync"
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
// tier delay a tier ten times as long.
const (
	testIdle     = 300 * time.Millisecond
	testInterval = 50 * time.Millisecond
	testDelay    = 3 * time.Second
)

func TestClaimIdle_isMaxIdleTimeOnEveryStream(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		config redisstream.Config
		delay  time.Duration
		want   time.Duration
	}{
		{"main topic, default", redisstream.Config{}, 0, 60 * time.Second},
		{"main topic, configured", redisstream.Config{MaxIdleTime: 30 * time.Second}, 0, 30 * time.Second},
		{"long tier, default", redisstream.Config{}, 5 * time.Hour, 60 * time.Second},
		{"short tier", redisstream.Config{MaxIdleTime: 30 * time.Second}, 10 * time.Second, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, redisstream.ClaimIdle(tc.config, tc.delay))
		})
	}
}

// TestBackend_heldEntriesStayWithTheirConsumer runs two routers with the
// same handler (two consumers in each group) while three messages wait in a
// tier ten times longer than MaxIdleTime. Each tier entry must stay with the
// consumer that read it and be delivered once: the one held until due, and
// those read ahead behind it, which wait as long.
func TestBackend_heldEntriesStayWithTheirConsumer(t *testing.T) {
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
		rec.record(msg)
		if message.SubscribeTopicFromCtx(msg.Context()) == topic {
			return errors.New("try later")
		}
		return nil
	}
	_, handler := runRouter(t, b1, policy, "billing", topic, h, logger)
	runRouter(t, b2, policy, "billing", topic, h, logger)
	tier := handler.Topics.Tiers[0]
	group := handler.Topics.Group(tier)

	const n = 3
	for _, id := range []string{"m1", "m2", "m3"} {
		require.NoError(t, b1.Publisher().Publish(topic, message.NewMessage(id, []byte(id))))
	}

	// Until every tier attempt ran, each entry stays pending on the
	// consumer that read it, delivered once.
	holders := map[string]string{}
	poll := time.NewTicker(tick)
	defer poll.Stop()
	deadline := time.After(testDelay + waitFor)
	for rec.count() < 2*n {
		select {
		case <-poll.C:
		case <-deadline:
			t.Fatalf("the tier attempts never all ran: %v", rec.topics())
		}
		xp, err := client.XPendingExt(context.Background(), &redis.XPendingExtArgs{Stream: tier, Group: group, Start: "-", End: "+", Count: 10}).Result()
		if err != nil {
			continue // the group does not exist yet
		}
		for _, p := range xp {
			if holders[p.ID] == "" {
				holders[p.ID] = p.Consumer
			}
			require.Equal(t, holders[p.ID], p.Consumer, "entry %s was claimed by another consumer after %v", p.ID, p.Idle)
			require.EqualValues(t, 1, p.RetryCount, "entry %s was delivered again", p.ID)
		}
	}
	require.Len(t, holders, n, "every tier entry was seen pending")

	require.Never(t, func() bool { return rec.count() > 2*n }, testIdle+5*testInterval, tick, "a message ran twice")
	require.Eventually(t, func() bool { return pending(client, tier, group) == 0 }, waitFor, tick)
	perUUID := map[string][]string{}
	for _, c := range rec.all() {
		perUUID[c.uuid] = append(perUUID[c.uuid], c.topic)
	}
	for _, id := range []string{"m1", "m2", "m3"} {
		require.Equal(t, []string{topic, tier}, perUUID[id], id)
	}
}

// TestBackend_plainConsumerNeverTakesAHeldEntry: even a plain
// watermill-redisstream consumer in the same group, claiming whatever is
// idle for MaxIdleTime, does not get an entry while our consumer holds it
// for ten times as long.
func TestBackend_plainConsumerNeverTakesAHeldEntry(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{MaxIdleTime: testIdle, ClaimInterval: testInterval}, logger)
	tier := redistest.Name(t, "orders.billing.retry.3s")
	group := tier
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	ours := holdingSubscription(t, b, tier, testDelay, logger)

	pub, err := tiered.NewPublisher(b.Publisher(), logger)
	require.NoError(t, err)
	msg := message.NewMessage("m1", []byte("one"))
	delay.Message(msg, delay.For(testDelay))
	published := time.Now().Round(0) // the wall clock, as the due time
	require.NoError(t, pub.Publish(tier, msg))
	require.Eventually(t, func() bool { return pending(client, tier, group) == 1 }, waitFor, tick)

	// A plain watermill-redisstream consumer in the same group, claiming
	// entries idle for MaxIdleTime.
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
		t.Fatalf("another consumer claimed %s %v after it was published, while it was held", m.UUID, time.Since(published))
	case m := <-ours:
		require.Equal(t, "m1", m.UUID)
		require.GreaterOrEqual(t, time.Since(published), testDelay, "never early")
		m.Ack()
	case <-time.After(testDelay + waitFor):
		t.Fatal("the held entry was never handed on")
	}
	require.Eventually(t, func() bool { return pending(client, tier, group) == 0 }, waitFor, tick)
}

// TestBackend_deadConsumersHeldEntryComesBackAfterMaxIdleTime: a consumer
// read an entry of a one-minute tier and died while holding it. Another
// consumer claims it once it has been idle for MaxIdleTime, not a tier delay
// later, and hands it on at its due time.
func TestBackend_deadConsumersHeldEntryComesBackAfterMaxIdleTime(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	const (
		idle      = 500 * time.Millisecond
		tierDelay = time.Minute
		dueIn     = time.Second
	)
	b := newBackend(t, client, redisstream.Config{MaxIdleTime: idle, ClaimInterval: testInterval}, logger)
	tier := redistest.Name(t, "orders.billing.retry.1m")
	group := tier
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	require.NoError(t, client.XGroupCreateMkStream(ctx, tier, group, "0").Err())
	pub, err := tiered.NewPublisher(b.Publisher(), logger)
	require.NoError(t, err)
	msg := message.NewMessage("m1", []byte("one"))
	delay.Message(msg, delay.For(dueIn))
	published := time.Now().Round(0) // the wall clock, as the due time
	require.NoError(t, pub.Publish(tier, msg))
	read, err := client.XReadGroup(ctx, &redis.XReadGroupArgs{Group: group, Consumer: "dead", Streams: []string{tier, ">"}, Count: 1}).Result()
	require.NoError(t, err)
	require.Len(t, read[0].Messages, 1)

	ours := holdingSubscription(t, b, tier, tierDelay, logger)

	select {
	case m := <-ours:
		require.Equal(t, "m1", m.UUID)
		require.GreaterOrEqual(t, time.Since(published), dueIn, "never early")
		m.Ack()
	case <-time.After(tierDelay / 2):
		t.Fatalf("the dead consumer's entry was not back after half the tier delay (MaxIdleTime is %v)", idle)
	}
	require.Eventually(t, func() bool { return pending(client, tier, group) == 0 }, waitFor, tick)
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
	group := topic + ".billing"
	ctx := context.Background()

	require.NoError(t, client.XGroupCreateMkStream(ctx, topic, group, "0").Err())
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", []byte("one"))))
	read, err := client.XReadGroup(ctx, &redis.XReadGroupArgs{Group: group, Consumer: "dead", Streams: []string{topic, ">"}, Count: 1}).Result()
	require.NoError(t, err)
	require.Len(t, read[0].Messages, 1)
	require.EqualValues(t, 1, pending(client, topic, group))

	var rec recorder
	runRouter(t, b, tiered.Policy{Delays: []time.Duration{time.Second}}, "billing", topic,
		func(msg *message.Message) error { rec.record(msg); return nil }, logger)

	require.Eventually(t, func() bool { return rec.count() == 1 }, waitFor, tick)
	require.Equal(t, "m1", rec.all()[0].uuid)
	require.Eventually(t, func() bool { return pending(client, topic, group) == 0 }, waitFor, tick)
	require.Never(t, func() bool { return rec.count() > 1 }, 300*time.Millisecond, tick)
}

// TestBackend_slowHandlerKeepsItsEntries: a handler that works for ten
// times MaxIdleTime keeps its entry and the one read ahead behind it; a
// second consumer of the group takes neither.
func TestBackend_slowHandlerKeepsItsEntries(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	config := redisstream.Config{MaxIdleTime: testIdle, ClaimInterval: testInterval}
	b1 := newBackend(t, client, config, logger)
	b2 := newBackend(t, client, config, logger)
	topic := redistest.Name(t, "orders")
	policy := tiered.Policy{Delays: []time.Duration{time.Second}}

	var rec recorder
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseAll := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseAll) // before the routers close, even on failure
	h := func(msg *message.Message) error {
		rec.record(msg)
		<-release
		return nil
	}
	runRouter(t, b1, policy, "billing", topic, h, logger)
	require.NoError(t, b1.Publisher().Publish(topic, message.NewMessage("m1", nil), message.NewMessage("m2", nil)))
	require.Eventually(t, func() bool { return rec.count() == 1 && pending(client, topic, topic+".billing") == 2 }, waitFor, tick,
		"one entry in the handler, one read ahead")
	runRouter(t, b2, policy, "billing", topic, h, logger)

	require.Never(t, func() bool { return rec.count() > 1 }, 10*testIdle, tick, "another consumer took an entry in hand")
	releaseAll()
	require.Eventually(t, func() bool { return rec.count() == 2 && pending(client, topic, topic+".billing") == 0 }, waitFor, tick)
	require.Equal(t, []string{"m1", "m2"}, []string{rec.all()[0].uuid, rec.all()[1].uuid})
}

// holdingSubscription subscribes to a tier stream as the router does, in
// the group named after the stream, through the holding subscriber, until
// the test ends.
func holdingSubscription(t *testing.T, b *redisstream.Backend, tier string, delay time.Duration, logger *captureLogger) <-chan *message.Message {
	t.Helper()
	sub, err := b.Subscriber(tiered.SubscribeParams{Group: tier, Topic: tier, Delay: delay})
	require.NoError(t, err)
	held, err := tiered.NewSubscriber(sub, tiered.SubscriberConfig{MaxDelay: delay}, logger)
	require.NoError(t, err)
	t.Cleanup(func() { _ = held.Close() })
	ch, err := held.Subscribe(context.Background(), tier)
	require.NoError(t, err)
	return ch
}
