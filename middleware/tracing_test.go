package middleware_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// newTracing returns a tracer provider that records every span, ended, in
// the returned exporter.
func newTracing(t *testing.T) (*sdktrace.TracerProvider, *tracetest.InMemoryExporter) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp, exp
}

// producedIn returns a message published from within a producer's span,
// carrying the span's W3C trace context, as an OpenTelemetry-instrumented
// producer writes it.
func producedIn(t *testing.T, tp trace.TracerProvider, uuid string) (*message.Message, trace.SpanContext) {
	ctx, span := tp.Tracer("producer").Start(context.Background(), "send orders", trace.WithSpanKind(trace.SpanKindProducer))
	defer span.End()
	msg := message.NewMessage(uuid, []byte("payload"))
	propagation.TraceContext{}.Inject(ctx, propagation.MapCarrier(msg.Metadata))
	require.NotEmpty(t, msg.Metadata.Get("traceparent"))
	return msg, span.SpanContext()
}

// waitSpans waits until the exporter holds n spans, and returns them by
// name.
func waitSpans(t *testing.T, exp *tracetest.InMemoryExporter, n int) map[string]tracetest.SpanStub {
	t.Helper()
	require.Eventually(t, func() bool { return len(exp.GetSpans()) >= n }, waitFor, tick)
	require.Never(t, func() bool { return len(exp.GetSpans()) > n }, 50*time.Millisecond, tick, "more spans than expected")
	byName := map[string]tracetest.SpanStub{}
	for _, s := range exp.GetSpans() {
		require.NotContains(t, byName, s.Name, "two spans named %s", s.Name)
		byName[s.Name] = s
	}
	return byName
}

func attrs(s tracetest.SpanStub) map[attribute.Key]any {
	out := map[attribute.Key]any{}
	for _, kv := range s.Attributes {
		out[kv.Key] = kv.Value.AsInterface()
	}
	return out
}

// A message that fails once and succeeds from tier 1 stays in its
// producer's trace: the attempt on the handler's own topic is a child of
// the producer's span, the tier copy's publish a child of that attempt,
// and the tier attempt a child of the publish, linked to the first
// delivery, each with the messaging attributes plus attempt and tier.
func TestRetry_tracesEveryHopInTheProducersTrace(t *testing.T) {
	tp, exp := newTracing(t)
	rg := newRig(t, rigConfig{
		policy:  tiered.Policy{Delays: []time.Duration{time.Minute}, MaxAttempts: 2},
		handler: failOn(errBoom, "orders"),
		tiers:   true,
		tracing: tp,
	})
	msg, producer := producedIn(t, tp, "m1")
	rg.publish(t, msg)

	spans := waitSpans(t, exp, 4) // the producer's and our three
	first, send, retry := spans["process orders"], spans["send "+tier1], spans["process "+tier1]
	for _, s := range []tracetest.SpanStub{first, send, retry} {
		require.Equal(t, producer.TraceID(), s.SpanContext.TraceID(), "%s is in the producer's trace", s.Name)
		require.Equal(t, "github.com/retry-kafka/retry-kafka", s.InstrumentationScope.Name)
	}
	require.Equal(t, producer.SpanID(), first.Parent.SpanID())
	require.Equal(t, first.SpanContext.SpanID(), send.Parent.SpanID())
	require.Equal(t, send.SpanContext.SpanID(), retry.Parent.SpanID())
	require.Empty(t, first.Links)
	require.Len(t, retry.Links, 1)
	require.Equal(t, first.SpanContext.SpanID(), retry.Links[0].SpanContext.SpanID(), "the tier attempt links to the first delivery")

	require.Equal(t, trace.SpanKindConsumer, first.SpanKind)
	require.Equal(t, trace.SpanKindProducer, send.SpanKind)
	require.Equal(t, trace.SpanKindConsumer, retry.SpanKind)
	require.Equal(t, map[attribute.Key]any{
		"messaging.system": "gochannel", "messaging.destination.name": "orders",
		"messaging.operation.name": "process", "messaging.operation.type": "process", "messaging.message.id": "m1",
		"retry_kafka.handler": "billing", "retry_kafka.attempt": int64(1), "retry_kafka.tier": int64(0),
	}, attrs(first))
	require.Equal(t, map[attribute.Key]any{
		"messaging.system": "gochannel", "messaging.destination.name": tier1,
		"messaging.operation.name": "send", "messaging.operation.type": "send", "messaging.message.id": "m1",
		"retry_kafka.handler": "billing", "retry_kafka.attempt": int64(1), "retry_kafka.tier": int64(1),
		"retry_kafka.publish_tries": int64(1),
	}, attrs(send))
	require.Equal(t, map[attribute.Key]any{
		"messaging.system": "gochannel", "messaging.destination.name": tier1,
		"messaging.operation.name": "process", "messaging.operation.type": "process", "messaging.message.id": "m1",
		"retry_kafka.handler": "billing", "retry_kafka.attempt": int64(2), "retry_kafka.tier": int64(1),
	}, attrs(retry))

	require.Equal(t, codes.Error, first.Status.Code)
	require.Equal(t, "boom", first.Status.Description)
	require.Equal(t, codes.Unset, send.Status.Code)
	require.Equal(t, codes.Unset, retry.Status.Code)

	// The copy carries the publish span's trace context and the first
	// delivery's span.
	copied := rg.pub.on(tier1)[0].msg
	require.Equal(t, send.SpanContext.SpanID(), spanContextOf(copied).SpanID())
	require.Contains(t, copied.Metadata.Get(tiered.KeyFirstSpan), first.SpanContext.SpanID().String())
}

