package bench_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/retry-kafka/retry-kafka/middleware"
	"github.com/retry-kafka/retry-kafka/tiered"
)

type ctxKey int

// nopPublisher accepts everything.
type nopPublisher struct{}

func (nopPublisher) Publish(string, ...*message.Message) error { return nil }
func (nopPublisher) Close() error                              { return nil }

// BenchmarkMiddleware is the CPU cost of the retry middleware itself on
// the happy path, with no broker: a handler call through
// middleware.Retry against the bare call, on a message whose context
// carries the topic as Watermill's router sets it. It explains the
// happy-path ratios without the brokers' noise.
func BenchmarkMiddleware(b *testing.B) {
	newRetry := func(reg prometheus.Registerer, tp trace.TracerProvider) *middleware.Retry {
		retry, err := middleware.NewRetry(middleware.Config{
			Publisher:      nopPublisher{},
			Policy:         tiered.Policy{Delays: []time.Duration{10 * time.Second, time.Minute}},
			Topic:          "orders",
			Handler:        "billing",
			Registerer:     reg,
			TracerProvider: tp,
		}, nil)
		if err != nil {
			b.Fatal(err)
		}
		return retry
	}
	h := func(*message.Message) ([]*message.Message, error) { return nil, nil }
	wrapped := newRetry(nil, nil).Middleware(h)
	withMetrics := newRetry(prometheus.NewRegistry(), nil).Middleware(h)
	traced := newRetry(prometheus.NewRegistry(), newTracing(b)).Middleware(h)
	msg := message.NewMessage(watermill.NewUUID(), make([]byte, payloadSize))
	// The router puts five values in the message context; the middleware
	// looks the topic up there to tell the main topic from tiers. The key
	// is Watermill's own and unexported, so here the lookup walks five
	// other values and misses: the same walk, and the same branch as on a
	// main topic.
	ctx := context.Background()
	for i := range 5 {
		ctx = context.WithValue(ctx, ctxKey(i), "v")
	}
	msg.SetContext(ctx)
	// Every message carries a traceparent, as in BenchmarkObservability:
	// the rows then differ by what the middleware does with it, not by
	// the size of the metadata it clears of forged retry keys.
	msg.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
	// A fixed number of calls per iteration, so that -benchtime 1x still
	// times enough calls.
	const calls = 1_000_000
	perCall := func(b *testing.B, f func()) {
		allocs := testing.AllocsPerRun(1000, f)
		start := time.Now()
		for range b.N {
			for range calls {
				f()
			}
		}
		b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N*calls), "ns/call")
		b.ReportMetric(allocs, "allocs/call")
	}
	b.Run("bare", func(b *testing.B) {
		perCall(b, func() { _, _ = h(msg) })
	})
	b.Run("retry", func(b *testing.B) {
		perCall(b, func() { _, _ = wrapped(msg) })
	})
	b.Run("retry+metrics", func(b *testing.B) {
		perCall(b, func() { _, _ = withMetrics(msg) })
	})
	// With tracing on, a message in a trace its producer did not sample
	// costs no span on the happy path; one in a sampled trace costs the
	// SDK's span. (The call sets the message's context to the span's;
	// the original is put back, as each delivery brings a fresh one.)
	sampled := message.NewMessage(watermill.NewUUID(), make([]byte, payloadSize))
	sampled.SetContext(ctx)
	sampled.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	b.Run("retry+metrics+traced-unsampled", func(b *testing.B) {
		perCall(b, func() { _, _ = traced(msg) })
	})
	b.Run("retry+metrics+traced-sampled", func(b *testing.B) {
		perCall(b, func() { _, _ = traced(sampled); sampled.SetContext(ctx) })
	})
	// The same on a new goroutine per call, as Watermill's router runs
	// each message: a sampled trace's span also grows the goroutine's
	// small stack. CPU time per call (the process's, with the goroutine's
	// start and the SDK's span processor).
	onGoroutine := func(b *testing.B, f func(*message.Message), m *message.Message) {
		const calls = 200_000
		var wg sync.WaitGroup
		cpu0 := cpuTime()
		for range b.N {
			for range calls {
				wg.Add(1)
				go func() { defer wg.Done(); f(m) }()
				wg.Wait()
			}
		}
		b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N*calls), "ns/call")
	}
	b.Run("goroutine-retry+metrics", func(b *testing.B) {
		onGoroutine(b, func(m *message.Message) { _, _ = withMetrics(m) }, msg)
	})
	b.Run("goroutine-retry+metrics+traced-unsampled", func(b *testing.B) {
		onGoroutine(b, func(m *message.Message) { _, _ = traced(m) }, msg)
	})
	b.Run("goroutine-retry+metrics+traced-sampled", func(b *testing.B) {
		onGoroutine(b, func(m *message.Message) { _, _ = traced(m); m.SetContext(ctx) }, sampled)
	})
	// The failure path: what a failing message's handler goroutine spends
	// in the middleware (the copy for the next hop, its publish) before
	// the router acks it. On a pipelined backend this is what a failure
	// still costs the partition.
	failing := newRetry(nil, nil).Middleware(func(*message.Message) ([]*message.Message, error) { return nil, errFail })
	b.Run("fail", func(b *testing.B) {
		const calls = 100_000
		allocs := testing.AllocsPerRun(100, func() { _, _ = failing(msg) })
		start := time.Now()
		for range b.N {
			for range calls {
				_, _ = failing(msg)
			}
		}
		b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N*calls), "ns/call")
		b.ReportMetric(allocs, "allocs/call")
	})
	// The same on a new goroutine per call, and a tier attempt that
	// succeeds: both paths are deep enough to outgrow the goroutine's
	// starting stack, which the middleware grows where it is shallow.
	b.Run("goroutine-fail", func(b *testing.B) {
		onGoroutine(b, func(m *message.Message) { _, _ = failing(m) }, msg)
	})
	tracedFailing := newRetry(prometheus.NewRegistry(), newTracing(b)).Middleware(func(*message.Message) ([]*message.Message, error) { return nil, errFail })
	b.Run("goroutine-fail+metrics+traced-unsampled", func(b *testing.B) {
		onGoroutine(b, func(m *message.Message) { _, _ = tracedFailing(m); m.SetContext(ctx) }, msg)
	})
	tierMW, err := newRetry(nil, nil).TierMiddleware(1)
	if err != nil {
		b.Fatal(err)
	}
	tierOK := tierMW(h)
	onTier := message.NewMessage(watermill.NewUUID(), make([]byte, payloadSize))
	onTier.SetContext(ctx)
	now := time.Now()
	tiered.Info{Attempt: 1, Tier: 1, OriginalTopic: "orders", Handler: "billing", FirstFailure: now, LastFailure: now, LastError: "boom"}.Write(onTier.Metadata)
	onTier.Metadata.Set(tiered.KeyDueAt, strconv.FormatInt(now.UnixMilli(), 10))
	if _, err := tierOK(onTier); err != nil {
		b.Fatal(err)
	}
	b.Run("goroutine-tier", func(b *testing.B) {
		onGoroutine(b, func(m *message.Message) { _, _ = tierOK(m) }, onTier)
	})
	// A tier attempt with tracing on has its span whether or not its
	// trace is sampled (the span links it to the first delivery).
	tracedTierMW, err := newRetry(prometheus.NewRegistry(), newTracing(b)).TierMiddleware(1)
	if err != nil {
		b.Fatal(err)
	}
	tracedTierOK := tracedTierMW(h)
	for _, row := range []struct{ name, flags string }{{"unsampled", "00"}, {"sampled", "01"}} {
		m := onTier.Copy()
		m.SetContext(ctx)
		m.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-"+row.flags)
		b.Run("goroutine-tier+metrics+traced-"+row.name, func(b *testing.B) {
			onGoroutine(b, func(m *message.Message) { _, _ = tracedTierOK(m); m.SetContext(ctx) }, m)
		})
	}
}

// newTracing returns the OpenTelemetry SDK's tracer provider as an
// application would run it: parent-based sampling, spans batched to an
// exporter (here one that drops them).
func newTracing(b *testing.B) trace.TracerProvider {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp
}
