package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/pubsub"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// config is the drill's command line.
type config struct {
	Broker        string
	KafkaNodes    int
	KafkaStateDir string
	Partitions    int
	Messages      int
	Kills         int
	Restarts      int
	Consumers     int
	FaultEvery    time.Duration
	Window        time.Duration
	BrokerDown    time.Duration
	Delays        []time.Duration
	MaxAttempts   int
	Seed          uint64
	Params        string
	DrainTimeout  time.Duration
	JSON          string
	WorkDir       string
	Keep          bool
}

func (c *config) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.Broker, "broker", "", "kafka or redis (required)")
	fs.IntVar(&c.KafkaNodes, "kafka-nodes", 1, "Kafka nodes (scripts/kafka.sh KAFKA_NODES); 3 runs on a cluster, where a broker restart kills the leader of the main topic's partition 0")
	fs.StringVar(&c.KafkaStateDir, "kafka-state-dir", "", "KAFKA_STATE_DIR for scripts/kafka.sh (default $KAFKA_STATE_DIR, else /tmp/retry-kafka-drill)")
	fs.IntVar(&c.Partitions, "partitions", 4, "partitions of the main topic (Kafka)")
	fs.IntVar(&c.Messages, "messages", 2000, "messages to publish")
	fs.IntVar(&c.Kills, "kills", 5, "consumer kill -9s")
	fs.IntVar(&c.Restarts, "broker-restarts", 1, "broker kill -9s, each followed by a restart on the same data and port")
	fs.IntVar(&c.Consumers, "consumers", 1, "consumer processes; a kill picks one at random")
	fs.DurationVar(&c.FaultEvery, "fault-every", 10*time.Second, "mean time between faults")
	fs.DurationVar(&c.Window, "window", 0, "how long messages are published; faults come at random gaps averaging window/(faults+1), counted from the end of the fault before (default (kills+restarts+1) x fault-every)")
	fs.DurationVar(&c.BrokerDown, "broker-down", 3*time.Second, "how long a killed broker stays down")
	fs.Func("delays", "tier delays (default 2s,5s,10s)", func(s string) error {
		d, err := parseDelays(s)
		c.Delays = d
		return err
	})
	fs.IntVar(&c.MaxAttempts, "max-attempts", 4, "Policy.MaxAttempts")
	fs.Uint64Var(&c.Seed, "seed", 0, "seed of the failure mix and the fault times (default random, printed)")
	fs.StringVar(&c.Params, "params", "", "extra backend URL parameters, e.g. max_idle_time=10s")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 10*time.Minute, "how long to wait, after the last fault, for everything to end")
	fs.StringVar(&c.JSON, "json", "", "also write the result as JSON to this file")
	fs.StringVar(&c.WorkDir, "work-dir", "", "journals and logs (default a temporary directory, kept when the drill fails)")
	fs.BoolVar(&c.Keep, "keep", false, "keep the work directory")
}

func (c *config) setDefaults() {
	if len(c.Delays) == 0 {
		c.Delays = []time.Duration{2 * time.Second, 5 * time.Second, 10 * time.Second}
	}
	if c.FaultEvery == 0 {
		c.FaultEvery = 10 * time.Second
	}
	if c.BrokerDown == 0 {
		c.BrokerDown = 3 * time.Second
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 10 * time.Minute
	}
	if c.Window == 0 {
		c.Window = time.Duration(c.Kills+c.Restarts+1) * c.FaultEvery
	}
	if c.KafkaStateDir == "" {
		c.KafkaStateDir = os.Getenv("KAFKA_STATE_DIR")
	}
	if c.KafkaStateDir == "" {
		c.KafkaStateDir = "/tmp/retry-kafka-drill"
	}
	if c.Seed == 0 {
		c.Seed = mrand.Uint64()
	}
}

