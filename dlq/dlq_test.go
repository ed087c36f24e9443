package dlq_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/dlq"
	"github.com/retry-kafka/retry-kafka/tiered"
)

func TestMessages_listsWithoutConsuming(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		topics := b.handler("billing")
		uuids := b.deadLetters(topics, letter{Key: "c1", User: "a"}, letter{Key: "c2", User: "b"}, letter{Key: "c1", User: "c"})

		got := b.all(topics.DLQ, dlq.Filter{})
		require.Equal(t, sorted(uuids), uuidsOf(got))
		for _, m := range got {
			require.Equal(t, topics.DLQ, m.Topic)
			require.False(t, m.Foreign)
			require.Equal(t, "billing", m.Handler())
			require.Equal(t, topics.Main, m.OriginalTopic())
			require.Equal(t, 3, m.Attempts())
			require.Contains(t, m.Reason(), "payment gateway timeout")
			require.Contains(t, m.Metadata.Get("user_note"), "note-")
			require.WithinDuration(t, time.Now(), m.Time, time.Minute, "the broker's time")
			if b.isKafka() {
				require.Contains(t, []string{"c1", "c2"}, string(m.Key))
				require.Equal(t, strconv.Itoa(int(m.Partition))+"/"+strconv.FormatInt(m.Offset, 10), m.ID)
			}
			one, err := b.client.Get(context.Background(), topics.DLQ, m.ID)
			require.NoError(t, err)
			require.Equal(t, m.UUID, one.UUID)
		}

		// Listing moved no group: the dead-letter topic is as deep as
		// before, and no group of the application lags less.
		d, err := b.client.Depth(context.Background(), topics.DLQ)
		require.NoError(t, err)
		require.EqualValues(t, 3, d.Messages)
		require.False(t, d.Oldest.IsZero())
		lag, err := b.backend.(tiered.Inspector).Lag(context.Background(), topics.DLQ, topics.Group(topics.Main))
		require.NoError(t, err)
		require.EqualValues(t, 3, lag)

		_, err = b.client.Get(context.Background(), topics.DLQ, "9/999999")
		require.ErrorIs(t, err, dlq.ErrNotFound)
	})
}

func TestMessages_eachFilter(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		topics := b.handler("billing")
		other := b.handler("shipping")
		early := b.deadLetters(topics, letter{Reason: "card declined for order 17", Key: "alice"})
		// Broker times are in milliseconds: leave one between the two
		// batches so a time range can tell them apart.
		mid := time.Now()
		require.Eventually(t, func() bool { return time.Since(mid) > 5*time.Millisecond }, time.Second, time.Millisecond)
		mid = time.Now()
		require.Eventually(t, func() bool { return time.Since(mid) > 5*time.Millisecond }, time.Second, time.Millisecond)
		late := b.deadLetters(topics, letter{Reason: "payment gateway timeout", Key: "bob"}, letter{Reason: "card declined for order 18", Key: "bob"})
		// A letter of another handler and topic in the same dead-letter
		// topic (a shared DLQ of a custom namer).
		foreign := b.deadLetters(tiered.Topics{Main: other.Main, Handler: "shipping", Tiers: other.Tiers, DLQ: topics.DLQ}, letter{Reason: "card declined"})

		cases := []struct {
			name   string
			filter dlq.Filter
			want   []string
			kafka  bool // Kafka only (keys)
		}{
			{"everything", dlq.Filter{}, append(append(append([]string{}, early...), late...), foreign...), false},
			{"from", dlq.Filter{From: mid}, append(append([]string{}, late...), foreign...), false},
			{"to", dlq.Filter{To: mid}, early, false},
			{"reason regex", dlq.Filter{Reason: `card declined for order \d+`}, []string{early[0], late[1]}, false},
			{"reason anchored", dlq.Filter{Reason: `timeout$`}, []string{late[0]}, false},
			{"handler", dlq.Filter{Handler: "shipping"}, foreign, false},
			{"original topic", dlq.Filter{OriginalTopic: topics.Main}, append(append([]string{}, early...), late...), false},
			{"uuid", dlq.Filter{UUID: late[1]}, []string{late[1]}, false},
			{"all at once", dlq.Filter{From: mid, Reason: "declined", Handler: "billing", OriginalTopic: topics.Main}, []string{late[1]}, false},
			{"key", dlq.Filter{Key: "bob"}, late, true},
		}
		for _, c := range cases {
			if c.kafka && !b.isKafka() {
				continue
			}
			t.Run(c.name, func(t *testing.T) {
				require.Equal(t, sorted(c.want), uuidsOf(b.all(topics.DLQ, c.filter)), "filter %s", c.filter)
			})
		}
	})
}

