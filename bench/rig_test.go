package bench_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	wmredis "github.com/ThreeDotsLabs/watermill-redisstream/pkg/redisstream"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/memory"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

const (
	// payloadSize is the payload of every message, in bytes.
	payloadSize = 200
	// keyFail marks a message that fails once (its first call): its value
	// is failOnce until the probe fails the call, then failedOnce. The
	// probe rewrites the value in the message it was given, which the
	// tier copy and a second call by Watermill's Retry both carry: the
	// handler keeps no state of its own (a map of failed UUIDs cost the
	// retry path's rounds, and only them, 5-6% of their CPU: a boxed key
	// per message and the stack growth of its hashing).
	keyFail    = "bench_fail"
	failOnce   = "1"
	failedOnce = "2"
	// waitLimit bounds every wait that is not a measurement.
	waitLimit = 90 * time.Second
)

// errFail is the handler's error for a message that fails once.
var errFail = errors.New("bench: failing once on purpose")

// backendNames lists the backends to measure: BENCH_BACKENDS
// (comma-separated, e.g. "mem,redis") or all three.
func backendNames() []string {
	if v := strings.TrimSpace(os.Getenv("BENCH_BACKENDS")); v != "" {
		return strings.Split(v, ",")
	}
	return []string{"mem", "kafka", "redis"}
}

// forEachBackend runs fn as a sub-benchmark per backend.
func forEachBackend(b *testing.B, fn func(b *testing.B, backend string)) {
	for _, name := range backendNames() {
		b.Run(name, func(b *testing.B) { fn(b, name) })
	}
}

// rig is one broker under test.
type rig struct {
	name    string
	backend tiered.Backend
	// batch publishes many messages in few round trips, in the wire
	// format of the backend's own publisher. It only fills topics before
	// a measurement; the library's own publishes are what is measured.
	batch message.Publisher
	// topic returns a topic name unique to the run, created with one
	// partition where the broker needs topics created.
	topic func(base string) string

	// plain returns the subscriber of plain Watermill on this broker, in
	// consumer group group: watermill-kafka's own subscriber on Kafka (the
	// backend's is the library's pipelined consumer), the backend's
	// subscriber elsewhere (watermill-redisstream's, GoChannel).
	plain func(group, topic string) (message.Subscriber, error)

	brokers []string            // Kafka only
	admin   sarama.ClusterAdmin // Kafka only
	redis   *redis.Client       // Redis only
}

// openRig opens a backend by name; Kafka on kafkatest (kfake in-process,
// or KAFKA_BROKERS).
func openRig(b *testing.B, name string) *rig {
	b.Helper()
	switch name {
	case "mem":
		return memRig(b)
	case "kafka":
		return kafkaRig(b, kafkatest.Start(b).Brokers, nil)
	case "redis":
		return redisRig(b)
	}
	b.Fatalf("unknown backend %q (known: mem, kafka, redis)", name)
	return nil
}

func memRig(b *testing.B) *rig {
	backend := memory.New(nil)
	b.Cleanup(func() { _ = backend.Close() })
	return &rig{
		name: "mem",
		plain: func(group, topic string) (message.Subscriber, error) {
			return backend.Subscriber(tiered.SubscribeParams{Group: group, Topic: topic})
		},
		backend: backend,
		batch:   backend.Publisher(),
		topic:   func(base string) string { return base + "." + shortID() },
	}
}

