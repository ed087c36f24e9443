package tests_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/retry-kafka/retry-kafka/internal/instrument/instrumenttest"
	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// After a mix of outcomes, with failed publishes among them, the registry
// holds exactly what the rig saw happen: successes and lateness per tier
// from the handler's calls, tier copies, dead letters by reason and
// publish failures from the publishes, and nothing held once all is done.
// (What the rig saw, not a fixed plan: a real broker may deliver a message
// twice, and the metrics must count that too.)
func TestMetrics_countWhatHappened(t *testing.T) {
	const faults = 3
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, quick).handle("billing", planned).observe()
		r.backend.failRetryPublishes(faults)
		r.start()

		class := map[string]string{} // the reason class of each dead letter by UUID
		var ids []string
		add := func(msg *message.Message, reason string) {
			ids = append(ids, msg.UUID)
			class[msg.UUID] = reason
			r.publish(msg)
		}
		for i := range 3 {
			add(newMsg(keys[i%len(keys)], 0), "")
		}
		for i := range 2 {
			add(newMsg(keys[i%len(keys)], 1), "")
			add(newMsg(keys[i%len(keys)], 2), "")
			add(newMsg(keys[i%len(keys)], 1000), "exhausted")
		}
		for _, at := range []string{"1", "2"} {
			msg := newMsg(keys[0], 1000)
			msg.Metadata.Set(metaPermanent, at)
			add(msg, "permanent")
		}
		big := newMsg(keys[1], 1)
		big.Metadata.Set(metaTooLarge, "1")
		add(big, "unpublishable")
		r.waitOutcomes("billing", ids)

		topics := r.handlerTopics("billing")
		expected := func() map[string]float64 {
			want := map[string]float64{}
			calls, _ := r.snapshot()
			for _, c := range calls {
				if c.err == nil {
					want[fmt.Sprintf("retry_kafka_successes_total{handler_name=billing,tier=%d}", c.tier)]++
				}
				if c.tier > 0 {
					want[fmt.Sprintf("retry_kafka_lateness_seconds{handler_name=billing,tier=%d}", c.tier)]++
				}
			}
			for _, p := range r.backend.published() {
				tier := slices.Index(topics.Tiers, p.topic) + 1
				switch {
				case p.err != nil && tier > 0:
					want["retry_kafka_publish_failures_total{destination=tier,handler_name=billing}"]++
				case p.err != nil:
					want["retry_kafka_publish_failures_total{destination=dlq,handler_name=billing}"]++
				case tier > 0:
					want[fmt.Sprintf("retry_kafka_tier_messages_total{handler_name=billing,tier=%d}", tier)]++
				case p.topic == topics.DLQ:
					want["retry_kafka_dead_letters_total{handler_name=billing,reason="+class[p.uuid]+"}"]++
					if r.dlq != nil { // the depth of the dead-letter topic, read through the dlq API
						want["retry_kafka_dlq_messages{handler_name=billing}"]++
					}
				}
			}
			return want
		}
		var got, want map[string]float64
		deadline := time.Now().Add(waitFor)
		for {
			got, want = instrumenttest.Gather(t, r.metrics).NonZero("retry_kafka_"), expected()
			delete(got, "retry_kafka_dlq_oldest_seconds{handler_name=billing}") // grows with every scrape
			if maps.Equal(got, want) || time.Now().After(deadline) {
				break
			}
			time.Sleep(tick)
		}
		require.Equal(t, want, got)
		// The plan's floor, so that the comparison above compared
		// something.
		require.GreaterOrEqual(t, want["retry_kafka_successes_total{handler_name=billing,tier=0}"], 3.0)
		require.GreaterOrEqual(t, want["retry_kafka_successes_total{handler_name=billing,tier=2}"], 2.0)
		require.GreaterOrEqual(t, want["retry_kafka_dead_letters_total{handler_name=billing,reason=exhausted}"], 2.0)
		require.GreaterOrEqual(t, want["retry_kafka_dead_letters_total{handler_name=billing,reason=permanent}"], 2.0)
		require.GreaterOrEqual(t, want["retry_kafka_dead_letters_total{handler_name=billing,reason=unpublishable}"], 1.0)
		require.Equal(t, float64(faults+1), // plus the too-large copy's refusal
			want["retry_kafka_publish_failures_total{destination=tier,handler_name=billing}"]+
				want["retry_kafka_publish_failures_total{destination=dlq,handler_name=billing}"])

		m := instrumenttest.Gather(t, r.metrics)
		require.Equal(t, []string{"handler_name=billing,tier=1", "handler_name=billing,tier=2"}, m.Series("retry_kafka_held_messages"),
			"the holding subscriber of each tier reports")
		if r.dlq != nil {
			require.Positive(t, m.Value("retry_kafka_dlq_oldest_seconds", "handler_name", "billing"))
			require.Zero(t, m.Value("retry_kafka_dlq_read_errors_total"))
		}
		require.Zero(t, m.Value("retry_kafka_held_messages"), "nothing held once every message is done")
		require.Positive(t, m.Value("retry_kafka_lateness_seconds"))
		require.GreaterOrEqual(t, m.Sum("retry_kafka_lateness_seconds"), 0.0)
	})
}

