package redisstream_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

func TestBackend_happyPathTouchesNoTier(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{ConsumerGroupPrefix: "app."}, logger)
	topic := redistest.Name(t, "orders")

	var rec recorder
	_, h := runRouter(t, b, tiered.Policy{Delays: []time.Duration{100 * time.Millisecond, 200 * time.Millisecond}}, "billing", topic,
		func(msg *message.Message) error { rec.record(msg); return nil }, logger)

	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", []byte("one")), message.NewMessage("m2", []byte("two"))))
	require.Eventually(t, func() bool { return rec.count() == 2 && pending(client, topic, "app."+topic+".billing") == 0 }, waitFor, tick)

	require.Equal(t, []string{topic, topic}, rec.topics())
	require.Equal(t, "m1", rec.all()[0].uuid)
	for _, tier := range h.Topics.Tiers {
		require.Zero(t, xlen(t, client, tier), "tier %s", tier)
	}
	require.Zero(t, xlen(t, client, h.Topics.DLQ))

	groups, err := client.XInfoGroups(context.Background(), topic).Result()
	require.NoError(t, err)
	require.Len(t, groups, 1)
	require.Equal(t, "app."+topic+".billing", groups[0].Name, "ConsumerGroupPrefix + {topic}.{handler}")
}

func TestBackend_failOnceThenSucceedFromFirstTier(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{}, logger)
	topic := redistest.Name(t, "orders")
	const delay = 300 * time.Millisecond

	var rec recorder
	_, h := runRouter(t, b, tiered.Policy{Delays: []time.Duration{delay, 2 * delay}}, "billing", topic,
		func(msg *message.Message) error {
			if rec.record(msg) == 1 {
				return errors.New("card service down")
			}
			return nil
		}, logger)

	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", []byte("one"))))
	require.Eventually(t, func() bool { return rec.count() == 2 }, waitFor, tick)
	require.Eventually(t, func() bool { return pending(client, h.Topics.Tiers[0], h.Topics.Group(h.Topics.Tiers[0])) == 0 }, waitFor, tick)

	calls := rec.all()
	require.Equal(t, []string{topic, h.Topics.Tiers[0]}, rec.topics())
	require.Equal(t, "m1", calls[1].uuid, "the UUID stays the same on every hop")
	require.False(t, calls[1].at.Before(calls[1].due), "handled at %v, before its due time %v", calls[1].at, calls[1].due)
	require.GreaterOrEqual(t, calls[1].at.Sub(calls[0].at), delay, "never early")
	require.EqualValues(t, 1, xlen(t, client, h.Topics.Tiers[0]))
	require.Zero(t, xlen(t, client, h.Topics.Tiers[1]))
	require.Zero(t, xlen(t, client, h.Topics.DLQ))
	require.Never(t, func() bool { return rec.count() > 2 }, 300*time.Millisecond, tick)
}

func TestBackend_failAlwaysWalksEveryTierThenDLQ(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{}, logger)
	topic := redistest.Name(t, "orders")

	var rec recorder
	_, h := runRouter(t, b, tiered.Policy{Delays: []time.Duration{100 * time.Millisecond, 200 * time.Millisecond}, MaxAttempts: 4}, "billing", topic,
		func(msg *message.Message) error { rec.record(msg); return errors.New("boom") }, logger)

	// The producer's metadata claims another origin: it is replaced by
	// the entry's own.
	msg := message.NewMessage("m1", []byte("one"))
	msg.Metadata.Set(tiered.KeyRedisStream, "elsewhere")
	msg.Metadata.Set(tiered.KeyRedisEntryID, "1-1")
	require.NoError(t, b.Publisher().Publish(topic, msg))
	dlq := waitStream(t, client, h.Topics.DLQ, 1)[0]
	_, ids, err := streamMessages(client, topic)
	require.NoError(t, err)

	require.Equal(t, []string{topic, h.Topics.Tiers[0], h.Topics.Tiers[1], h.Topics.Tiers[1]}, rec.topics(), "every tier in order; the last repeats")
	require.Equal(t, topic, dlq.Metadata.Get(tiered.KeyRedisStream), "the dead letter says where the message was first consumed")
	require.Equal(t, ids[0], dlq.Metadata.Get(tiered.KeyRedisEntryID))
	require.Equal(t, "m1", dlq.UUID)
	require.Equal(t, []byte("one"), []byte(dlq.Payload))
	require.Equal(t, "4", dlq.Metadata.Get(tiered.KeyAttempt))
	require.Equal(t, topic, dlq.Metadata.Get(tiered.KeyOriginalTopic))
	require.Contains(t, dlq.Metadata.Get(wmiddleware.ReasonForPoisonedKey), "no attempts left")
	require.Contains(t, dlq.Metadata.Get(wmiddleware.ReasonForPoisonedKey), "boom")
	require.Equal(t, h.Topics.Tiers[1], dlq.Metadata.Get(wmiddleware.PoisonedTopicKey))
	require.Equal(t, "billing", dlq.Metadata.Get(wmiddleware.PoisonedHandlerKey))
	require.EqualValues(t, 1, xlen(t, client, h.Topics.Tiers[0]))
	require.EqualValues(t, 2, xlen(t, client, h.Topics.Tiers[1]))
}

