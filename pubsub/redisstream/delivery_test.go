package redisstream_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// receive returns the next message of ch.
func receive(t *testing.T, ch <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		require.True(t, ok, "the subscription ended")
		return m
	case <-time.After(waitFor):
		t.Fatal("no message")
		return nil
	}
}

// subscribe subscribes to topic in group, until the test ends.
func subscribe(t *testing.T, b *redisstream.Backend, params tiered.SubscribeParams) (message.Subscriber, <-chan *message.Message) {
	t.Helper()
	sub, err := b.Subscriber(params)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sub.Close() })
	ch, err := sub.Subscribe(context.Background(), params.Topic)
	require.NoError(t, err)
	return sub, ch
}

// TestBackend_deliveryInEveryMessageContext: every consumed message's
// context carries a tiered.Delivery: the entry ID's time as AppendTime (the
// server's clock), and a WriteOrigin that writes the stream and entry ID.
func TestBackend_deliveryInEveryMessageContext(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	b := newBackend(t, client, redisstream.Config{}, newLogger(t))
	topic := redistest.Name(t, "orders")
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", []byte("one")), message.NewMessage("m2", []byte("two"))))
	entries, err := client.XRange(context.Background(), topic, "-", "+").Result()
	require.NoError(t, err)
	require.Len(t, entries, 2)

	_, ch := subscribe(t, b, tiered.SubscribeParams{Group: "g", Topic: topic})
	for _, e := range entries {
		m := receive(t, ch)
		d := tiered.DeliveryFrom(m.Context())
		require.NotNil(t, d, "Delivery in the context of %s", m.UUID)
		ms, err := strconv.ParseInt(strings.Split(e.ID, "-")[0], 10, 64)
		require.NoError(t, err)
		require.Equal(t, time.UnixMilli(ms), d.AppendTime, "AppendTime is the entry ID's time")

		md := message.Metadata{}
		require.NotNil(t, d.WriteOrigin)
		d.WriteOrigin(md)
		require.Equal(t, message.Metadata{tiered.KeyRedisStream: topic, tiered.KeyRedisEntryID: e.ID}, md)
		require.Empty(t, m.Metadata.Get(tiered.KeyRedisEntryID), "the happy path writes no origin into metadata")
		m.Ack()
	}
}

// TestBackend_earlyAckedMessageKeepsItsDelivery: acking a message before
// its handler is done (Watermill's InstantAck) ends its context, as on every
// Watermill pub/sub, but its Delivery stays readable, and a copy published
// with a context that keeps its values and drops its end (what the retry
// middleware does) goes through with the origin.
func TestBackend_earlyAckedMessageKeepsItsDelivery(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	b := newBackend(t, client, redisstream.Config{}, newLogger(t))
	topic := redistest.Name(t, "orders")
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", nil), message.NewMessage("m2", nil)))

	_, ch := subscribe(t, b, tiered.SubscribeParams{Group: "g", Topic: topic})
	m1 := receive(t, ch)
	require.True(t, m1.Ack())
	m2 := receive(t, ch)
	defer m2.Ack()
	require.Eventually(t, func() bool { return m1.Context().Err() != nil }, waitFor, tick, "the context ends at the Ack")

	d := tiered.DeliveryFrom(m1.Context())
	require.NotNil(t, d, "the Delivery outlives the context's end")
	late := m1.Copy()
	late.SetContext(context.WithoutCancel(m1.Context()))
	d.WriteOrigin(late.Metadata)
	require.NoError(t, b.Publisher().Publish(topic+".copy", late))
	copies := waitStream(t, client, topic+".copy", 1)
	require.Equal(t, topic, copies[0].Metadata.Get(tiered.KeyRedisStream))
}

