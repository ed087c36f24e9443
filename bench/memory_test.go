package bench_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// BenchmarkMemory is figure 5: what the process holds while messages wait
// in a tier. A handler with one 1h tier runs; its tier topic is filled
// with 10,000, then 100,000 messages, stamped as the middleware stamps
// them, so that every one of them waits an hour (batch-published: see
// rig.batch). After each step and a GC, it reads the heap in use
// (runtime.MemStats.HeapInuse) and the resident set (VmRSS), and reports
// them above the idle baseline: the same process with the router running
// and no message waiting.
//
// The broker's own memory is kept out of the figure where it can be: kfake
// runs in a child process here (not in-process as in the other
// benchmarks) and redis-server is a process anyway; their memory is
// reported apart (broker-100k-MiB: the child's VmRSS; Redis's
// used_memory). The in-memory GoChannel cannot be moved out: it keeps
// every message and runs two goroutines per waiting message per
// subscription, in our process, by design. Its broker share is estimated
// as the heap left after the router stopped, minus idle.
func BenchmarkMemory(b *testing.B) {
	if backend := os.Getenv(memoryChildEnv); backend != "" {
		measureMemory(b, backend) // in the child process
		return
	}
	forEachBackend(b, func(b *testing.B, backend string) {
		metrics, logs := runMemoryChild(b, "BenchmarkMemory", memoryChildEnv, backend)
		for _, m := range metrics {
			b.ReportMetric(m.value, m.unit)
		}
		for _, l := range logs {
			logf(b, "%s", l)
		}
	})
}

// memoryChildEnv names the backend that a child process measures.
const memoryChildEnv = "RETRY_KAFKA_BENCH_MEMORY"

type metric struct {
	value float64
	unit  string
}

// runMemoryChild runs benchmark bench for one backend in a fresh process
// (this test binary again, with env set to the backend), so that the idle
// baseline is a process that did nothing else and no earlier benchmark's
// memory is in the figures, and returns what it reported.
func runMemoryChild(b *testing.B, bench, env, backend string) ([]metric, []string) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^"+bench+"$", "-test.benchtime=1x", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), env+"="+backend)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("%s of %s in a child process: %v\n%s", bench, backend, err, out)
	}
	var metrics []metric
	var logs []string
	for line := range strings.SplitSeq(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, bench); ok {
			fields := strings.Fields(rest)
			for i := 2; i+1 < len(fields); i += 2 { // after the name suffix and the iteration count
				v, err := strconv.ParseFloat(fields[i], 64)
				if err == nil && fields[i+1] != "ns/op" {
					metrics = append(metrics, metric{v, fields[i+1]})
				}
			}
		} else if strings.HasPrefix(line, "    ") && strings.Contains(line, ": ") {
			logs = append(logs, strings.TrimSpace(line[strings.Index(line, ": ")+2:]))
		}
	}
	if len(metrics) == 0 {
		b.Fatalf("the memory child process of %s reported nothing:\n%s", backend, out)
	}
	return metrics, logs
}