func TestBackend_permanentErrorGoesStraightToDLQ(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{}, logger)
	topic := redistest.Name(t, "orders")

	var rec recorder
	_, h := runRouter(t, b, tiered.Policy{Delays: []time.Duration{100 * time.Millisecond}, MaxAttempts: 5}, "billing", topic,
		func(msg *message.Message) error {
			rec.record(msg)
			return tiered.Permanent(errors.New("card declined"))
		}, logger)

	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", []byte("one"))))
	dlq := waitStream(t, client, h.Topics.DLQ, 1)[0]

	require.Equal(t, []string{topic}, rec.topics())
	require.Equal(t, "m1", dlq.UUID)
	require.Equal(t, "1", dlq.Metadata.Get(tiered.KeyAttempt))
	require.Contains(t, dlq.Metadata.Get(wmiddleware.ReasonForPoisonedKey), "not retried")
	require.Contains(t, dlq.Metadata.Get(wmiddleware.ReasonForPoisonedKey), "card declined")
	require.Zero(t, xlen(t, client, h.Topics.Tiers[0]))
	require.Eventually(t, func() bool { return pending(client, topic, topic+".billing") == 0 }, waitFor, tick)
}

func TestBackend_foreignEntriesGoToDLQAndTheHandlerGoesOn(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{}, logger)
	topic := redistest.Name(t, "orders")
	ctx := context.Background()

	// Entries no Watermill publisher wrote: unrelated fields, then a
	// Watermill-looking entry whose msgpack metadata is corrupt.
	foreignID, err := client.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: map[string]any{"foo": "bar", "n": "1"}}).Result()
	require.NoError(t, err)
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", []byte("one"))))
	corruptID, err := client.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: map[string]any{
		"_watermill_message_uuid": "x1", "payload": "p", "metadata": "\xc1\xff\x00not msgpack",
	}}).Result()
	require.NoError(t, err)
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m2", []byte("two"))))

	var rec recorder
	_, h := runRouter(t, b, tiered.Policy{Delays: []time.Duration{time.Second}}, "billing", topic,
		func(msg *message.Message) error { rec.record(msg); return nil }, logger)

	require.Eventually(t, func() bool { return rec.count() == 2 }, waitFor, tick)
	require.Equal(t, []string{"m1", "m2"}, []string{rec.all()[0].uuid, rec.all()[1].uuid})
	dlq := waitStream(t, client, h.Topics.DLQ, 2)
	require.Eventually(t, func() bool { return pending(client, topic, topic+".billing") == 0 }, waitFor, tick, "every entry acked")

	for i, want := range []struct {
		id    string
		cause string
	}{
		{foreignID, "_watermill_message_uuid key is missing"},
		{corruptID, "unmarshal metadata fail"},
	} {
		m := dlq[i]
		reason := m.Metadata.Get(wmiddleware.ReasonForPoisonedKey)
		require.Contains(t, reason, "could not be decoded")
		require.Contains(t, reason, want.id)
		require.Contains(t, reason, want.cause)
		require.Equal(t, tiered.OriginUUID("redis", topic, want.id), m.UUID, "a stable UUID, from where the entry was")
		require.Equal(t, want.id, m.Metadata.Get(redisstream.KeyEntryID))
		require.Equal(t, topic, m.Metadata.Get(tiered.KeyRedisStream))
		require.Equal(t, topic, m.Metadata.Get(wmiddleware.PoisonedTopicKey))
		require.Equal(t, "billing", m.Metadata.Get(wmiddleware.PoisonedHandlerKey))
		require.Equal(t, entryFields(t, client, topic, want.id), restoreFields(t, m), "the entry can be restored from its dead letter")
	}
	require.Equal(t, "bWV0YWRhdGE=", dlq[1].Metadata.Get(redisstream.KeyBase64Fields), "metadata is not UTF-8, so base64, name and value")
	require.Empty(t, errorLogs(logger))
}

