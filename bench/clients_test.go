package bench_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// BenchmarkClients (Kafka only) counts what one handler costs in broker
// connections and goroutines: handlers handlers with two tiers each (three
// subscriptions), tiered (router.New + AddConsumerHandler on one backend,
// whose producer and admin share one client, and whose router lists topics
// with the backend's Inspector, another) against plain watermill-kafka (a
// watermill-kafka subscriber per subscription, as many subscriptions, and
// one watermill-kafka publisher), each measured once every consumer group
// has joined and a message went through, above the process before the
// routers started. Connections are the process's established TCP
// connections to the brokers (from /proc/self/fd and /proc/net/tcp*).
func BenchmarkClients(b *testing.B) {
	const handlers = 4
	for _, name := range backendNames() {
		if name != "kafka" {
			continue
		}
		b.Run(name, func(b *testing.B) {
			brokers := kafkatest.Start(b).Brokers
			rg := kafkaRig(b, brokers, nil)
			policy := tiered.Policy{Delays: []time.Duration{time.Hour, 2 * time.Hour}, MaxAttempts: 3}

			measure := func(start func()) (conns, goroutines float64) {
				time.Sleep(500 * time.Millisecond)
				c0, g0 := brokerConns(b, brokers), runtime.NumGoroutine()
				start()
				time.Sleep(time.Second)
				c1, g1 := brokerConns(b, brokers), runtime.NumGoroutine()
				return float64(c1-c0) / handlers, float64(g1-g0) / handlers
			}

			tc, tg := measure(func() {
				for range handlers {
					topic := rg.topic("clients")
					p := newProbe(topic)
					a := startTiered(b, rg, "clients-"+shortID(), topic, policy, p.handle)
					p.warmUp(b, rg, topic, false)
					for _, tier := range a.handler.Topics.Tiers {
						if _, ok := waitGroup(b, rg, a.handler.Topics.Group(tier), 1, waitLimit); !ok {
							b.Fatalf("tier group of %s never joined", tier)
						}
					}
				}
			})
			pc, pg := measure(func() {
				// A plain application publishes too: one watermill-kafka
				// publisher, as the backend has one producer.
				sc := kafkatest.SaramaConfig()
				sc.Producer.Return.Successes = true // watermill-kafka's publisher is a SyncProducer
				pub, err := wkafka.NewPublisher(wkafka.PublisherConfig{
					Brokers: brokers, Marshaler: wkafka.DefaultMarshaler{}, OverwriteSaramaConfig: sc,
				}, watermill.NopLogger{})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = pub.Close() })
				for range handlers {
					r := newRouter(b)
					topic := rg.topic("plain-clients")
					p := newProbe(topic)
					var groups []string
					for i, t := range []string{topic, rg.topic("plain-tier1"), rg.topic("plain-tier2")} {
						group := fmt.Sprintf("%s.%d", t, i)
						sub, err := rg.plain(group, t)
						if err != nil {
							b.Fatal(err)
						}
						r.AddConsumerHandler(group, t, sub, func(msg *message.Message) error { return p.handle(msg) })
						groups = append(groups, group)
					}
					run(b, r)
					p.warmUp(b, rg, topic, false)
					for _, g := range groups[1:] {
						if _, ok := waitGroup(b, rg, g, 1, waitLimit); !ok {
							b.Fatalf("group %s never joined", g)
						}
					}
				}
			})
			b.ReportMetric(tc, "tiered-conns/handler")
			b.ReportMetric(pc, "plain-conns/handler")
			b.ReportMetric(tg, "tiered-goroutines/handler")
			b.ReportMetric(pg, "plain-goroutines/handler")
			logf(b, "%d handlers with 2 tiers each: tiered %.2f connections and %.1f goroutines per handler; plain watermill-kafka (3 subscribers each, one publisher) %.2f and %.1f",
				handlers, tc, tg, pc, pg)
		})
	}
}

// brokerConns counts this process's established TCP connections to
// brokers (Linux; 0 elsewhere).
func brokerConns(b *testing.B, brokers []string) int {
	b.Helper()
	ports := map[uint64]bool{}
	for _, addr := range brokers {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			b.Fatal(err)
		}
		p, _ := strconv.ParseUint(port, 10, 16)
		ports[p] = true
	}
	inodes := map[string]bool{}
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		link, err := os.Readlink("/proc/self/fd/" + fd.Name())
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	n := 0
	for _, file := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		f, err := os.Open(file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "01" || !inodes[fields[9]] {
				continue
			}
			_, rport, ok := strings.Cut(fields[2], ":")
			if p, err := strconv.ParseUint(rport, 16, 16); ok && err == nil && ports[p] {
				n++
			}
		}
		_ = f.Close()
	}
	return n
}