// kafkaRig opens a Kafka backend on brokers with kafkatest's tuning,
// changed by tune when not nil.
func kafkaRig(b *testing.B, brokers []string, tune func(*sarama.Config)) *rig {
	b.Helper()
	config := kafkatest.Env{Brokers: brokers}.Config()
	if tune != nil {
		tune(config.Sarama)
	}
	backend := kafkatest.New(b, config)
	admin, err := sarama.NewClusterAdmin(brokers, kafkatest.SaramaConfig())
	if err != nil {
		b.Fatalf("kafka admin: %v", err)
	}
	b.Cleanup(func() { _ = admin.Close() })
	pc := kafkatest.SaramaConfig()
	pc.Producer.Return.Successes = true
	pc.Producer.RequiredAcks = sarama.WaitForAll
	pc.Producer.Retry.Max = 10
	producer, err := sarama.NewSyncProducer(brokers, pc)
	if err != nil {
		b.Fatalf("kafka producer: %v", err)
	}
	b.Cleanup(func() { _ = producer.Close() })
	return &rig{
		name: "kafka",
		plain: func(group, topic string) (message.Subscriber, error) {
			sc := kafkatest.SaramaConfig()
			if tune != nil {
				tune(sc)
			}
			sc.Consumer.Offsets.Initial = sarama.OffsetOldest
			return wkafka.NewSubscriber(wkafka.SubscriberConfig{
				Brokers:               brokers,
				Unmarshaler:           wkafka.DefaultMarshaler{},
				OverwriteSaramaConfig: sc,
				ConsumerGroup:         group,
				NackResendSleep:       config.NackResendSleep,
			}, watermill.NopLogger{})
		},
		backend: backend,
		batch:   kafkaBatch{producer},
		topic: func(base string) string {
			name := "bench." + base + "." + shortID()
			err := admin.CreateTopic(name, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1}, false)
			if err != nil {
				b.Fatalf("create topic %s: %v", name, err)
			}
			return name
		},
		brokers: brokers,
		admin:   admin,
	}
}

func redisRig(b *testing.B) *rig {
	b.Helper()
	client := redis.NewClient(&redis.Options{Addr: redistest.Addr(b)})
	b.Cleanup(func() { _ = client.Close() })
	backend, err := redisstream.New(context.Background(), redisstream.Config{Client: client}, nil)
	if err != nil {
		b.Fatalf("redis backend: %v", err)
	}
	b.Cleanup(func() { _ = backend.Close() })
	return &rig{
		name: "redis",
		plain: func(group, topic string) (message.Subscriber, error) {
			return backend.Subscriber(tiered.SubscribeParams{Group: group, Topic: topic})
		},
		backend: backend,
		batch:   redisBatch{client},
		topic:   func(base string) string { return redistest.Name(b, "bench."+base) },
		redis:   client,
	}
}

// kafkaBatch sends messages in batches of produce requests, as
// watermill-kafka's marshaler writes them.
type kafkaBatch struct{ producer sarama.SyncProducer }

func (k kafkaBatch) Publish(topic string, msgs ...*message.Message) error {
	for chunk := range slices.Chunk(msgs, 5000) {
		recs := make([]*sarama.ProducerMessage, len(chunk))
		for i, msg := range chunk {
			rec, err := wkafka.DefaultMarshaler{}.Marshal(topic, msg)
			if err != nil {
				return err
			}
			recs[i] = rec
		}
		if err := k.producer.SendMessages(recs); err != nil {
			return err
		}
	}
	return nil
}

func (kafkaBatch) Close() error { return nil }

// redisBatch pipelines XADDs, as watermill-redisstream's marshaller writes
// them.
type redisBatch struct{ client *redis.Client }

func (r redisBatch) Publish(topic string, msgs ...*message.Message) error {
	ctx := context.Background()
	for chunk := range slices.Chunk(msgs, 2000) {
		pipe := r.client.Pipeline()
		for _, msg := range chunk {
			values, err := wmredis.DefaultMarshallerUnmarshaller{}.Marshal(topic, msg)
			if err != nil {
				return err
			}
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: values})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (redisBatch) Close() error { return nil }

func shortID() string { return watermill.NewShortUUID()[:8] }

// newMessages returns n messages; those for which fail(i) holds fail once.
func newMessages(n int, fail func(i int) bool) []*message.Message {
	payload := bytes.Repeat([]byte("x"), payloadSize)
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(watermill.NewUUID(), payload)
		if fail != nil && fail(i) {
			msgs[i].Metadata.Set(keyFail, failOnce)
		}
	}
	return msgs
}

func never(int) bool  { return false }
func always(int) bool { return true }