// The dead letter belongs to the trace of the original message too, and so
// does the stub that stands in for a copy that cannot be published.
func TestRetry_deadLetterIsInTheProducersTrace(t *testing.T) {
	tests := []struct {
		name      string
		handler   message.NoPublishHandlerFunc
		tooLarge  map[string]bool
		wantSpans []string // ours, beside the producer's
		failed    string   // the send span that fails
	}{
		{
			name:      "exhausted",
			handler:   failOn(errBoom, "orders", tier1),
			wantSpans: []string{"process orders", "send " + tier1, "process " + tier1, "send " + dlq},
		},
		{
			name:      "the tier copy cannot be published: its stub",
			handler:   failOn(errBoom, "orders"),
			tooLarge:  map[string]bool{tier1: true},
			wantSpans: []string{"process orders", "send " + tier1, "send " + dlq},
			failed:    "send " + tier1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, exp := newTracing(t)
			rg := newRig(t, rigConfig{
				policy:   tiered.Policy{Delays: []time.Duration{time.Minute}, MaxAttempts: 2},
				handler:  tt.handler,
				tooLarge: tt.tooLarge,
				tiers:    true,
				tracing:  tp,
			})
			msg, producer := producedIn(t, tp, "m1")
			rg.publish(t, msg)

			spans := waitSpans(t, exp, 1+len(tt.wantSpans))
			for _, name := range tt.wantSpans {
				require.Contains(t, spans, name)
				require.Equal(t, producer.TraceID(), spans[name].SpanContext.TraceID(), "%s is in the producer's trace", name)
			}
			if tt.failed != "" {
				require.Equal(t, codes.Error, spans[tt.failed].Status.Code)
				require.Equal(t, spans[tt.failed].SpanContext.SpanID(), spans["send "+dlq].Parent.SpanID(), "the stub's publish follows the failed one")
			}
			require.Equal(t, int64(0), attrs(spans["send "+dlq])["retry_kafka.tier"])

			dead := rg.pub.on(dlq)
			require.Len(t, dead, 1)
			require.Equal(t, producer.TraceID(), spanContextOf(dead[0].msg).TraceID())
			require.Equal(t, spans["send "+dlq].SpanContext.SpanID(), spanContextOf(dead[0].msg).SpanID())
		})
	}
}

