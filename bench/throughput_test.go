package bench_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// rounds of each configuration are measured, interleaved; the median is
// reported.
const rounds = 5

// measureLimit bounds one throughput round.
const measureLimit = 60 * time.Second

// roundSize is the number of messages of one throughput round on a
// backend, without failures and with every message failing once: a round
// takes 0.1 to 1 second on a 2-core machine. (The in-memory GoChannel
// keeps every message published, so its rounds stay small.)
func roundSize(backend string) (happy, retry int) {
	switch backend {
	case "kafka":
		return 50000, 5000
	case "redis":
		return 5000, 2000
	}
	return 20000, 10000
}

// series collects one configuration's rounds.
type series struct {
	rates []float64       // msg/s
	cpu   []time.Duration // CPU time per message
}

func (s *series) add(n int, d time.Duration, r *round) {
	s.rates = append(s.rates, rate(int64(n), d))
	s.cpu = append(s.cpu, r.cpu/time.Duration(n))
}

func (s *series) rate() float64 { return median(s.rates) }

func (s *series) cpuPerMsg() float64 {
	xs := make([]float64, len(s.cpu))
	for i, c := range s.cpu {
		xs[i] = float64(c)
	}
	return median(xs)
}

func (s *series) String() string {
	xs := slices.Clone(s.rates)
	slices.Sort(xs)
	return fmt.Sprintf("%.0f msg/s (median; range %.0f-%.0f)", median(xs), xs[0], xs[len(xs)-1])
}

// interleave runs each configuration rounds times, rotating the order.
func interleave(configs ...func()) { interleaveN(rounds, configs...) }

// interleaveN runs each configuration n times, rotating the order.
func interleaveN(n int, configs ...func()) {
	for i := range n {
		for j := range configs {
			configs[(i+j)%len(configs)]()
		}
	}
}

// BenchmarkThroughput is figures 1 and 2: a handler's throughput with
// router.New + AddConsumerHandler against the same handler on a plain
// Watermill router (happy path, no failures), and with every message
// failing once and succeeding from a 1ms first tier (retry path, whose
// physical limit is 0.5: every message is handled twice and published
// once more).
//
// Rounds of the three configurations alternate on routers that stay up;
// each round pre-publishes N messages while the handler is held at a gate,
// then times N successes from the gate's opening. The handler does no
// work, so the ratios show the whole overhead. happy-cpu-ratio compares
// the process's CPU time per message (plain / tiered), which other
// processes on the machine disturb less than wall time.
func BenchmarkThroughput(b *testing.B) {
	forEachBackend(b, func(b *testing.B, backend string) {
		rg := openRig(b, backend)
		n, nr := roundSize(backend)
		plainTopic, tieredTopic := rg.topic("plain"), rg.topic("tiered")
		pp, tp := newProbe(plainTopic), newProbe(tieredTopic)
		startPlain(b, rg, "plain-"+shortID(), plainTopic, pp.handle)
		startTiered(b, rg, "tiered-"+shortID(), tieredTopic, tiered.Policy{Delays: []time.Duration{time.Millisecond}, MaxAttempts: 2}, tp.handle)
		pp.warmUp(b, rg, plainTopic, false)
		tp.warmUp(b, rg, tieredTopic, true) // through the tier: every subscription joined

		var plain, happy, retry series
		var retryMain []float64
		interleave(
			func() {
				d, r, ok := pp.measure(b, rg, plainTopic, newMessages(n, never), int64(n), 0, measureLimit)
				mustFinish(b, ok, "plain")
				plain.add(n, d, r)
			},
			func() {
				d, r, ok := tp.measure(b, rg, tieredTopic, newMessages(n, never), int64(n), 0, measureLimit)
				mustFinish(b, ok, "happy")
				happy.add(n, d, r)
			},
			func() {
				d, r, ok := tp.measure(b, rg, tieredTopic, newMessages(nr, always), int64(nr), 0, measureLimit)
				mustFinish(b, ok, "retry")
				retry.add(nr, d, r)
				retryMain = append(retryMain, rate(int64(nr), r.mainTime()))
			},
		)
		p := plain.rate()
		b.ReportMetric(float64(n), "msgs")
		b.ReportMetric(float64(nr), "retry-msgs")
		b.ReportMetric(p, "plain-msg/s")
		b.ReportMetric(happy.rate(), "happy-msg/s")
		b.ReportMetric(happy.rate()/p, "happy-ratio")
		b.ReportMetric(plain.cpuPerMsg()/happy.cpuPerMsg(), "happy-cpu-ratio")
		b.ReportMetric(retry.rate(), "retry-msg/s")
		b.ReportMetric(retry.rate()/p, "retry-ratio")
		b.ReportMetric(median(retryMain), "retry-main-msg/s")
		logf(b, "%s, %d messages a round (retry: %d), %d rounds: plain %v; happy %v; retry %v (main topic alone: %.0f msg/s); CPU per message: plain %v, happy %v, retry %v",
			backend, n, nr, rounds, &plain, &happy, &retry, median(retryMain),
			time.Duration(plain.cpuPerMsg()), time.Duration(happy.cpuPerMsg()), time.Duration(retry.cpuPerMsg()))
	})
}