// TestBackend_undecodableEntryKeepsItsFieldNames: field names that are not
// valid UTF-8, or that contain a comma, or whose base64 equals another
// field's name, all survive the dead-letter copy.
func TestBackend_undecodableEntryKeepsItsFieldNames(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{}, logger)
	topic, dlq := redistest.Name(t, "events"), redistest.Name(t, "events.dlq")
	ctx := context.Background()

	fields := map[string]any{
		"\xff\xfe name": "text value",
		"text name":     "\x00\xff binary value",
		"\x80":          "\x81",
		"/w==":          "the base64 of the name \xff", // also a field below
		"\xff":          "x",
		"a,b":           "\xfe comma in a name",
		"plain":         "plain",
		"payload":       "a payload beside fields no Watermill writes",
		"\xc3\x28 bad":  "",
	}
	id, err := client.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: fields}).Result()
	require.NoError(t, err)

	sub, err := b.Subscriber(tiered.SubscribeParams{Group: "g", Topic: topic, DLQ: dlq})
	require.NoError(t, err)
	defer sub.Close()
	_, err = sub.Subscribe(ctx, topic)
	require.NoError(t, err)

	m := waitStream(t, client, dlq, 1)[0]
	require.Equal(t, entryFields(t, client, topic, id), restoreFields(t, m))
	for _, name := range strings.Split(m.Metadata.Get(redisstream.KeyBase64Fields), ",") {
		raw, err := base64.StdEncoding.DecodeString(name)
		require.NoError(t, err, "every listed name is base64: %q", name)
		require.Contains(t, fields, string(raw))
	}
	require.NotContains(t, m.Metadata.Get(redisstream.KeyBase64Fields), base64.StdEncoding.EncodeToString([]byte("plain")), "valid fields stay as they are")
}

// entryFields reads the fields of one stream entry.
func entryFields(t *testing.T, client redis.UniversalClient, stream, id string) map[string]string {
	t.Helper()
	entries, err := client.XRange(context.Background(), stream, id, id).Result()
	require.NoError(t, err)
	require.Len(t, entries, 1)
	out := map[string]string{}
	for k, v := range entries[0].Values {
		out[k] = v.(string)
	}
	return out
}

// restoreFields rebuilds an undecodable entry's fields from its dead-letter
// copy, as the docs of redisstream.KeyBase64Fields say.
func restoreFields(t *testing.T, m *message.Message) map[string]string {
	t.Helper()
	var payload map[string]string
	require.NoError(t, json.Unmarshal(m.Payload, &payload), "payload is the entry's fields as JSON")
	encoded := map[string]bool{}
	if list := m.Metadata.Get(redisstream.KeyBase64Fields); list != "" {
		for _, name := range strings.Split(list, ",") {
			encoded[name] = true
		}
	}
	out := map[string]string{}
	for k, v := range payload {
		if !encoded[k] {
			out[k] = v
			continue
		}
		name, err := base64.StdEncoding.DecodeString(k)
		require.NoError(t, err)
		value, err := base64.StdEncoding.DecodeString(v)
		require.NoError(t, err)
		out[string(name)] = string(value)
	}
	return out
}

func TestBackend_foreignEntryWithoutDLQIsLoggedAndAcked(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{}, logger)
	topic := redistest.Name(t, "events")
	ctx := context.Background()

	_, err := client.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: map[string]any{"foo": "bar"}}).Result()
	require.NoError(t, err)
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", []byte("one"))))

	sub, err := b.Subscriber(tiered.SubscribeParams{Group: "inspect", Topic: topic})
	require.NoError(t, err)
	defer sub.Close()
	ch, err := sub.Subscribe(ctx, topic)
	require.NoError(t, err)
	select {
	case m := <-ch:
		require.Equal(t, "m1", m.UUID)
		m.Ack()
	case <-time.After(waitFor):
		t.Fatal("the message after the foreign entry never came")
	}
	require.Eventually(t, func() bool { return pending(client, topic, "inspect") == 0 }, waitFor, tick)
	errs := errorLogs(logger)
	require.Len(t, errs, 1)
	require.Contains(t, errs[0].Err.Error(), "could not be decoded")
	require.Contains(t, errs[0].Fields["fields"], `"foo":"bar"`)
}

