package bench_test

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// BenchmarkMemoryLarge (Kafka only) is figure 5 with 100 KiB records: what
// the process holds while large records wait in a 1h tier, above the idle
// process, measured in a fresh child process as BenchmarkMemory is. A tier
// consumer only needs the head of each partition; what it holds beyond
// is its prefetch: Sarama's channel (4 records on tier clients), one fetch
// (64 KiB, or the one batch that is larger) and the claim's read-ahead (at
// most 1 MiB of records, at least one), so handlers x tiers x partitions x
// (5 records + 1 MiB) in all.
func BenchmarkMemoryLarge(b *testing.B) {
	if backend := os.Getenv(memoryLargeChildEnv); backend != "" {
		measureMemoryLarge(b)
		return
	}
	for _, name := range backendNames() {
		if name != "kafka" {
			continue
		}
		b.Run(name, func(b *testing.B) {
			metrics, logs := runMemoryChild(b, "BenchmarkMemoryLarge", memoryLargeChildEnv, name)
			for _, m := range metrics {
				b.ReportMetric(m.value, m.unit)
			}
			for _, l := range logs {
				logf(b, "%s", l)
			}
		})
	}
}

const memoryLargeChildEnv = "RETRY_KAFKA_BENCH_MEMORY_LARGE"

func measureMemoryLarge(b *testing.B) {
	const (
		tierDelay = time.Hour
		size      = 100 << 10
		records   = 1000
	)
	var rg *rig
	if v := strings.TrimSpace(os.Getenv("KAFKA_BROKERS")); v != "" {
		rg = kafkaRig(b, strings.Split(v, ","), nil)
	} else {
		rg = kafkaRig(b, startKfakeProcess(b).Brokers, nil)
	}
	topic, name := rg.topic("memory-large"), "memory-large-"+shortID()
	p := newProbe(topic)
	a := startTiered(b, rg, name, topic, tiered.Policy{Delays: []time.Duration{tierDelay}, MaxAttempts: 2}, p.handle)
	tierTopic := a.handler.Topics.Tiers[0]
	if _, ok := waitGroup(b, rg, a.handler.Topics.Group(tierTopic), 1, waitLimit); !ok {
		b.Fatalf("tier group never joined")
	}
	time.Sleep(time.Second)
	idle := snapshot(func() float64 { return 0 })
	pub, err := tiered.NewPublisher(rg.batch, nil)
	if err != nil {
		b.Fatal(err)
	}
	payload := bytes.Repeat([]byte("x"), size)
	for sent := 0; sent < records; sent += 50 {
		msgs := heldMessages(50, topic, name, tierDelay)
		for _, m := range msgs {
			m.Payload = payload
		}
		if err := pub.Publish(tierTopic, msgs...); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(3 * time.Second) // the tier consumer fetches and holds its head
	held := snapshot(func() float64 { return 0 })
	if calls := p.calls(); calls != 0 {
		b.Fatalf("%d messages reached the handler before their due time", calls)
	}
	b.ReportMetric(size>>10, "record-KiB")
	b.ReportMetric(records, "waiting")
	b.ReportMetric(held.heap-idle.heap, "d-heap-MiB")
	b.ReportMetric(held.rss-idle.rss, "d-rss-MiB")
	logf(b, "%d records of %d KiB waiting in a 1h tier: idle %s; held %s", records, size>>10, idle, held)
}