func TestStats_countsAndNormalisesReasons(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		topics := b.handler("billing")
		var letters []letter
		for i := range 30 {
			letters = append(letters, letter{Reason: "charge order " + strconv.Itoa(1000+i) + " for customer " + watermill.NewUUID() + ": card declined"})
		}
		for i := range 12 {
			letters = append(letters, letter{Reason: "gateway 10.0.0." + strconv.Itoa(i) + ":443 timed out after " + strconv.Itoa(i) + ".5s", Redrives: i % 2})
		}
		b.deadLetters(topics, letters...)
		b.rawRecord(topics.DLQ, map[string]string{"payload": "from another tool"})

		stats, err := b.client.Stats(context.Background(), topics.DLQ, dlq.Filter{})
		require.NoError(t, err)
		require.EqualValues(t, 43, stats.Count)
		require.EqualValues(t, 43, stats.Scanned)
		require.EqualValues(t, 1, stats.Foreign)
		require.EqualValues(t, 6, stats.Redriven)
		require.False(t, stats.Oldest.IsZero())
		require.False(t, stats.Newest.Before(stats.Oldest))
		require.Len(t, stats.Reasons, 3, "ids and numbers do not split a reason: %+v", stats.Reasons)
		require.Equal(t, "attempt N of N failed, no attempts left: charge order N for customer <uuid>: card declined", stats.Reasons[0].Value)
		require.EqualValues(t, 30, stats.Reasons[0].Count)
		require.Equal(t, stats.Reasons[0].Value, dlq.NormalizeReason(stats.Reasons[0].Example), "the example is one of the reasons as written")
		require.Contains(t, stats.Reasons[0].Example, "charge order 10")
		require.Equal(t, "attempt N of N failed, no attempts left: gateway N.N.N.N:N timed out after N.Ns", stats.Reasons[1].Value)
		require.EqualValues(t, 12, stats.Reasons[1].Count)
		require.EqualValues(t, 1, stats.Reasons[2].Count, "the foreign record")
		require.Equal(t, []dlq.Count{{Value: "billing", Count: 42}, {Value: "", Count: 1}}, stats.Handlers)

		filtered, err := b.client.Stats(context.Background(), topics.DLQ, dlq.Filter{Reason: "timed out"})
		require.NoError(t, err)
		require.EqualValues(t, 12, filtered.Count)
		require.EqualValues(t, 43, filtered.Scanned)
	})
}

func TestNormalizeReason(t *testing.T) {
	cases := map[string]string{
		"attempt 3 of 3 failed, no attempts left: order 1042: card declined": "attempt N of N failed, no attempts left: order N: card declined",
		"user 6d1f0f5e-7a43-4b8e-9c56-3f2a8b9e41d7 not found":                "user <uuid> not found",
		"object deadbeef12 missing, etag 0xA1B2C3D4E5":                       "object <hex> missing, etag <hex>",
		"decade of deadbeef": "decade of deadbeef",
		"order17 and v2.5":   "orderN and vN.N",
		"id 6d1f0f5e-7a43-4b8e-9c56-3f2a8b9e41d7x is a word": "id <hex>-NaN-NbNe-NcN-NfNaNbNeNdNx is a word",
		"ünïcode 42 stays":   "ünïcode N stays",
		"  many\n\tspaces  ": "many spaces",
		"":                   "",
	}
	for in, want := range cases {
		require.Equal(t, want, dlq.NormalizeReason(in), "%q", in)
	}
}

func FuzzNormalizeReason(f *testing.F) {
	for _, seed := range []string{"attempt 3 of 3 failed: order 1042", "6d1f0f5e-7a43-4b8e-9c56-3f2a8b9e41d7", "0xDEADBEEF12", " \t\n", "\xff\xfe"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, reason string) {
		once := dlq.NormalizeReason(reason)
		require.Equal(t, once, dlq.NormalizeReason(once), "normalising twice changes nothing")
		require.LessOrEqual(t, len(once), len(reason)+len(reason)/2+6)
	})
}

func TestExport_writesJSONLines(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		topics := b.handler("billing")
		uuids := b.deadLetters(topics, letter{Payload: `{"order":1}`, Key: "alice"}, letter{Payload: "\xff\xfe binary"})
		var buf bytes.Buffer
		n, err := b.client.Export(context.Background(), &buf, topics.DLQ, dlq.Filter{})
		require.NoError(t, err)
		require.EqualValues(t, 2, n)
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		require.Len(t, lines, 2)
		byUUID := map[string]map[string]any{}
		for _, line := range lines {
			var rec map[string]any
			require.NoError(t, json.Unmarshal([]byte(line), &rec), line)
			byUUID[rec["uuid"].(string)] = rec
		}
		text, bin := byUUID[uuids[0]], byUUID[uuids[1]]
		require.Equal(t, `{"order":1}`, text["payload"])
		require.Equal(t, "text", text["payload_encoding"])
		require.Equal(t, "base64", bin["payload_encoding"])
		raw, err := base64.StdEncoding.DecodeString(bin["payload"].(string))
		require.NoError(t, err)
		require.Equal(t, "\xff\xfe binary", string(raw))
		require.Equal(t, topics.DLQ, text["topic"])
		require.Contains(t, text["reason"], "payment gateway timeout")
		md := text["metadata"].(map[string]any)
		require.Equal(t, "billing", md[tiered.KeyHandler])
		if b.isKafka() {
			require.Equal(t, "alice", text["key"])
			require.Contains(t, text, "partition")
			require.Contains(t, text, "offset")
		} else {
			require.NotContains(t, text, "partition")
		}
	})
}