// app is a running router.
type app struct {
	handler *router.Handler // nil on a plain router
	stop    func()
}

func newRouter(b *testing.B) *message.Router {
	b.Helper()
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	return r
}

// run starts r and returns its idempotent stop, also called at cleanup.
func run(b *testing.B, r *message.Router) func() {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx)
	}()
	select {
	case <-r.Running():
	case <-time.After(waitLimit):
		b.Fatal("router did not start")
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = r.Close()
			cancel()
			<-done
		})
	}
	b.Cleanup(stop)
	return stop
}

// startPlain runs h on a plain Watermill router with plain Watermill's
// subscriber for the broker (rig.plain), with Watermill middleware mws.
func startPlain(b *testing.B, rg *rig, name, topic string, h message.NoPublishHandlerFunc, mws ...message.HandlerMiddleware) *app {
	b.Helper()
	r := newRouter(b)
	sub, err := rg.plain(name, topic)
	if err != nil {
		b.Fatal(err)
	}
	hd := r.AddConsumerHandler(name, topic, sub, h)
	for _, mw := range mws {
		hd.AddMiddleware(mw)
	}
	return &app{stop: run(b, r)}
}

// startTiered runs h with tiered retries: router.New + AddConsumerHandler.
// configure, when given, changes the router config.
func startTiered(b *testing.B, rg *rig, name, topic string, policy tiered.Policy, h message.NoPublishHandlerFunc, configure ...func(*router.Config)) *app {
	b.Helper()
	r := newRouter(b)
	config := router.Config{Backend: rg.backend, Policy: policy}
	for _, c := range configure {
		c(&config)
	}
	retrying, err := router.New(config, nil)
	if err != nil {
		b.Fatal(err)
	}
	hd, err := retrying.AddConsumerHandler(r, name, topic, h)
	if err != nil {
		b.Fatal(err)
	}
	return &app{handler: hd, stop: run(b, r)}
}

// probe is the handler under test. It does no work of its own: it holds
// the first call of a round at a gate (so that the round's messages are
// all published before the clock starts), fails the messages marked to
// fail once, counts, and records how late tier deliveries are.
type probe struct {
	mainTopic string
	work      time.Duration // time each call spends working (sleeping), after the gate
	cur       atomic.Pointer[round]
}

func newProbe(mainTopic string) *probe {
	p := &probe{mainTopic: mainTopic}
	p.cur.Store(newRound(0, 0, true))
	return p
}

// round is one measurement: it is done when wantOK calls succeeded or
// wantMain messages had their first call on the main topic (0: not
// counted).
type round struct {
	gate       chan struct{}
	arrived    chan struct{}
	arriveOnce sync.Once
	wantOK     int64
	wantMain   int64
	ok, main   atomic.Int64
	done       chan struct{}
	doneOnce   sync.Once
	end        atomic.Int64 // UnixNano at done
	mainEnd    atomic.Int64 // UnixNano when the main topic's count reached wantMain or wantOK

	start time.Time     // when the gate opened
	cpu   time.Duration // CPU time of the process from the gate's opening to the end

	mu     sync.Mutex
	late   []time.Duration // tier deliveries: handler entry - due time
	tierAt []time.Time     // tier deliveries: handler entry
	early  int
}

func newRound(wantOK, wantMain int64, open bool) *round {
	r := &round{gate: make(chan struct{}), arrived: make(chan struct{}), wantOK: wantOK, wantMain: wantMain, done: make(chan struct{})}
	if open {
		close(r.gate)
	}
	return r
}

func (r *round) finish() {
	r.doneOnce.Do(func() {
		r.end.Store(time.Now().UnixNano())
		close(r.done)
	})
}