// While messages wait in a long tier, the holding subscriber reports them
// held; the dead-letter topic, empty, reports 0.
func TestMetrics_heldMessages(t *testing.T) {
	policy := tiered.Policy{Delays: []time.Duration{time.Hour}, MaxAttempts: 2}
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, policy).handle("billing", planned).observe()
		r.start()
		for _, key := range keys[:2] {
			r.publish(newMsg(key, 1))
		}
		// A partitioned broker hands the tier consumer one message per
		// partition (or stream) at a time, so it holds at least one and at
		// most the two. The second may still be on its way to the tier
		// when the first is held: wait for both copies too.
		r.waitUntil("both sent to the 1h tier, and a message held there", func([]call, []deadLetter) bool {
			m := instrumenttest.Gather(t, r.metrics)
			return m.Value("retry_kafka_tier_messages_total", "tier", "1") >= 2 &&
				m.Value("retry_kafka_held_messages", "handler_name", "billing", "tier", "1") >= 1
		})
		m := instrumenttest.Gather(t, r.metrics)
		require.LessOrEqual(t, m.Value("retry_kafka_held_messages", "tier", "1"), 2.0)
		require.GreaterOrEqual(t, m.Value("retry_kafka_oldest_held_seconds", "tier", "1"), 0.0)
		require.Less(t, m.Value("retry_kafka_oldest_held_seconds", "tier", "1"), time.Hour.Seconds())
		require.Equal(t, 2.0, m.Value("retry_kafka_tier_messages_total", "tier", "1"))
		if r.dlq != nil {
			// Nothing was dead-lettered: the topic is empty, or on Redis
			// does not exist yet, and either reads as 0, not as an error.
			require.Equal(t, []string{"handler_name=billing"}, m.Series("retry_kafka_dlq_messages"))
			require.Zero(t, m.Value("retry_kafka_dlq_messages"))
			require.Zero(t, m.Value("retry_kafka_dlq_read_errors_total"))
			n, oldest, err := r.dlq.DeadLetterDepth(context.Background(), r.topic+".never-created.dlq")
			require.NoError(t, err, "a dead-letter topic that does not exist yet holds nothing")
			require.Zero(t, n)
			require.True(t, oldest.IsZero())
		}
	})
}

