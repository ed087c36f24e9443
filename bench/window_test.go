package bench_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// windows are the kafka.Config.PartitionWindow values BenchmarkWindow
// compares.
var windows = []int{16, 64, 256, 1024}

// BenchmarkWindow (Kafka only) chose kafka.DefaultPartitionWindow: for each
// window, the main topic's throughput with 10% of the messages failing
// into a 30s tier (fail10), and with every message failing once into a 1ms
// tier (retry: twice the handling plus one copy per message), as ratios
// against plain watermill-kafka with no failures, interleaved in one run. A
// window too small makes the partition wait for copies; past the point
// where copies keep up, a larger one only allows more duplicates after a
// crash.
func BenchmarkWindow(b *testing.B) {
	for _, name := range backendNames() {
		if name != "kafka" {
			continue
		}
		b.Run(name, func(b *testing.B) {
			brokers := kafkatest.Start(b).Brokers
			rg := kafkaRig(b, brokers, nil)
			n, nr := roundSize("kafka")
			plainTopic := rg.topic("plain")
			pp := newProbe(plainTopic)
			startPlain(b, rg, "plain-"+shortID(), plainTopic, pp.handle)
			pp.warmUp(b, rg, plainTopic, false)

			type setup struct {
				window               int
				holTopic, retryTopic string
				hol, retry           *probe
				holS, retryS         series
			}
			var setups []*setup
			for _, w := range windows {
				cfg := kafkatest.Env{Brokers: brokers}.Config()
				cfg.PartitionWindow = w
				wr := *rg
				wr.backend = kafkatest.New(b, cfg)
				s := &setup{window: w, holTopic: rg.topic(fmt.Sprintf("hol%d", w)), retryTopic: rg.topic(fmt.Sprintf("retry%d", w))}
				s.hol, s.retry = newProbe(s.holTopic), newProbe(s.retryTopic)
				startTiered(b, &wr, "hol-"+shortID(), s.holTopic, tiered.Policy{Delays: []time.Duration{30 * time.Second}, MaxAttempts: 2}, s.hol.handle)
				startTiered(b, &wr, "retry-"+shortID(), s.retryTopic, tiered.Policy{Delays: []time.Duration{time.Millisecond}, MaxAttempts: 2}, s.retry.handle)
				s.hol.warmUp(b, rg, s.holTopic, false)
				s.retry.warmUp(b, rg, s.retryTopic, true)
				setups = append(setups, s)
			}
			tenth := func(i int) bool { return i%10 == 9 }
			var plain series
			configs := []func(){func() {
				d, r, ok := pp.measure(b, rg, plainTopic, newMessages(n, never), int64(n), 0, measureLimit)
				mustFinish(b, ok, "plain")
				plain.add(n, d, r)
			}}
			for _, s := range setups {
				configs = append(configs, func() {
					d, r, ok := s.hol.measure(b, rg, s.holTopic, newMessages(n, tenth), 0, int64(n), measureLimit)
					mustFinish(b, ok, "fail10")
					s.holS.add(n, d, r)
				}, func() {
					d, r, ok := s.retry.measure(b, rg, s.retryTopic, newMessages(nr, always), int64(nr), 0, measureLimit)
					mustFinish(b, ok, "retry")
					s.retryS.add(nr, d, r)
				})
			}
			interleave(configs...)
			p := plain.rate()
			b.ReportMetric(p, "plain-msg/s")
			line := fmt.Sprintf("plain %v", &plain)
			for _, s := range setups {
				b.ReportMetric(s.holS.rate()/p, fmt.Sprintf("w%d-fail10-ratio", s.window))
				b.ReportMetric(s.retryS.rate()/p, fmt.Sprintf("w%d-retry-ratio", s.window))
				line += fmt.Sprintf("; window %d: 10%% failing %v, retry %v", s.window, &s.holS, &s.retryS)
			}
			b.ReportMetric(kafka.DefaultPartitionWindow, "default-window")
			logf(b, "%s", line)
		})
	}
}