// TestBackend_foreignEntryWaitsWhileDLQFails: when the dead-letter publish
// fails, the entry is not acked and is tried again; once the publish works
// it lands in the DLQ and the messages behind it flow.
func TestBackend_foreignEntryWaitsWhileDLQFails(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{NackResendSleep: 50 * time.Millisecond}, logger)
	topic, dlq := redistest.Name(t, "events"), redistest.Name(t, "events.dlq")
	ctx := context.Background()

	require.NoError(t, client.Set(ctx, dlq, "not a stream", 0).Err()) // XADD fails: WRONGTYPE
	_, err := client.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: map[string]any{"foo": "bar"}}).Result()
	require.NoError(t, err)
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", []byte("one"))))

	sub, err := b.Subscriber(tiered.SubscribeParams{Group: "g", Topic: topic, DLQ: dlq})
	require.NoError(t, err)
	defer sub.Close()
	ch, err := sub.Subscribe(ctx, topic)
	require.NoError(t, err)

	retries := func() int {
		n := 0
		for _, e := range logger.at(watermill.DebugLogLevel) {
			if strings.Contains(e.Msg, "failed again") {
				n++
			}
		}
		return n
	}
	require.Eventually(t, func() bool { return retries() >= 3 }, waitFor, tick, "the publish is tried again")
	require.Len(t, errorLogs(logger), 1, "logged at Error once, not per try")
	require.Contains(t, errorLogs(logger)[0].Err.Error(), "WRONGTYPE")
	require.GreaterOrEqual(t, pending(client, topic, "g"), int64(1), "the foreign entry stays pending")
	select {
	case m := <-ch:
		t.Fatalf("%s overtook the entry before it", m.UUID)
	default:
	}

	require.NoError(t, client.Del(ctx, dlq).Err())
	select {
	case m := <-ch:
		require.Equal(t, "m1", m.UUID)
		m.Ack()
	case <-time.After(waitFor):
		t.Fatal("the message behind the foreign entry never came")
	}
	msgs := waitStream(t, client, dlq, 1)
	require.Contains(t, msgs[0].Metadata.Get(wmiddleware.ReasonForPoisonedKey), "could not be decoded")
	require.Eventually(t, func() bool { return pending(client, topic, "g") == 0 }, waitFor, tick)
}

// TestBackend_undecodableEntryTooLargeForItsDeadLetter: an entry whose
// fields, in base64 and JSON, no longer fit the server's proto-max-bulk-len
// is dead-lettered as a stub without them, naming the entry to fetch, and
// the subscription goes on.
func TestBackend_undecodableEntryTooLargeForItsDeadLetter(t *testing.T) {
	t.Parallel()
	client := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	defer client.Close()
	ctx := context.Background()
	require.NoError(t, client.ConfigSet(ctx, "proto-max-bulk-len", "1mb").Err())
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{}, logger)
	const topic, dlq = "events", "events.dlq"

	binary := strings.Repeat("\xff", 900<<10) // fits; its base64 does not
	id, err := client.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: map[string]any{"blob": binary}}).Result()
	require.NoError(t, err)
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", nil)))

	_, ch := subscribe(t, b, tiered.SubscribeParams{Group: "g", Topic: topic, DLQ: dlq})
	m := receive(t, ch)
	require.Equal(t, "m1", m.UUID, "the subscription went on")
	m.Ack()

	stub := waitStream(t, client, dlq, 1)[0]
	require.Empty(t, stub.Payload)
	require.Equal(t, id, stub.Metadata.Get(redisstream.KeyEntryID))
	require.Equal(t, topic, stub.Metadata.Get(tiered.KeyRedisStream))
	require.Contains(t, stub.Metadata.Get(wmiddleware.ReasonForPoisonedKey), "could not be decoded")
	require.NotEmpty(t, stub.Metadata.Get(tiered.KeyPayloadDropped))
	require.Contains(t, stub.Metadata.Get(wmiddleware.ReasonForPoisonedKey), "proto-max-bulk-len")
	require.Empty(t, errorLogs(logger))
}