// A span that a tracing middleware outside ours put in the message's
// context is the parent of the attempt; a first-delivery span that a
// producer forged on the handler's own topic is ignored.
func TestRetry_tracingFollowsTheContextAndIgnoresForgedKeys(t *testing.T) {
	tp, exp := newTracing(t)
	outer := func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			if message.SubscribeTopicFromCtx(msg.Context()) != "orders" {
				return h(msg)
			}
			ctx, span := tp.Tracer("app").Start(msg.Context(), "outer")
			defer span.End()
			msg.SetContext(ctx)
			return h(msg)
		}
	}
	rg := newRig(t, rigConfig{
		policy:  tiered.Policy{Delays: []time.Duration{time.Minute}, MaxAttempts: 2},
		handler: failOn(errBoom, "orders"),
		before:  []message.HandlerMiddleware{outer},
		tiers:   true,
		tracing: tp,
	})
	msg := message.NewMessage("m1", []byte("payload"))
	forged := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	msg.Metadata.Set(tiered.KeyFirstSpan, forged)
	rg.publish(t, msg)

	spans := waitSpans(t, exp, 4)
	first := spans["process orders"]
	require.Equal(t, spans["outer"].SpanContext.SpanID(), first.Parent.SpanID())
	require.Equal(t, spans["outer"].SpanContext.TraceID(), spans["process "+tier1].SpanContext.TraceID())
	require.Len(t, spans["process "+tier1].Links, 1)
	require.Equal(t, first.SpanContext.SpanID(), spans["process "+tier1].Links[0].SpanContext.SpanID())
	copied := rg.pub.on(tier1)[0].msg
	require.NotEqual(t, forged, copied.Metadata.Get(tiered.KeyFirstSpan))
	require.True(t, strings.Contains(copied.Metadata.Get(tiered.KeyFirstSpan), first.SpanContext.SpanID().String()))
}

// Without a TracerProvider the middleware makes no span, and the trace
// context a message carries is copied to its next hop as it is.
func TestRetry_noTracingCarriesTheTraceContextAsIs(t *testing.T) {
	tp, exp := newTracing(t)
	rg := newRig(t, rigConfig{
		policy:  tiered.Policy{Delays: []time.Duration{time.Minute}},
		handler: failOn(errBoom, "orders"),
	})
	msg, producer := producedIn(t, tp, "m1")
	traceparent := msg.Metadata.Get("traceparent")
	rg.publish(t, msg)

	require.Eventually(t, func() bool { return len(rg.pub.on(tier1)) == 1 }, waitFor, tick)
	require.Len(t, exp.GetSpans(), 1, "only the producer's span")
	copied := rg.pub.on(tier1)[0].msg
	require.Equal(t, traceparent, copied.Metadata.Get("traceparent"))
	require.Equal(t, producer.SpanID(), spanContextOf(copied).SpanID())
	require.Empty(t, copied.Metadata.Get(tiered.KeyFirstSpan))
}

// spanContextOf reads the W3C trace context of msg's metadata.
func spanContextOf(msg *message.Message) trace.SpanContext {
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier(msg.Metadata))
	return trace.SpanContextFromContext(ctx)
}

// A sampler that does not follow the parent records attempts whose
// parent trace is not sampled. The happy path reads no clock for such
// attempts until one was recorded; from then on their spans are
// back-dated to when the handler began, as in a trace of their own.
func TestRetry_unsampledParentBackdatedOnceItsSpansRecord(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	began := map[string]time.Time{}
	var mu sync.Mutex
	rg := newRig(t, rigConfig{
		policy: tiered.Policy{Delays: []time.Duration{time.Minute}},
		handler: func(msg *message.Message) error {
			mu.Lock()
			began[msg.UUID] = time.Now()
			mu.Unlock()
			return errBoom
		},
		tracing: tp,
	})
	for i, uuid := range []string{"m1", "m2", "m3"} {
		msg := message.NewMessage(uuid, []byte("payload"))
		msg.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
		rg.publish(t, msg)
		require.Eventually(t, func() bool { return len(rg.pub.on(tier1)) == i+1 }, waitFor, tick)
	}

	starts := map[string]time.Time{}
	for _, s := range exp.GetSpans() {
		if s.Name == "process orders" {
			require.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", s.Parent.TraceID().String(), "a child of the unsampled parent")
			starts[attrs(s)["messaging.message.id"].(string)] = s.StartTime
		}
	}
	require.Len(t, starts, 3, "every failed attempt has its span")
	mu.Lock()
	defer mu.Unlock()
	for _, uuid := range []string{"m2", "m3"} {
		require.False(t, starts[uuid].After(began[uuid]), "%s back-dated to when the handler began", uuid)
	}
}