// Every hop of a message that fails until the dead-letter topic stays in
// its producer's trace, across the broker: each attempt a span linked to
// the first delivery, each copy's publish a span, and the dead letter
// carries the trace context of its own publish.
func TestTracing_oneTraceAcrossHops(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b Backend) {
		r := newRig(t, b, quick).handle("billing", planned).observe()
		r.start()
		ctx, producer := r.tracing.Tracer("producer").Start(context.Background(), "send", trace.WithSpanKind(trace.SpanKindProducer))
		msg := newMsg(keys[0], 1000)
		propagation.TraceContext{}.Inject(ctx, propagation.MapCarrier(msg.Metadata))
		producer.End()
		r.publish(msg)
		r.waitOutcomes("billing", []string{msg.UUID})

		topics := r.handlerTopics("billing")
		names := []string{"process " + r.topic, "send " + topics.Tiers[0], "process " + topics.Tiers[0],
			"send " + topics.Tiers[1], "process " + topics.Tiers[1], "send " + topics.DLQ}
		var spans map[string]tracetest.SpanStub // the first of each name
		r.waitUntil("the spans of every hop", func([]call, []deadLetter) bool {
			spans = map[string]tracetest.SpanStub{}
			for _, s := range r.spans.GetSpans() {
				if _, seen := spans[s.Name]; !seen && hasAttr(s, "messaging.message.id", msg.UUID) {
					spans[s.Name] = s
				}
			}
			return len(spans) == len(names)
		})

		system := map[string]string{"mem": "memory", "kafka": "kafka", "redis": "redis", "redis-cluster": "redis"}[b.Name]
		first := spans[names[0]]
		require.Equal(t, producer.SpanContext().SpanID(), first.Parent.SpanID())
		for i, name := range names {
			s := spans[name]
			require.Equal(t, producer.SpanContext().TraceID(), s.SpanContext.TraceID(), "%s is in the producer's trace", name)
			require.True(t, hasAttr(s, "messaging.system", system), "%s: messaging.system", name)
			if i > 0 {
				require.Equal(t, spans[names[i-1]].SpanContext.SpanID(), s.Parent.SpanID(), "%s follows %s", name, names[i-1])
			}
			if i > 0 && i%2 == 0 { // a tier attempt
				require.Len(t, s.Links, 1, name)
				require.Equal(t, first.SpanContext.SpanID(), s.Links[0].SpanContext.SpanID(), "%s links to the first delivery", name)
				require.True(t, hasAttr(s, "retry_kafka.attempt", int64(i/2+1)), "%s: attempt", name)
				require.True(t, hasAttr(s, "retry_kafka.tier", int64(i/2)), "%s: tier", name)
			}
		}

		letter := r.deadLetterOf(msg.UUID)
		require.NotNil(t, letter)
		sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier(letter.Metadata)))
		require.Equal(t, producer.SpanContext().TraceID(), sc.TraceID(), "the dead letter is in the producer's trace")
		require.Equal(t, spans[names[len(names)-1]].SpanContext.SpanID(), sc.SpanID())
		require.Equal(t, first.SpanContext.SpanID().String(), instrumentSpanID(letter.Metadata.Get(tiered.KeyFirstSpan)))
	})
}

func hasAttr(s tracetest.SpanStub, key string, value any) bool {
	for _, kv := range s.Attributes {
		if kv.Key == attribute.Key(key) {
			return kv.Value.AsInterface() == value
		}
	}
	return false
}

// instrumentSpanID returns the span ID of a traceparent value.
func instrumentSpanID(traceparent string) string {
	sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": traceparent}))
	return sc.SpanID().String()
}

// A Redis stream entry that is not a Watermill message is dead-lettered by
// the backend and counted under reason "undecodable". (Redis only: the
// Kafka backend decodes every record.)
func TestMetrics_undecodableEntryOnRedis(t *testing.T) {
	t.Parallel()
	redisBackend := backends()[2]
	require.Equal(t, "redis", redisBackend.Name)
	r := newRig(t, redisBackend, quick).handle("billing", planned).observe()
	r.start()
	client := redis.NewClient(&redis.Options{Addr: redistest.Addr(t)})
	t.Cleanup(func() { _ = client.Close() })
	_, err := client.XAdd(context.Background(), &redis.XAddArgs{Stream: r.topic, Values: map[string]any{"foo": "bar"}}).Result()
	require.NoError(t, err)
	ok := newMsg(keys[0], 0)
	r.publish(ok)
	r.waitOutcomes("billing", []string{ok.UUID})
	r.waitUntil("the undecodable entry counted", func([]call, []deadLetter) bool {
		return instrumenttest.Gather(t, r.metrics).Value("retry_kafka_dead_letters_total", "reason", "undecodable") == 1
	})
	_, dead := r.snapshot()
	require.Len(t, dead, 1, "the entry is in the dead-letter topic")
	got := instrumenttest.Gather(t, r.metrics).NonZero("retry_kafka_")
	delete(got, "retry_kafka_dlq_oldest_seconds{handler_name=billing}")
	require.Equal(t, map[string]float64{
		"retry_kafka_dead_letters_total{handler_name=billing,reason=undecodable}": 1,
		"retry_kafka_successes_total{handler_name=billing,tier=0}":                1,
		"retry_kafka_dlq_messages{handler_name=billing}":                          1,
	}, got)
}