// measureMemory is BenchmarkMemory for one backend, in the child process.
func measureMemory(b *testing.B, backend string) {
	const tierDelay = time.Hour
	steps := []int{10000, 100000}
	var rg *rig
	broker := func() float64 { return 0 }
	switch backend {
	case "kafka":
		if v := strings.TrimSpace(os.Getenv("KAFKA_BROKERS")); v != "" {
			rg = kafkaRig(b, strings.Split(v, ","), nil)
		} else {
			kp := startKfakeProcess(b)
			rg = kafkaRig(b, kp.Brokers, nil)
			broker = func() float64 { return rssMiB(kp.Pid) }
		}
	case "redis":
		rg = openRig(b, backend)
		broker = func() float64 { return redisUsedMiB(b, rg) }
	default:
		rg = openRig(b, backend)
	}
	topic, name := rg.topic("memory"), "memory-"+shortID()
	p := newProbe(topic)
	a := startTiered(b, rg, name, topic, tiered.Policy{Delays: []time.Duration{tierDelay}, MaxAttempts: 2}, p.handle)
	tierTopic := a.handler.Topics.Tiers[0]
	if rg.admin != nil {
		tierGroup := a.handler.Topics.Group(tierTopic)
		if _, ok := waitGroup(b, rg, tierGroup, 1, waitLimit); !ok {
			b.Fatalf("tier group %s never joined", tierGroup)
		}
	}
	time.Sleep(time.Second)
	idle := snapshot(broker)

	pub, err := tiered.NewPublisher(rg.batch, nil)
	if err != nil {
		b.Fatal(err)
	}
	var snaps []memSnap
	held := 0
	for _, total := range steps {
		for held < total {
			k := min(10000, total-held)
			if err := pub.Publish(tierTopic, heldMessages(k, topic, name, tierDelay)...); err != nil {
				b.Fatal(err)
			}
			held += k
		}
		time.Sleep(2 * time.Second) // the tier consumer fetches and holds its head
		snaps = append(snaps, snapshot(broker))
	}
	if calls := p.calls(); calls != 0 {
		b.Fatalf("%d messages reached the handler before their due time", calls)
	}
	a.stop()
	stopped := snapshot(broker)

	s10, s100 := snaps[0], snaps[1]
	if backend == "mem" {
		s100.broker = stopped.heap - idle.heap
	}
	b.ReportMetric(idle.heap, "idle-heap-MiB")
	b.ReportMetric(idle.rss, "idle-rss-MiB")
	b.ReportMetric(s10.heap-idle.heap, "d-heap-10k-MiB")
	b.ReportMetric(s100.heap-idle.heap, "d-heap-100k-MiB")
	b.ReportMetric(s10.rss-idle.rss, "d-rss-10k-MiB")
	b.ReportMetric(s100.rss-idle.rss, "d-rss-100k-MiB")
	b.ReportMetric(float64(s100.goroutines-idle.goroutines), "d-goroutines-100k")
	b.ReportMetric(s100.broker, "broker-100k-MiB")
	logf(b, "%s: idle %s; 10k held %s; 100k held %s; router stopped %s", backend, idle, s10, s100, stopped)
}

// heldMessages returns n tier messages as the retry middleware writes them
// after a first failure: they wait d from their publish.
func heldMessages(n int, topic, handler string, d time.Duration) []*message.Message {
	now := time.Now()
	msgs := newMessages(n, nil)
	for _, msg := range msgs {
		tiered.Info{
			Attempt: 1, OriginalTopic: topic, Handler: handler,
			FirstFailure: now, LastFailure: now, Tier: 1, LastError: errFail.Error(),
		}.Write(msg.Metadata)
		delay.Message(msg, delay.For(d))
	}
	return msgs
}

// memSnap is the memory of the process at one moment, in MiB.
type memSnap struct {
	heap, rss  float64
	goroutines int
	broker     float64
}

func (s memSnap) String() string {
	return fmt.Sprintf("heap %.1f MiB, RSS %.1f MiB, %d goroutines, broker %.1f MiB", s.heap, s.rss, s.goroutines, s.broker)
}

// snapshot collects garbage, returns freed memory to the OS, and reads the
// heap in use and the resident set.
func snapshot(broker func() float64) memSnap {
	runtime.GC()
	debug.FreeOSMemory()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return memSnap{
		heap:       float64(m.HeapInuse) / (1 << 20),
		rss:        rssMiB(os.Getpid()),
		goroutines: runtime.NumGoroutine(),
		broker:     broker(),
	}
}

// rssMiB reads VmRSS of a process from /proc (Linux); 0 elsewhere.
func rssMiB(pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// redisUsedMiB is the server's INFO used_memory.
func redisUsedMiB(b *testing.B, rg *rig) float64 {
	info, err := rg.redis.Info(context.Background(), "memory").Result()
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return n / (1 << 20)
		}
	}
	return 0
}
