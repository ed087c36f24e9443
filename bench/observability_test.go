package bench_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// BenchmarkObservability is the happy path's cost of metrics and tracing:
// the same tiered handler with neither ("off"); with metrics (a
// Prometheus registry); and with metrics and tracing (the OpenTelemetry
// SDK, parent-based sampling, spans batched to an exporter that drops
// them: "traced"). Every message carries the W3C trace context of a
// producer that samples 1% of its traces (the sampled flag on every
// hundredth message), as in production; "sampled" repeats "traced" with
// every message in a sampled trace. Rounds alternate as in
// BenchmarkThroughput; the ratios compare the process's CPU time per
// message (off / on: 1 is free).
func BenchmarkObservability(b *testing.B) {
	const obsRounds = 21
	policy := tiered.Policy{Delays: []time.Duration{time.Millisecond}, MaxAttempts: 2}
	forEachBackend(b, func(b *testing.B, backend string) {
		rg := openRig(b, backend)
		n, _ := roundSize(backend)
		withMetrics := func(c *router.Config) { c.Registerer = prometheus.NewRegistry() }
		withTracing := func(c *router.Config) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
			b.Cleanup(func() { _ = tp.Shutdown(b.Context()) })
			c.TracerProvider = tp
		}
		type config struct {
			name    string
			opts    []func(*router.Config)
			sampled int // every sampled-th message is in a sampled trace
			probe   *probe
			topic   string
			series  series
		}
		configs := []*config{
			{name: "off", sampled: 100},
			{name: "metrics", opts: []func(*router.Config){withMetrics}, sampled: 100},
			{name: "traced", opts: []func(*router.Config){withMetrics, withTracing}, sampled: 100},
			{name: "sampled", opts: []func(*router.Config){withMetrics, withTracing}, sampled: 1},
		}
		var each []func()
		for _, c := range configs {
			c.topic = rg.topic("obs-" + c.name)
			c.probe = newProbe(c.topic)
			startTiered(b, rg, "obs-"+c.name+"-"+shortID(), c.topic, policy, c.probe.handle, c.opts...)
			c.probe.warmUp(b, rg, c.topic, true)
			each = append(each, func() {
				msgs := newMessages(n, never)
				inTraces(msgs, c.sampled)
				d, r, ok := c.probe.measure(b, rg, c.topic, msgs, int64(n), 0, measureLimit)
				mustFinish(b, ok, c.name)
				c.series.add(n, d, r)
			})
		}
		// The differences measured are a few percent: more rounds than
		// the other figures, for a steadier median.
		interleaveN(obsRounds, each...)

		off := configs[0].series.cpuPerMsg()
		b.ReportMetric(float64(n), "msgs")
		b.ReportMetric(off/float64(time.Microsecond), "off-cpu-us")
		for _, c := range configs[1:] {
			b.ReportMetric(pairedCPURatio(&configs[0].series, &c.series), c.name+"-cpu-ratio")
		}
		b.ReportMetric(configs[len(configs)-1].series.cpuPerMsg()/float64(time.Microsecond), "sampled-cpu-us")
		line := fmt.Sprintf("%s, %d messages a round, %d rounds; CPU per message and rate:", backend, n, obsRounds)
		for _, c := range configs {
			line += fmt.Sprintf(" %s %v, %v;", c.name, time.Duration(c.series.cpuPerMsg()), &c.series)
		}
		line += " off/on CPU by round:"
		for _, c := range configs[1:] {
			line += " " + c.name
			for i := range c.series.cpu {
				line += fmt.Sprintf(" %.3f", float64(configs[0].series.cpu[i])/float64(c.series.cpu[i]))
			}
			line += fmt.Sprintf(" (ratio of medians %.3f);", off/c.series.cpuPerMsg())
		}
		logf(b, "%s", line)
	})
}

// pairedCPURatio is the median over rounds of base's CPU per message in a
// round over s's in the same round. interleaveN runs every configuration
// once per round, next to each other, so each ratio compares runs made in
// the same conditions (the machine's load, the size of the heap, which
// grows from round to round on mem); the median of these ratios is
// steadier than the ratio of the two medians.
func pairedCPURatio(base, s *series) float64 {
	ratios := make([]float64, len(s.cpu))
	for i := range s.cpu {
		ratios[i] = float64(base.cpu[i]) / float64(s.cpu[i])
	}
	return median(ratios)
}

// inTraces gives msgs the W3C trace context of a producer's span, each in
// its own trace, sampled for every every-th message.
func inTraces(msgs []*message.Message, every int) {
	for i, msg := range msgs {
		flags := "00"
		if i%every == 0 {
			flags = "01"
		}
		msg.Metadata.Set("traceparent", fmt.Sprintf("00-%016x%016x-%016x-%s", rand.Uint64(), rand.Uint64()|1, rand.Uint64()|1, flags))
	}
}
