package bench_test

import (
	"slices"
	"testing"
	"time"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// BenchmarkDelayPrecision is figure 3: how late tier deliveries reach the
// handler. For each tier delivery the handler records time.Now() at entry
// minus the due time the message carries (tiered.DueAt, stamped at
// publish, in milliseconds rounded up). Early deliveries (a negative
// lateness) must be 0.
//
//   - Under load: 1,000 messages are pre-published to the main topic and
//     all fail once into a 200ms tier. They enter the tier as fast as the
//     main topic moves them (main-msg/s); the tier hands them on one after
//     the other, so when the tier's pipeline is slower than the burst
//     (tier-msg/s, from first to last tier delivery) the later ones queue
//     behind the earlier ones, and that queueing is part of the lateness.
//   - Trickle: 100 messages, one every 2ms, the same way: the hold alone.
func BenchmarkDelayPrecision(b *testing.B) {
	const (
		n      = 1000
		delay  = 200 * time.Millisecond
		slowN  = 100
		slowAt = 2 * time.Millisecond
	)
	forEachBackend(b, func(b *testing.B, backend string) {
		rg := openRig(b, backend)
		topic := rg.topic("precision")
		p := newProbe(topic)
		startTiered(b, rg, "precision-"+shortID(), topic, tiered.Policy{Delays: []time.Duration{delay}, MaxAttempts: 2}, p.handle)
		p.warmUp(b, rg, topic, true)

		d, r, ok := p.measure(b, rg, topic, newMessages(n, always), n, 0, measureLimit)
		mustFinish(b, ok, "precision")
		late, at, early := r.tierDeliveries()
		if len(late) != n {
			b.Fatalf("%d tier deliveries, want %d", len(late), n)
		}
		tierRate := rate(n-1, at[len(at)-1].Sub(at[0]))

		slow := p.trickle(b, rg, topic, slowN, slowAt, always)
		slowLate, _, slowEarly := slow.tierDeliveries()

		b.ReportMetric(n, "msgs")
		b.ReportMetric(ms(percentile(late, 0.50)), "p50-late-ms")
		b.ReportMetric(ms(percentile(late, 0.99)), "p99-late-ms")
		b.ReportMetric(ms(late[len(late)-1]), "max-late-ms")
		b.ReportMetric(float64(early+slowEarly), "early")
		b.ReportMetric(rate(n, r.mainTime()), "main-msg/s")
		b.ReportMetric(tierRate, "tier-msg/s")
		b.ReportMetric(ms(percentile(slowLate, 0.50)), "trickle-p50-ms")
		b.ReportMetric(ms(percentile(slowLate, 0.99)), "trickle-p99-ms")
		logf(b, "%s: %d messages through a %v tier in %v; lateness min %v p50 %v p90 %v p99 %v max %v; early %d; "+
			"trickle of %d, %v apart: min %v p50 %v p99 %v max %v, early %d",
			backend, n, delay, d.Round(time.Millisecond), late[0], percentile(late, 0.5), percentile(late, 0.9),
			percentile(late, 0.99), late[len(late)-1], early,
			slowN, slowAt, slowLate[0], percentile(slowLate, 0.5), percentile(slowLate, 0.99), slowLate[len(slowLate)-1], slowEarly)
	})
}

// tierDeliveries returns the round's tier deliveries: lateness sorted,
// entry times sorted, and how many were early.
func (r *round) tierDeliveries() ([]time.Duration, []time.Time, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	late := slices.Clone(r.late)
	slices.Sort(late)
	at := slices.Clone(r.tierAt)
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	return late, at, r.early
}