func (p *probe) handle(msg *message.Message) error {
	now := time.Now()
	r := p.cur.Load()
	fromMain := message.SubscribeTopicFromCtx(msg.Context()) == p.mainTopic
	if !fromMain {
		if due, ok, _ := tiered.DueAt(msg.Metadata); ok {
			r.mu.Lock()
			r.late = append(r.late, now.Sub(due))
			r.tierAt = append(r.tierAt, now)
			if now.Before(due) {
				r.early++
			}
			r.mu.Unlock()
		}
	}
	r.arriveOnce.Do(func() { close(r.arrived) })
	<-r.gate
	if p.work > 0 {
		time.Sleep(p.work)
	}

	var err error
	retried := false // a second call on the main topic (Watermill's Retry)
	switch msg.Metadata[keyFail] {
	case failOnce:
		msg.Metadata[keyFail] = failedOnce
		err = errFail
	case failedOnce:
		retried = fromMain
	}
	if fromMain && !retried {
		if m := r.main.Add(1); m == r.wantMain || m == r.wantOK {
			r.mainEnd.Store(time.Now().UnixNano())
			if m == r.wantMain {
				r.finish()
			}
		}
	}
	if err == nil && r.ok.Add(1) == r.wantOK {
		r.finish()
	}
	return err
}

// calls returns the calls of the current round.
func (p *probe) calls() int64 {
	r := p.cur.Load()
	return r.ok.Load() + r.main.Load()
}

// warmUp sends one message through (through the first tier when fail)
// and waits until it was handled: every subscription it needs has joined.
func (p *probe) warmUp(b *testing.B, rg *rig, topic string, fail bool) {
	b.Helper()
	r := newRound(1, 0, true)
	p.cur.Store(r)
	msgs := newMessages(1, func(int) bool { return fail })
	if err := rg.batch.Publish(topic, msgs...); err != nil {
		b.Fatal(err)
	}
	select {
	case <-r.done:
	case <-time.After(waitLimit):
		b.Fatalf("warm-up message on %s never handled", topic)
	}
}

// trickle publishes n messages to topic one at a time, gap apart, and
// waits until n calls succeeded.
func (p *probe) trickle(b *testing.B, rg *rig, topic string, n int, gap time.Duration, fail func(int) bool) *round {
	b.Helper()
	r := newRound(int64(n), 0, true)
	p.cur.Store(r)
	for i, msg := range newMessages(n, fail) {
		if i > 0 {
			time.Sleep(gap)
		}
		if err := rg.batch.Publish(topic, msg); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-r.done:
	case <-time.After(waitLimit):
		b.Fatalf("trickle on %s never finished", topic)
	}
	return r
}

// measure publishes msgs to topic while the handler is held at the gate,
// then opens the gate and times the round until it is done or limit
// passed. It returns the time from the gate's opening to the end of the
// round, the round, and whether it finished.
func (p *probe) measure(b *testing.B, rg *rig, topic string, msgs []*message.Message, wantOK, wantMain int64, limit time.Duration) (time.Duration, *round, bool) {
	b.Helper()
	r := newRound(wantOK, wantMain, false)
	p.cur.Store(r)
	if err := rg.batch.Publish(topic, msgs...); err != nil {
		b.Fatal(err)
	}
	runtime.GC() // no round pays for the garbage of the one before
	select {
	case <-r.arrived:
	case <-time.After(waitLimit):
		b.Fatalf("no message of %s reached the handler", topic)
	}
	cpu0 := cpuTime()
	start := time.Now()
	r.start = start
	close(r.gate)
	select {
	case <-r.done:
		r.cpu = cpuTime() - cpu0
		return time.Duration(r.end.Load() - start.UnixNano()), r, true
	case <-time.After(limit):
		r.cpu = cpuTime() - cpu0
		return time.Since(start), r, false
	}
}

// cpuTime is the CPU time (user and system) the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// mainTime is the time from the gate's opening until the main topic's
// count reached its target.
func (r *round) mainTime() time.Duration {
	if e := r.mainEnd.Load(); e != 0 {
		return time.Duration(e - r.start.UnixNano())
	}
	return 0
}

// rate is messages per second.
func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// median of xs (not empty).
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile of sorted ds, q in [0, 1].
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// logf prints a line under the benchmark's result.
func logf(b *testing.B, format string, args ...any) {
	b.Helper()
	b.Logf("%s", fmt.Sprintf(format, args...))
}
