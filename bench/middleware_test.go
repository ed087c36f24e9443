package bench_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

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
	retry, err := middleware.NewRetry(middleware.Config{
		Publisher: nopPublisher{},
		Policy:    tiered.Policy{Delays: []time.Duration{10 * time.Second, time.Minute}},
		Topic:     "orders",
		Handler:   "billing",
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	h := func(*message.Message) ([]*message.Message, error) { return nil, nil }
	wrapped := retry.Middleware(h)
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
	// The failure path: what a failing message's handler goroutine spends
	// in the middleware (the copy for the next hop, its publish) before
	// the router acks it. On a pipelined backend this is what a failure
	// still costs the partition.
	failing := retry.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, errFail })
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
}