func (c config) validate() error {
	var errs []error
	if c.Broker != "kafka" && c.Broker != "redis" {
		errs = append(errs, fmt.Errorf("-broker is %q: want kafka or redis", c.Broker))
	}
	if c.Messages < 1 || c.Consumers < 1 || c.KafkaNodes < 1 || c.Partitions < 1 {
		errs = append(errs, errors.New("-messages, -consumers, -kafka-nodes and -partitions must be positive"))
	}
	if c.Kills < 0 || c.Restarts < 0 {
		errs = append(errs, errors.New("-kills and -broker-restarts must not be negative"))
	}
	if c.Window <= 0 || c.FaultEvery <= 0 {
		errs = append(errs, errors.New("-window and -fault-every must be positive"))
	}
	if _, err := url.ParseQuery(c.Params); err != nil {
		errs = append(errs, fmt.Errorf("-params: %w", err))
	}
	if err := (tiered.Policy{Delays: c.Delays, MaxAttempts: c.MaxAttempts}).Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// runMain runs a drill and prints its report; it exits 1 when a target is
// missed (a loss, a wrong dead letter, an early delivery, no drain).
func runMain(args []string) int {
	var c config
	fs := flag.NewFlagSet("drill", flag.ContinueOnError)
	c.flags(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: go run ./tests/drill -broker kafka|redis [flags]\n\nSee tests/drill/doc.go and RELIABILITY.md.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c.setDefaults()
	if err := c.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "drill:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d, err := newDrill(ctx, c, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "drill:", err)
		return 1
	}
	res, err := d.run(ctx)
	d.close(err == nil && res.ok())
	if err != nil {
		fmt.Fprintln(os.Stderr, "drill:", err)
		return 1
	}
	if !res.ok() {
		return 1
	}
	return 0
}

// drill is one run.
type drill struct {
	c       config
	runID   string
	dir     string
	journal string
	logf    func(format string, args ...any)
	out     io.Writer // where the report goes
	commit  string    // of the code under test, when the drill started
	broker  broker
	url     string
	backend tiered.Backend
	inspect tiered.Inspector
	topics  tiered.Topics
	policy  tiered.Policy
	rng     *mrand.Rand
	started time.Time

	track *tracker
	procs []*consumerProc // started by startConsumers, one goroutine

	mu          sync.Mutex
	plans       map[string]plan // by UUID
	republished map[string]bool
	published   int
	faults      []fault
}

// newDrill prepares a run of c on b, or, when b is nil, on the broker
// that c names, started here.
func newDrill(ctx context.Context, c config, b broker) (_ *drill, err error) {
	d := &drill{c: c, plans: map[string]plan{}, republished: map[string]bool{}}
	defer func() {
		if err != nil {
			d.close(false)
		}
	}()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	d.runID = time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(rnd[:])
	d.commit = commit()
	d.rng = mrand.New(mrand.NewPCG(c.Seed, 0x5eed))
	d.policy = tiered.Policy{Delays: c.Delays, MaxAttempts: c.MaxAttempts}
	d.out = os.Stdout
	d.logf = func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "drill %s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}

	d.dir = c.WorkDir
	if d.dir == "" {
		dir, err := os.MkdirTemp("", "retry-kafka-drill-")
		if err != nil {
			return nil, err
		}
		d.dir = dir
	}
	d.journal = filepath.Join(d.dir, "journal")
	if err := os.MkdirAll(d.journal, 0o755); err != nil {
		return nil, err
	}
	d.track = &tracker{d: d, reader: newJournalReader(d.journal), succeeded: map[string]bool{}}

	params, _ := url.ParseQuery(c.Params)
	d.broker = b
	switch c.Broker {
	case "kafka":
		if d.broker == nil {
			script, err := findScript("scripts/kafka.sh")
			if err != nil {
				return nil, err
			}
			if d.broker, err = startKafka(ctx, script, c.KafkaStateDir, c.KafkaNodes, d.logf); err != nil {
				return nil, err
			}
		}
		setDefault(params, "create_topics", "true")
		setDefault(params, "partitions", fmt.Sprint(c.Partitions))
		if c.KafkaNodes > 1 {
			setDefault(params, "replication_factor", fmt.Sprint(min(c.KafkaNodes, 3)))
		}
	case "redis":
		if d.broker == nil {
			var err error
			if d.broker, err = startRedis(ctx, filepath.Join(d.dir, "redis")); err != nil {
				return nil, err
			}
		}
	}
	d.url = d.broker.URL(params)

	logFile, err := os.Create(filepath.Join(d.dir, "drill.log"))
	if err != nil {
		return nil, err
	}
	logger := watermill.NewStdLoggerWithOut(logFile, false, false)
	openCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if d.backend, err = pubsub.Open(openCtx, d.url, logger); err != nil {
		return nil, fmt.Errorf("open %s: %w", d.url, err)
	}
	var ok bool
	if d.inspect, ok = d.backend.(tiered.Inspector); !ok {
		return nil, fmt.Errorf("the backend of %s cannot report lag (tiered.Inspector), which the drill needs to know when it drained", d.url)
	}
	if d.topics, err = d.policy.Topics("drill."+d.runID, "work", nil); err != nil {
		return nil, err
	}
	if err := d.backend.Prepare(openCtx, d.topics); err != nil {
		return nil, fmt.Errorf("prepare: %w", err)
	}
	return d, nil
}

func setDefault(v url.Values, key, value string) {
	if !v.Has(key) {
		v.Set(key, value)
	}
}

// findScript finds path relative to the module root, walking up from the
// working directory to go.mod.
func findScript(path string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, path)
			if _, err := os.Stat(p); err != nil {
				return "", err
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory: run the drill from the retry-kafka module")
		}
		dir = parent
	}
}

