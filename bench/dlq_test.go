package bench_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/redis/go-redis/v9"

	"github.com/retry-kafka/retry-kafka/dlq"
	"github.com/retry-kafka/retry-kafka/internal/dlqtest"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// BenchmarkDLQ is figure 7: operating a dead-letter topic at incident
// scale, on Kafka and Redis (the in-memory backend cannot be inspected).
//
// Rate: a round batch-publishes N dead letters to a topic in the backend's
// wire format (rig.batch, the plain batch publish), and redrives N dead
// letters from a dead-letter topic to another topic with the dlq package,
// unthrottled; both timed, rounds alternating, medians reported with
// their ratio (target >= 0.5).
//
// Memory: the dead-letter topic is filled to 10,000 then 1,000,000
// messages, and at each step every operation (list, stats, export to
// io.Discard, redrive to a topic) runs while a sampler reads the live
// heap (after a forced GC, every 10ms); the peak above the live heap
// before the operation is reported (see peakHeap). Flat means the 1M figure is about
// the 10k one. Kafka runs in a child process here (kfake, or
// KAFKA_BROKERS), so the broker's own memory stays out of ours.
func BenchmarkDLQ(b *testing.B) {
	for _, name := range backendNames() {
		if name == "mem" {
			continue
		}
		b.Run(name, func(b *testing.B) {
			rg := dlqRig(b, name)
			measureRedriveRate(b, rg)
			measureDLQMemory(b, rg)
		})
	}
}

func dlqRig(b *testing.B, name string) *rig {
	b.Helper()
	if name == "kafka" && strings.TrimSpace(os.Getenv("KAFKA_BROKERS")) == "" {
		return kafkaRig(b, startKfakeProcess(b).Brokers, nil)
	}
	return openRig(b, name)
}

// dlqTopics makes a handler's topics for the figure: a dead-letter topic
// to fill and a target topic to redrive to, both existing.
func dlqTopics(b *testing.B, rg *rig, base string) (tiered.Topics, string) {
	b.Helper()
	main := rg.topic(base)
	topics := tiered.Topics{Main: main, Handler: "h", DLQ: main + ".h.dlq"}
	target := rg.topic(base + "-target")
	if rg.admin != nil {
		if err := rg.admin.CreateTopic(topics.DLQ, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1}, false); err != nil {
			b.Fatal(err)
		}
	} else {
		ctx := context.Background()
		if err := rg.redis.XAdd(ctx, &redis.XAddArgs{Stream: target, Values: map[string]any{"init": "1"}}).Err(); err != nil {
			b.Fatal(err)
		}
		rg.redis.XTrimMaxLen(ctx, target, 0)
	}
	return topics, target
}

// fillDLQ batch-publishes n dead letters with payloads of payloadSize,
// 10,000 at a time so the benchmark does not hold them all.
func fillDLQ(b *testing.B, rg *rig, topics tiered.Topics, n int) {
	b.Helper()
	payload := string(bytes.Repeat([]byte("x"), payloadSize))
	for n > 0 {
		k := min(n, 10000)
		letters := make([]dlqtest.Letter, k)
		for i := range letters {
			letters[i].Payload = payload
		}
		msgs, _ := dlqtest.Messages(topics, letters...)
		if err := rg.batch.Publish(topics.DLQ, msgs...); err != nil {
			b.Fatal(err)
		}
		n -= k
	}
}