// BenchmarkHeadOfLine is figure 4: main-topic throughput while 10% of the
// messages fail into a 30s tier, against no failures on the same router;
// and, beside it, Watermill's middleware.Retry (scaled down to a 3s
// back-off, one retry) on a plain router with the same load, against the
// plain router with no failures. Only the main topic's completion is
// timed: the first call of every message. The 30s tier is not waited for;
// Watermill's Retry is stopped after retryCap.
//
// Moving a failed message off the main topic costs one broker-confirmed
// publish, made before the original is acked (guarantee 1). pub-us is that
// publish's latency alone (median of 1,000 sequential publishes), and the
// hol-1ms-ratio rows repeat the tiered comparison with a handler that
// works 1ms per message (sleeps, as a handler waits on a database).
func BenchmarkHeadOfLine(b *testing.B) {
	const (
		tierDelay = 30 * time.Second
		backoff   = 3 * time.Second
		retryCap  = 7 * time.Second
		work      = time.Millisecond
		workN     = 500
	)
	tenth := func(i int) bool { return i%10 == 9 }
	policy := tiered.Policy{Delays: []time.Duration{tierDelay}, MaxAttempts: 2}
	forEachBackend(b, func(b *testing.B, backend string) {
		rg := openRig(b, backend)
		n, _ := roundSize(backend)
		plainTopic, tieredTopic, workTopic, wmTopic := rg.topic("plain"), rg.topic("tiered"), rg.topic("work"), rg.topic("wmretry")
		pp, tp, kp, wp := newProbe(plainTopic), newProbe(tieredTopic), newProbe(workTopic), newProbe(wmTopic)
		kp.work = work
		startPlain(b, rg, "plain-"+shortID(), plainTopic, pp.handle)
		startTiered(b, rg, "tiered-"+shortID(), tieredTopic, policy, tp.handle)
		startTiered(b, rg, "work-"+shortID(), workTopic, policy, kp.handle)
		startPlain(b, rg, "wmretry-"+shortID(), wmTopic, wp.handle, wmiddleware.Retry{
			MaxRetries:      1,
			InitialInterval: backoff,
			MaxInterval:     backoff,
			Multiplier:      1,
		}.Middleware)
		pp.warmUp(b, rg, plainTopic, false)
		tp.warmUp(b, rg, tieredTopic, false)
		kp.warmUp(b, rg, workTopic, false)
		wp.warmUp(b, rg, wmTopic, false)

		var plain, clean, failing, workClean, workFailing series
		run := func(p *probe, topic string, n int, fail func(int) bool, s *series, what string) func() {
			return func() {
				d, r, ok := p.measure(b, rg, topic, newMessages(n, fail), 0, int64(n), measureLimit)
				mustFinish(b, ok, what)
				s.add(n, d, r)
			}
		}
		interleave(
			run(pp, plainTopic, n, never, &plain, "plain"),
			run(tp, tieredTopic, n, never, &clean, "tiered, no failures"),
			run(tp, tieredTopic, n, tenth, &failing, "tiered, 10% failing"),
			run(kp, workTopic, workN, never, &workClean, "tiered with work, no failures"),
			run(kp, workTopic, workN, tenth, &workFailing, "tiered with work, 10% failing"),
		)
		d, r, finished := wp.measure(b, rg, wmTopic, newMessages(n, tenth), 0, int64(n), retryCap)
		wmDone := r.main.Load()
		wm := rate(wmDone, d)
		pub := publishLatency(b, rg, 1000)

		b.ReportMetric(float64(n), "msgs")
		b.ReportMetric(clean.rate(), "nofail-msg/s")
		b.ReportMetric(failing.rate(), "fail10-msg/s")
		b.ReportMetric(failing.rate()/clean.rate(), "hol-ratio")
		b.ReportMetric(workFailing.rate()/workClean.rate(), "hol-1ms-ratio")
		b.ReportMetric(float64(pub)/float64(time.Microsecond), "pub-us")
		b.ReportMetric(plain.rate(), "plain-msg/s")
		b.ReportMetric(wm, "wmretry-msg/s")
		b.ReportMetric(wm/plain.rate(), "wmretry-ratio")
		logf(b, "%s, %d messages a round, %d rounds: tiered no failures %v; tiered 10%% failing %v; "+
			"with 1ms of work (%d messages): no failures %v, 10%% failing %v; confirmed publish %v; plain %v; "+
			"watermill Retry (%v back-off): %d of %d main-topic messages in %v (finished: %v)",
			backend, n, rounds, &clean, &failing, workN, &workClean, &workFailing, pub, &plain,
			backoff, wmDone, n, d.Round(time.Millisecond), finished)
	})
}

// publishLatency is the median time of one broker-confirmed publish
// through the backend's publisher, over n sequential publishes.
func publishLatency(b *testing.B, rg *rig, n int) time.Duration {
	b.Helper()
	topic := rg.topic("publish")
	pub := rg.backend.Publisher()
	ds := make([]time.Duration, n)
	for i, msg := range newMessages(n, nil) {
		start := time.Now()
		if err := pub.Publish(topic, msg); err != nil {
			b.Fatal(err)
		}
		ds[i] = time.Since(start)
	}
	slices.Sort(ds)
	return percentile(ds, 0.5)
}

func mustFinish(b *testing.B, ok bool, what string) {
	b.Helper()
	if !ok {
		b.Fatalf("%s round did not finish within %v", what, measureLimit)
	}
}