// Outside a recorded trace, attempt 1's span is made only when it fails,
// back-dated to when the handler began: the happy path of a trace nobody
// records costs no span. In a recorded trace it is made up front, success
// or not, with the handler's spans as its children.
func TestRetry_firstAttemptSpanOnlyWhenRecordedOrFailed(t *testing.T) {
	unsampled := func(msg *message.Message) {
		msg.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
	}
	tests := []struct {
		name      string
		prepare   func(t *testing.T, tp trace.TracerProvider, msg *message.Message)
		fail      bool
		wantSpans []string // ours, beside the producer's
	}{
		{name: "no trace context, success", wantSpans: nil},
		{name: "no trace context, failure", fail: true, wantSpans: []string{"process orders", "send " + tier1}},
		{name: "unsampled parent, failure", prepare: func(_ *testing.T, _ trace.TracerProvider, msg *message.Message) { unsampled(msg) }, fail: true},
		{name: "sampled parent, success", prepare: func(t *testing.T, tp trace.TracerProvider, msg *message.Message) {
			ctx, span := tp.Tracer("producer").Start(context.Background(), "send orders")
			defer span.End()
			propagation.TraceContext{}.Inject(ctx, propagation.MapCarrier(msg.Metadata))
		}, wantSpans: []string{"send orders", "process orders", "handler's own"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, exp := newTracing(t)
			var began time.Time
			rg := newRig(t, rigConfig{
				policy: tiered.Policy{Delays: []time.Duration{time.Minute}},
				handler: func(msg *message.Message) error {
					began = time.Now()
					_, span := tp.Tracer("app").Start(msg.Context(), "handler's own")
					span.End()
					if tt.fail {
						return errBoom
					}
					return nil
				},
				tracing: tp,
			})
			msg := message.NewMessage("m1", []byte("payload"))
			if tt.prepare != nil {
				tt.prepare(t, tp, msg)
			}
			rg.publish(t, msg)
			require.Eventually(t, func() bool { return rg.settled("orders") }, waitFor, tick)
			if tt.fail {
				require.Eventually(t, func() bool { return len(rg.pub.on(tier1)) == 1 }, waitFor, tick)
			}

			var names []string
			for _, s := range exp.GetSpans() {
				if s.Name != "handler's own" || tt.name == "sampled parent, success" {
					names = append(names, s.Name)
				}
			}
			require.ElementsMatch(t, tt.wantSpans, names)
			spans := map[string]tracetest.SpanStub{}
			for _, s := range exp.GetSpans() {
				spans[s.Name] = s
			}
			switch tt.name {
			case "no trace context, failure":
				first := spans["process orders"]
				require.False(t, first.Parent.IsValid(), "a root span")
				require.False(t, first.StartTime.After(began), "back-dated to when the handler began")
				require.Equal(t, codes.Error, first.Status.Code)
				require.Equal(t, first.SpanContext.SpanID(), spans["send "+tier1].Parent.SpanID())
			case "unsampled parent, failure":
				copied := spanContextOf(rg.pub.on(tier1)[0].msg)
				require.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", copied.TraceID().String(), "the copy stays in the trace")
				require.False(t, copied.IsSampled(), "and it stays unsampled")
			case "sampled parent, success":
				require.Equal(t, spans["process orders"].SpanContext.SpanID(), spans["handler's own"].Parent.SpanID())
			}
		})
	}
}