func dlqClient(b *testing.B, rg *rig) *dlq.Client {
	b.Helper()
	c, err := dlq.New(dlq.Config{Backend: rg.backend}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	return c
}

func measureRedriveRate(b *testing.B, rg *rig) {
	const n = 100000
	c := dlqClient(b, rg)
	payload := bytes.Repeat([]byte("x"), payloadSize)
	var plain, redrive []float64
	var rounds []string
	for round := range 3 {
		// The plain batch publish of messages of the same shape.
		topics, target := dlqTopics(b, rg, "rate")
		letters := make([]dlqtest.Letter, 10000)
		for i := range letters {
			letters[i].Payload = string(payload)
		}
		msgs, _ := dlqtest.Messages(topics, letters...)
		runtime.GC()
		start := time.Now()
		for range n / len(msgs) {
			if err := rg.batch.Publish(target, msgs...); err != nil {
				b.Fatal(err)
			}
		}
		plain = append(plain, rate(n, time.Since(start)))

		fillDLQ(b, rg, topics, n)
		runtime.GC()
		start = time.Now()
		res, err := c.Redrive(context.Background(), dlq.RedriveParams{Topic: topics.DLQ, To: dlq.ToTopic, TargetTopic: target})
		if err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		if res.Moved != n {
			b.Fatalf("redrive moved %d of %d", res.Moved, n)
		}
		redrive = append(redrive, rate(n, elapsed))
		rounds = append(rounds, fmt.Sprintf("%.0f/%.0f", plain[round], redrive[round]))
	}
	logf(b, "%s rounds (plain batch publish/redrive msg/s): %s", rg.name, strings.Join(rounds, ", "))
	b.ReportMetric(n, "msgs")
	b.ReportMetric(median(plain), "plain-msg/s")
	b.ReportMetric(median(redrive), "redrive-msg/s")
	b.ReportMetric(median(redrive)/median(plain), "redrive-ratio")
}

func measureDLQMemory(b *testing.B, rg *rig) {
	c := dlqClient(b, rg)
	topics, target := dlqTopics(b, rg, "memory")
	ctx := context.Background()
	ops := []struct {
		name string
		run  func() error
	}{
		{"list", func() error {
			for _, err := range c.Messages(ctx, topics.DLQ, dlq.Filter{}) {
				if err != nil {
					return err
				}
			}
			return nil
		}},
		{"stats", func() error { _, err := c.Stats(ctx, topics.DLQ, dlq.Filter{}); return err }},
		{"export", func() error { _, err := c.Export(ctx, io.Discard, topics.DLQ, dlq.Filter{}); return err }},
		{"redrive", func() error {
			// A new name each time: the whole topic, not what came
			// since the last run.
			_, err := c.Redrive(ctx, dlq.RedriveParams{Topic: topics.DLQ, To: dlq.ToTopic, TargetTopic: target, Name: "bench." + shortID()})
			return err
		}},
	}
	held := 0
	for _, step := range []struct {
		n     int
		label string
	}{{10000, "10k"}, {1000000, "1M"}} {
		fillDLQ(b, rg, topics, step.n-held)
		held = step.n
		var line []string
		for _, op := range ops {
			peak, took, err := peakHeap(op.run)
			if err != nil {
				b.Fatalf("%s of %d: %v", op.name, step.n, err)
			}
			b.ReportMetric(peak, op.name+"-"+step.label+"-MiB")
			line = append(line, fmt.Sprintf("%s +%.1f MiB in %.1fs (%.0f msg/s)", op.name, peak, took.Seconds(), rate(int64(step.n), took)))
		}
		logf(b, "%s, %d dead letters: %s", rg.name, step.n, strings.Join(line, "; "))
	}
}

// peakHeap runs fn and returns the largest live heap seen while it ran,
// above the live heap before it, in MiB: a sampler collects garbage
// (runtime.GC) every 10ms and reads the live heap it left
// (/gc/heap/live:bytes). Garbage between collections is left out: it is
// bounded by GOGC whatever the topic holds, and on a busy machine it
// swings with how far the collector lags.
func peakHeap(fn func() error) (float64, time.Duration, error) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	live := func() uint64 {
		runtime.GC()
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	base := live()
	peak := base
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if v := live(); v > peak {
				peak = v
			}
		}
	})
	start := time.Now()
	err := fn()
	took := time.Since(start)
	close(stop)
	wg.Wait()
	return float64(peak-base) / (1 << 20), took, err
}