func TestMessages_foreignEntriesAreListedRaw(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		topics := b.handler("billing")
		b.rawRecord(topics.DLQ, map[string]string{"payload": "written by another tool", "origin": "legacy"})
		if !b.isKafka() {
			// Watermill's fields with metadata that is not msgpack.
			b.rawRecord(topics.DLQ, map[string]string{"_watermill_message_uuid": "u-1", "payload": "p", "metadata": "\xc1 not msgpack"})
		}
		uuids := b.deadLetters(topics, letter{})

		got := b.all(topics.DLQ, dlq.Filter{})
		var foreign []*dlq.Message
		for _, m := range got {
			if m.Foreign {
				foreign = append(foreign, m)
			}
		}
		require.Len(t, got, len(foreign)+1, "the foreign entries did not end the listing")
		require.Contains(t, uuidsOf(got), uuids[0])
		if b.isKafka() {
			require.Len(t, foreign, 1)
			require.Equal(t, "", foreign[0].UUID)
			require.Equal(t, "written by another tool", string(foreign[0].Payload))
			require.Equal(t, "legacy", foreign[0].Metadata.Get("origin"), "headers are the metadata")
			require.Equal(t, "raw-key", string(foreign[0].Key))
		} else {
			require.Len(t, foreign, 2)
			require.Equal(t, map[string]string{"payload": "written by another tool", "origin": "legacy"}, foreign[0].Raw)
			require.Contains(t, foreign[0].DecodeError, "no _watermill_message_uuid field")
			require.Equal(t, "\xc1 not msgpack", foreign[1].Raw["metadata"])
			require.Contains(t, foreign[1].DecodeError, "cannot decode")
		}
		for _, m := range foreign {
			_, err := json.Marshal(m)
			require.NoError(t, err)
		}
	})
}

func TestClient_badInput(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		ctx := context.Background()
		topics := b.handler("billing")
		b.deadLetters(topics, letter{})
		missing := b.topic("missing")

		_, err := b.client.Stats(ctx, missing, dlq.Filter{})
		require.ErrorIs(t, err, dlq.ErrUnknownTopic)
		require.Contains(t, err.Error(), missing)
		for _, err := range b.client.Messages(ctx, missing, dlq.Filter{}) {
			require.ErrorIs(t, err, dlq.ErrUnknownTopic)
		}
		_, err = b.client.Redrive(ctx, dlq.RedriveParams{Topic: missing})
		require.ErrorIs(t, err, dlq.ErrUnknownTopic)

		// A handler's own topic is not a dead-letter topic.
		b.backend.Publisher().Publish(topics.Main, message.NewMessage(watermill.NewUUID(), []byte("x")))
		_, err = b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.Main})
		require.ErrorIs(t, err, dlq.ErrNotDeadLetterTopic)
		_, err = b.client.Purge(ctx, dlq.PurgeParams{Topic: topics.Main})
		require.ErrorIs(t, err, dlq.ErrNotDeadLetterTopic)

		_, err = b.client.Stats(ctx, topics.DLQ, dlq.Filter{Reason: "(unclosed"})
		require.ErrorIs(t, err, dlq.ErrInvalidFilter)
		require.Contains(t, err.Error(), "(unclosed")
		_, err = b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ, Filter: dlq.Filter{Reason: "["}})
		require.ErrorIs(t, err, dlq.ErrInvalidFilter)
		now := time.Now()
		_, err = b.client.Stats(ctx, topics.DLQ, dlq.Filter{From: now, To: now.Add(-time.Hour)})
		require.ErrorIs(t, err, dlq.ErrInvalidFilter)
		if !b.isKafka() {
			_, err = b.client.Stats(ctx, topics.DLQ, dlq.Filter{Key: "k"})
			require.ErrorIs(t, err, dlq.ErrInvalidFilter, "Redis entries have no key")
		}

		_, err = b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ, To: dlq.ToTopic})
		require.ErrorContains(t, err, "TargetTopic is empty")
		_, err = b.client.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ, To: dlq.ToTopic, TargetTopic: missing})
		require.ErrorIs(t, err, dlq.ErrUnknownTopic)
		_, err = b.client.Get(ctx, topics.DLQ, "not-an-id")
		require.ErrorIs(t, err, dlq.ErrNotFound)
	})
}