// TestBackend_entryWithoutUUIDGetsAStableOne: entries in Watermill's field
// layout but with no UUID, or an empty one (a producer that is not
// Watermill), get tiered.OriginUUID("redis", stream, entry ID), the same on
// a redelivery, kept on the tier and in the dead-letter stream.
func TestBackend_entryWithoutUUIDGetsAStableOne(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{NackResendSleep: time.Millisecond}, logger)
	topic := redistest.Name(t, "orders")
	ctx := context.Background()

	missing, err := client.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: map[string]any{"payload": "no uuid field"}}).Result()
	require.NoError(t, err)
	empty, err := client.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: map[string]any{
		wmredis.UUIDHeaderKey: "", "payload": "empty uuid", "metadata": "",
	}}).Result()
	require.NoError(t, err)
	wantUUID := map[string]string{
		"no uuid field": tiered.OriginUUID("redis", topic, missing),
		"empty uuid":    tiered.OriginUUID("redis", topic, empty),
	}
	require.NotEqual(t, wantUUID["no uuid field"], wantUUID["empty uuid"])

	var rec recorder
	_, h := runRouter(t, b, tiered.Policy{Delays: []time.Duration{50 * time.Millisecond}, MaxAttempts: 2}, "billing", topic,
		func(msg *message.Message) error {
			rec.record(msg)
			return errors.New("always fails")
		}, logger)

	dead := waitStream(t, client, h.Topics.DLQ, 2)
	for _, m := range dead {
		require.Equal(t, wantUUID[string(m.Payload)], m.UUID, "dead letter of %q", m.Payload)
	}
	tier := waitStream(t, client, h.Topics.Tiers[0], 2)
	for _, m := range tier {
		require.Equal(t, wantUUID[string(m.Payload)], m.UUID, "tier copy of %q", m.Payload)
	}
	calls := rec.all()
	require.Len(t, calls, 4, "main and tier, each twice")
	for _, c := range calls {
		require.Contains(t, []string{wantUUID["no uuid field"], wantUUID["empty uuid"]}, c.uuid)
	}
	require.Zero(t, xlen(t, client, h.Topics.DLQ)-2, "not dead-lettered as undecodable")

	// A redelivery gets the same UUID.
	_, ch := subscribe(t, b, tiered.SubscribeParams{Group: "again", Topic: topic})
	first := receive(t, ch)
	require.Equal(t, wantUUID["no uuid field"], first.UUID)
	require.True(t, first.Nack())
	again := receive(t, ch)
	require.Equal(t, first.UUID, again.UUID, "redelivered with the same UUID")
	again.Ack()
}

// TestBackend_forgedDueTimesDoNotStack: five tier entries carrying due
// times an hour away are each clamped to their entry ID's time + the tier
// delay, so all come due within one delay of being written, and a genuine
// retry behind them waits about one delay, not one delay per forged entry.
func TestBackend_forgedDueTimesDoNotStack(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{}, logger)
	topic := redistest.Name(t, "orders")
	const tierDelay, forged = time.Second, 5
	policy := tiered.Policy{Delays: []time.Duration{tierDelay}}
	topics, err := policy.Topics(topic, "billing", nil)
	require.NoError(t, err)
	tier := topics.Tiers[0]

	now := time.Now()
	for i := range forged {
		m := message.NewMessage("forged-"+strconv.Itoa(i), nil)
		tiered.Info{Attempt: 1, OriginalTopic: topic, Handler: "billing", FirstFailure: now, LastFailure: now, Tier: 1}.Write(m.Metadata)
		m.Metadata.Set(tiered.KeyDueAt, strconv.FormatInt(now.Add(time.Hour).UnixMilli(), 10))
		require.NoError(t, b.Publisher().Publish(tier, m))
	}

	var rec recorder
	runRouter(t, b, policy, "billing", topic, func(msg *message.Message) error {
		rec.record(msg)
		if message.SubscribeTopicFromCtx(msg.Context()) == topic {
			return errors.New("try later")
		}
		return nil
	}, logger)
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("genuine", nil)))

	var failed, retried time.Time
	require.Eventually(t, func() bool {
		for _, c := range rec.all() {
			switch {
			case c.uuid == "genuine" && c.topic == topic:
				failed = c.at
			case c.uuid == "genuine" && c.topic == tier:
				retried = c.at
			}
		}
		return !retried.IsZero()
	}, forged*tierDelay+waitFor, tick, "the genuine retry never ran")
	require.GreaterOrEqual(t, retried.Sub(failed), tierDelay, "never early")
	// Clamped to receipt + delay instead, the forged entries would hold
	// the tier one delay each, one after another: forged × delay.
	require.Less(t, retried.Sub(failed), 3*tierDelay, "the genuine retry waited behind the forged entries")
}