func (d *drill) close(success bool) {
	if d.backend != nil {
		_ = d.backend.Close()
	}
	if d.broker != nil {
		if err := d.broker.Stop(); err != nil {
			d.logf("stopping the broker: %v", err)
		}
	}
	if success && !d.c.Keep && d.c.WorkDir == "" {
		_ = os.RemoveAll(d.dir)
	} else {
		d.logf("journals and logs kept in %s", d.dir)
	}
}

// run publishes, injects the faults, waits for the drain, reads the
// dead-letter topic and judges.
func (d *drill) run(ctx context.Context) (result, error) {
	c := d.c
	d.started = time.Now()
	d.logf("run %s on %s: %d messages, %d consumer kills, %d broker restarts over %v, seed %d, work dir %s",
		d.runID, d.broker.Describe(), c.Messages, c.Kills, c.Restarts, c.Window, c.Seed, d.dir)

	msgs := d.messages(c.Messages)
	schedule := d.schedule()
	stopConsumers := d.startConsumers(ctx, c.Consumers, true)
	defer stopConsumers()

	// The producer pauses while a single broker is down, so that its own
	// retries add no duplicates there; on a cluster it keeps going.
	var gate sync.RWMutex
	produced := make(chan error, 1)
	go func() { produced <- d.produce(ctx, msgs, c.Window, &gate) }()
	faulted := make(chan error, 1)
	go func() { faulted <- d.inject(ctx, schedule, &gate) }()

	var producerDone, faultsDone bool
	var faultsEnd time.Time
	lastProgress := time.Now()
	for !producerDone || !faultsDone {
		select {
		case err := <-produced:
			if err != nil {
				return result{}, fmt.Errorf("produce: %w", err)
			}
			producerDone = true
			d.logf("published all %d messages", c.Messages)
		case err := <-faulted:
			if err != nil {
				return result{}, fmt.Errorf("faults: %w", err)
			}
			faultsDone, faultsEnd = true, time.Now()
			d.logf("all faults injected")
		case <-ctx.Done():
			return result{}, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		if err := d.track.poll(); err != nil {
			return result{}, err
		}
		if time.Since(lastProgress) >= 10*time.Second {
			lastProgress = time.Now()
			d.progress(-1)
		}
	}
	drained := d.waitDrained(ctx, faultsEnd.Add(c.DrainTimeout))
	stopConsumers()
	return d.finish(ctx, drained)
}

// messages makes n messages with plans drawn from [mix], and registers
// their plans.
func (d *drill) messages(n int) []*message.Message {
	return d.messagesWith(n, func() plan { return mix(d.rng, d.c.MaxAttempts) })
}

// messagesWith makes n messages with the plans draw gives, and registers
// their plans.
func (d *drill) messagesWith(n int, draw func() plan) []*message.Message {
	msgs := make([]*message.Message, 0, n)
	d.mu.Lock()
	defer d.mu.Unlock()
	for range n {
		p := draw()
		payload := make([]byte, 100+d.rng.IntN(400))
		for j := range payload {
			payload[j] = byte('a' + d.rng.IntN(26))
		}
		msg := message.NewMessage(watermill.NewUUID(), payload)
		p.write(msg.Metadata)
		d.plans[msg.UUID] = p
		msgs = append(msgs, msg)
	}
	return msgs
}

// startConsumers starts n consumer processes, each started again when it
// dies if restart is set. The returned func stops them all gracefully
// (SIGTERM) and waits; it may be called more than once.
func (d *drill) startConsumers(ctx context.Context, n int, restart bool) func() {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range n {
		p := &consumerProc{idx: len(d.procs), d: d, restart: restart}
		d.procs = append(d.procs, p)
		wg.Go(func() { p.supervise(ctx) })
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// waitDrained waits, until deadline, for every message that should succeed
// to have succeeded and every group of the handler to have caught up
// (three readings in a row, half a second apart: offsets are committed
// asynchronously). It reports whether that happened.
func (d *drill) waitDrained(ctx context.Context, deadline time.Time) bool {
	zeroLags := 0
	lastProgress := time.Now()
	for ctx.Err() == nil {
		if err := d.track.poll(); err != nil {
			d.logf("journal: %v", err)
			return false
		}
		lag := int64(-1)
		if d.track.allSucceeded() {
			var err error
			if lag, err = d.lag(ctx); err != nil {
				d.logf("lag: %v", err)
				lag = -1
			}
			if lag == 0 {
				zeroLags++
			} else {
				zeroLags = 0
			}
			if zeroLags >= 3 {
				d.track.drainedAt = time.Now()
				d.logf("drained: every message ended, every group caught up")
				return true
			}
		}
		if time.Since(lastProgress) >= 10*time.Second {
			lastProgress = time.Now()
			d.progress(lag)
		}
		if time.Now().After(deadline) {
			d.logf("not drained by %s", deadline.Format("15:04:05"))
			return false
		}
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	return false
}

func (d *drill) progress(lag int64) {
	d.mu.Lock()
	published, nfaults, total := d.published, len(d.faults), len(d.plans)
	d.mu.Unlock()
	lagText := "-"
	if lag >= 0 {
		lagText = fmt.Sprint(lag)
	}
	ok, want := d.track.successes()
	d.logf("published %d/%d, faults %d, handlings %d, succeeded %d/%d, lag %s",
		published, total, nfaults, len(d.track.handlings), ok, want, lagText)
}

// finish reads what is left of the journals and the whole dead-letter
// topic, once the consumers have stopped, and judges.
func (d *drill) finish(ctx context.Context, drained bool) (result, error) {
	if err := d.track.poll(); err != nil {
		return result{}, err
	}
	dead, err := d.readDeadLetters(ctx)
	if err != nil {
		return result{}, err
	}
	d.mu.Lock()
	ev := evidence{
		Plans:       d.plans,
		Republished: d.republished,
		Handlings:   d.track.handlings,
		DeadLetters: dead,
		Faults:      slices.Clone(d.faults),
		Delays:      d.c.Delays,
		MaxAttempts: d.c.MaxAttempts,
		Drained:     drained,
		DrainedAt:   d.track.drainedAt,
		Torn:        d.track.reader.torn(),
	}
	d.mu.Unlock()
	res := analyze(ev)
	d.report(res)
	return res, nil
}

// tracker follows the journals as the consumers write them.
type tracker struct {
	d         *drill
	reader    *journalReader
	handlings []handling
	succeeded map[string]bool
	drainedAt time.Time
}

func (t *tracker) poll() error {
	hs, err := t.reader.read()
	t.handlings = append(t.handlings, hs...)
	t.d.mu.Lock()
	defer t.d.mu.Unlock()
	for _, h := range hs {
		if _, known := t.d.plans[h.UUID]; known && h.Step == stepOK {
			t.succeeded[h.UUID] = true
		}
	}
	return err
}

// successes returns how many messages succeeded, and how many should.
func (t *tracker) successes() (ok, want int) {
	t.d.mu.Lock()
	defer t.d.mu.Unlock()
	for _, p := range t.d.plans {
		if p.expect(t.d.c.MaxAttempts) == succeeds {
			want++
		}
	}
	return len(t.succeeded), want
}

func (t *tracker) allSucceeded() bool {
	ok, want := t.successes()
	return ok == want
}

// plannedFault is a fault, gap after the fault before it ended (the
// first: after the start).
type plannedFault struct {
	kind faultKind
	gap  time.Duration
}

// schedule draws the faults: broker restarts at random places among the
// kills, each after a random gap (uniform between 0.2 and 1.8 times the
// window split evenly, at least a second) from the end of the fault
// before. Gaps count from ends, so that a slow broker restart does not
// bunch up the faults behind it.
func (d *drill) schedule() []plannedFault {
	n := d.c.Kills + d.c.Restarts
	kinds := make([]faultKind, 0, n)
	for range d.c.Kills {
		kinds = append(kinds, consumerKill)
	}
	for range d.c.Restarts {
		kinds = append(kinds, brokerRestart)
	}
	d.rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	mean := d.c.Window / time.Duration(n+1)
	out := make([]plannedFault, 0, n)
	for _, k := range kinds {
		gap := mean/5 + time.Duration(d.rng.Int64N(int64(mean*8/5)+1))
		out = append(out, plannedFault{kind: k, gap: max(gap, time.Second)})
	}
	return out
}

// produce publishes msgs evenly over the window. A publish that fails is
// retried with the same message (same UUID) until it succeeds; those UUIDs
// are left out of the duplicate counts.
func (d *drill) produce(ctx context.Context, msgs []*message.Message, window time.Duration, gate *sync.RWMutex) error {
	interval := window / time.Duration(len(msgs))
	pub := d.backend.Publisher()
	next := time.Now()
	for _, msg := range msgs {
		if wait := time.Until(next); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		next = next.Add(interval)
		for try := 0; ; try++ {
			gate.RLock()
			err := pub.Publish(d.topics.Main, msg)
			gate.RUnlock()
			if err == nil {
				break
			}
			d.mu.Lock()
			d.republished[msg.UUID] = true
			d.mu.Unlock()
			if try%20 == 0 {
				d.logf("publish %s failed (try %d), retrying: %v", msg.UUID, try+1, err)
			}
			select {
			case <-time.After(250 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		d.mu.Lock()
		d.published++
		d.mu.Unlock()
	}
	return nil
}

// inject runs the schedule.
func (d *drill) inject(ctx context.Context, schedule []plannedFault, gate *sync.RWMutex) error {
	prevEnd := d.started
	for _, f := range schedule {
		select {
		case <-time.After(time.Until(prevEnd.Add(f.gap))):
		case <-ctx.Done():
			return ctx.Err()
		}
		switch f.kind {
		case consumerKill:
			at := time.Now()
			detail := d.killConsumer()
			d.record(fault{Kind: consumerKill, At: at, End: at, Detail: detail})
			prevEnd = at
		case brokerRestart:
			single := d.c.Broker == "redis" || d.c.KafkaNodes == 1
			if single {
				gate.Lock()
			}
			at := time.Now()
			detail, err := d.broker.Crash(ctx, d.topics.Main)
			if err != nil {
				if single {
					gate.Unlock()
				}
				return err
			}
			d.logf("broker fault: %s; down for %v", detail, d.c.BrokerDown)
			select {
			case <-time.After(d.c.BrokerDown):
			case <-ctx.Done():
			}
			t0 := time.Now()
			err = d.broker.Recover(ctx)
			if single {
				gate.Unlock()
			}
			if err != nil {
				return fmt.Errorf("restart the broker: %w", err)
			}
			prevEnd = time.Now()
			d.record(fault{Kind: brokerRestart, At: at, End: prevEnd, Detail: detail})
			d.logf("broker back after %v (restart took %v)", time.Since(at).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
		}
	}
	return nil
}

func (d *drill) record(f fault) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.faults = append(d.faults, f)
}

// killConsumer sends SIGKILL to a consumer process chosen at random among
// those that run.
func (d *drill) killConsumer() string {
	var running []*consumerProc
	for _, p := range d.procs {
		if p.running() {
			running = append(running, p)
		}
	}
	if len(running) == 0 {
		d.logf("kill: no consumer process runs right now")
		return "no consumer running"
	}
	p := running[d.rng.IntN(len(running))]
	pid := p.kill()
	d.logf("kill -9 of consumer %d (pid %d)", p.idx, pid)
	return fmt.Sprintf("kill -9 of consumer %d (pid %d)", p.idx, pid)
}

// lag sums what the handler's groups have not consumed, on the main topic
// and on every tier.
func (d *drill) lag(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var sum int64
	for _, topic := range append([]string{d.topics.Main}, d.topics.Tiers...) {
		n, err := d.inspect.Lag(ctx, topic, d.topics.Group(topic))
		if err != nil {
			return 0, err
		}
		sum += n
	}
	return sum, nil
}

// readDeadLetters reads the whole dead-letter topic with a group of its
// own, once the consumers have stopped: records per UUID.
func (d *drill) readDeadLetters(ctx context.Context) (map[string]int, error) {
	group := "drill-dlq-reader." + d.runID
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	total, err := d.inspect.Lag(ctx, d.topics.DLQ, group)
	if err != nil {
		return nil, fmt.Errorf("size of %s: %w", d.topics.DLQ, err)
	}
	dead := map[string]int{}
	if total == 0 {
		return dead, nil
	}
	sub, err := d.backend.Subscriber(tiered.SubscribeParams{Group: group, Topic: d.topics.DLQ})
	if err != nil {
		return nil, err
	}
	defer sub.Close()
	ch, err := sub.Subscribe(ctx, d.topics.DLQ)
	if err != nil {
		return nil, err
	}
	for n := int64(0); n < total; n++ {
		select {
		case msg, ok := <-ch:
			if !ok {
				return nil, fmt.Errorf("dead-letter subscription closed after %d of %d records", n, total)
			}
			dead[msg.UUID]++
			msg.Ack()
		case <-ctx.Done():
			return nil, fmt.Errorf("read %d of %d dead-letter records: %w", n, total, ctx.Err())
		}
	}
	d.logf("read %d dead-letter records", total)
	return dead, nil
}

// consumerProc supervises one consumer process: it starts it, and starts it
// again when it dies (killed by the drill, or failed to start while the
// broker was down).
type consumerProc struct {
	idx     int
	d       *drill
	restart bool // start it again after a kill

	mu     sync.Mutex
	cmd    *exec.Cmd
	killed bool
}

// running reports whether the process runs and was not killed yet.
func (p *consumerProc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && p.cmd.Process != nil && !p.killed
}

func (p *consumerProc) kill() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	p.killed = true
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	return p.cmd.Process.Pid
}

func (p *consumerProc) supervise(ctx context.Context) {
	d := p.d
	self, err := os.Executable()
	if err != nil {
		d.logf("consumer %d: %v", p.idx, err)
		return
	}
	cc := consumerConfig{URL: d.url, Topic: d.topics.Main, Handler: d.topics.Handler, Policy: d.policy, Dir: d.journal}
	logPath := filepath.Join(d.dir, fmt.Sprintf("consumer-%d.log", p.idx))
	for ctx.Err() == nil {
		out, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			d.logf("consumer %d: %v", p.idx, err)
			return
		}
		cmd := exec.Command(self, append([]string{"consume"}, cc.args()...)...)
		cmd.Stdout, cmd.Stderr = out, out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			_ = out.Close()
			d.logf("consumer %d: start: %v", p.idx, err)
			return
		}
		p.mu.Lock()
		p.cmd, p.killed = cmd, false
		p.mu.Unlock()

		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		var werr error
		select {
		case werr = <-exited:
		case <-ctx.Done():
			// The end: a graceful stop, as a deploy would do it.
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case werr = <-exited:
			case <-time.After(60 * time.Second):
				d.logf("consumer %d ignored SIGTERM for 60s, killing it", p.idx)
				_ = cmd.Process.Kill()
				werr = <-exited
			}
		}
		_ = out.Close()
		p.mu.Lock()
		killed := p.killed
		p.cmd = nil
		p.mu.Unlock()
		if ctx.Err() != nil {
			if werr != nil {
				d.logf("consumer %d ended: %v", p.idx, werr)
			}
			return
		}
		if killed && !p.restart {
			return
		}
		if !killed {
			// Not our kill: it could not start (broker down) or failed.
			d.logf("consumer %d exited by itself (%v); see %s; restarting it in 1s", p.idx, werr, logPath)
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				return
			}
		}
	}
}

func parseDelays(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, f := range strings.Split(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

func formatDelays(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = d.String()
	}
	return strings.Join(s, ",")
}