func TestOpen_badURLs(t *testing.T) {
	ctx := context.Background()
	_, err := dlq.Open(ctx, "mem://", nil)
	require.ErrorIs(t, err, dlq.ErrUnsupportedBackend)
	_, err = dlq.Open(ctx, "kafka://embedded?partitions=2", nil)
	require.ErrorIs(t, err, dlq.ErrUnsupportedBackend)
	require.ErrorContains(t, err, "kafka://host:port")
	_, err = dlq.Open(ctx, "nats://localhost:4222", nil)
	require.ErrorContains(t, err, "unknown backend scheme")
	_, err = dlq.Open(ctx, "kafka://", nil)
	require.ErrorContains(t, err, "names no broker")
	_, err = dlq.Open(ctx, "redis://127.0.0.1:6379/0?max_len=x", nil)
	require.ErrorContains(t, err, "max_len")
	_, err = dlq.New(dlq.Config{}, nil)
	require.ErrorContains(t, err, "Backend is nil")
}

func TestOpen_sameURLAsTheApplication(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		topics := b.handler("billing")
		uuids := b.deadLetters(topics, letter{})
		c, err := dlq.Open(context.Background(), b.url, nil)
		require.NoError(t, err)
		defer c.Close()
		require.Equal(t, b.name, c.Backend())
		d, err := c.Depth(context.Background(), topics.DLQ)
		require.NoError(t, err)
		require.EqualValues(t, len(uuids), d.Messages)
		require.NoError(t, c.Close())
		_, err = c.Depth(context.Background(), topics.DLQ)
		require.ErrorIs(t, err, dlq.ErrClosed)
	})
}

func TestTopology_findsHandlersTiersAndDeadLetters(t *testing.T) {
	forEachBroker(t, func(t *testing.T, b *broker) {
		ctx := context.Background()
		billing := b.handler("billing")
		// Main topics of the test have dots ("t.Test….orders1"): the
		// name alone does not say where the topic ends.
		b.deadLetters(billing, letter{}, letter{})
		due := time.Now().Add(30 * time.Minute).Truncate(time.Millisecond)
		for i := range 3 {
			msg := message.NewMessage(watermill.NewUUID(), []byte("waiting"))
			tiered.Info{Attempt: 2, OriginalTopic: billing.Main, Handler: "billing", FirstFailure: time.Now(), LastFailure: time.Now(), Tier: 2}.Write(msg.Metadata)
			delay.Message(msg, delay.For(time.Hour))
			msg.Metadata.Set(tiered.KeyDueAt, strconv.FormatInt(due.Add(time.Duration(i)*time.Minute).UnixMilli(), 10))
			require.NoError(t, b.backend.Publisher().Publish(billing.Tiers[1], msg))
		}
		empty := b.handler("audit") // no message anywhere

		topo, err := b.client.Topology(ctx, billing.Main)
		require.NoError(t, err)
		require.Len(t, topo.Handlers, 1, "the prefix keeps other handlers out: %+v", topo.Handlers)
		h := topo.Handlers[0]
		require.Equal(t, billing.Main, h.Topic)
		require.Equal(t, "billing", h.Name)
		require.NotNil(t, h.DLQ)
		require.Equal(t, billing.DLQ, h.DLQ.Topic)
		require.EqualValues(t, 2, h.DLQ.Depth)
		require.WithinDuration(t, time.Now(), h.DLQ.Oldest, time.Minute)

		var tierTopics []string
		for _, q := range h.Tiers {
			tierTopics = append(tierTopics, q.Topic)
		}
		if b.isKafka() {
			require.Equal(t, billing.Tiers, tierTopics, "shortest delay first")
			require.Zero(t, h.Tiers[0].Depth)
			require.True(t, h.Tiers[0].HeadDue.IsZero())
		} else {
			require.Equal(t, billing.Tiers, tierTopics)
		}
		long := h.Tiers[1]
		require.Equal(t, time.Hour, long.Delay)
		require.Equal(t, billing.Tiers[1], long.Group)
		require.EqualValues(t, 3, long.Depth)
		require.Equal(t, due, long.HeadDue, "the earliest due time at the head")
		require.WithinDuration(t, time.Now(), long.Oldest, time.Minute)
		require.Less(t, long.Age(time.Now()), time.Minute)

		all, err := b.client.Topology(ctx, "")
		require.NoError(t, err)
		var names []string
		for _, h := range all.Handlers {
			names = append(names, h.Topic+"|"+h.Name)
		}
		require.Contains(t, names, billing.Main+"|billing")
		if b.isKafka() { // Redis streams exist once written to
			require.Contains(t, names, empty.Main+"|audit")
		}
	})
}
