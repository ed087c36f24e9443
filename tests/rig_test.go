package tests_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/retry-kafka/retry-kafka/dlq"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// Metadata keys that plan what the suite's handlers do with a message. They
// travel with the message through every tier, so a handler decides from the
// message alone, the same way on a duplicate.
const (
	// metaFail is how many attempts fail with a retryable error: attempts
	// 1..n fail, attempt n+1 succeeds. "1" fails on the main topic and
	// succeeds from tier 1.
	metaFail = "test_fail_attempts"
	// metaPermanent is the attempt that fails with a permanent error.
	metaPermanent = "test_permanent_at"
	// metaSentinel marks the messages of [rig.flush]: they fail on every
	// attempt, in every handler.
	metaSentinel = "test_sentinel"
	// metaTooLarge marks a message whose copies the rig's publisher refuses
	// as tiered.ErrUnpublishable while they carry a payload, like a broker
	// refusing a record that grew too large with its retry metadata. A
	// dead-letter stub (no payload) passes.
	metaTooLarge = "test_too_large"
)

// waitFor bounds every wait for an outcome.
const waitFor = 60 * time.Second

// tick is how often a wait polls.
const tick = 10 * time.Millisecond

// call is one run of a handler on one message.
type call struct {
	handler string
	msg     *message.Message
	uuid    string
	topic   string    // consumed from
	tier    int       // 0 on the main topic, i+1 on Topics.Tiers[i], -1 on a retired tier
	attempt int       // 1 on the main topic, retry_attempt+1 on a tier
	at      time.Time // wall clock, like due times
	due     time.Time // the due time the message carried (zero on main)
	run     int       // which router of the rig (restarts)
	err     error
}

func (c call) sentinel() bool { return c.msg.Metadata.Get(metaSentinel) != "" }

// deadLetter is one message read from a handler's dead-letter topic.
type deadLetter struct {
	handler string
	msg     *message.Message
	at      time.Time
}

func (d deadLetter) sentinel() bool { return d.msg.Metadata.Get(metaSentinel) != "" }

// handlerFunc is a handler of the suite; the rig records its calls.
type handlerFunc func(c call) error

// planned follows the plan in the message's metadata (metaFail,
// metaPermanent).
func planned(c call) error {
	if n, err := strconv.Atoi(c.msg.Metadata.Get(metaPermanent)); err == nil && c.attempt >= n {
		return fmt.Errorf("attempt %d: %w", c.attempt, tiered.Permanent(errors.New("planned permanent failure")))
	}
	n, _ := strconv.Atoi(c.msg.Metadata.Get(metaFail))
	if c.attempt <= n {
		return fmt.Errorf("planned failure %d of %d", c.attempt, n)
	}
	return nil
}

// newMsg returns a message with key and a plan: fail attempts fail.
func newMsg(key string, fail int) *message.Message {
	msg := message.NewMessage(watermill.NewUUID(), []byte("payload-"+watermill.NewShortUUID()))
	msg.Metadata.Set(KeyMetadata, key)
	msg.Metadata.Set(metaFail, strconv.Itoa(fail))
	return msg
}

// rig runs handlers with tiered retries on a Watermill router over one
// backend, one topic, one policy, and records every handler call, every
// dead letter and every publish the retry middleware makes.
type rig struct {
	t       *testing.T
	b       Backend
	backend *recordingBackend
	topic   string
	policy  tiered.Policy
	logger  *levelLogger

	specs      []spec
	middleware []message.HandlerMiddleware // router middleware, outside the retry middleware
	topics     map[string]tiered.Topics    // by handler name
	handlers   map[string]*router.Handler  // by handler name, of the running router

	// metrics and tracing, when set by observe, go to every router the
	// rig starts: one registry and one tracer provider for all of them.
	metrics *prometheus.Registry
	tracing *sdktrace.TracerProvider
	spans   *tracetest.InMemoryExporter
	dlq     *dlq.Client // the dead-letter depth of the metrics; nil on mem

	mu     sync.Mutex
	calls  []call
	dead   []deadLetter
	run    int
	stopFn func()
}

type spec struct {
	name string
	fn   handlerFunc
}

// newRig makes a fresh backend of b for t.
func newRig(t *testing.T, b Backend, policy tiered.Policy) *rig {
	t.Helper()
	logger := newLevelLogger(t)
	return &rig{
		t:        t,
		b:        b,
		backend:  &recordingBackend{Backend: b.New(t)},
		topic:    uniqueTopic(t),
		policy:   policy,
		logger:   logger,
		topics:   map[string]tiered.Topics{},
		handlers: map[string]*router.Handler{},
	}
}

// handle adds a handler to the routers the rig starts.
func (r *rig) handle(name string, fn handlerFunc) *rig {
	r.specs = append(r.specs, spec{name: name, fn: fn})
	return r
}

// observe gives the routers the rig starts a Prometheus registry
// (r.metrics), a tracer provider whose ended spans r.spans keeps and,
// where the dlq package supports the backend, a dlq.Client for the depth
// of the dead-letter topics (r.dlq).
func (r *rig) observe() *rig {
	r.metrics = prometheus.NewRegistry()
	r.spans = tracetest.NewInMemoryExporter()
	r.tracing = sdktrace.NewTracerProvider(sdktrace.WithSyncer(r.spans))
	r.t.Cleanup(func() { _ = r.tracing.Shutdown(context.Background()) })
	client, err := dlq.New(dlq.Config{Backend: r.backend.Backend}, r.logger)
	if !errors.Is(err, dlq.ErrUnsupportedBackend) {
		require.NoError(r.t, err)
		r.dlq = client
		r.t.Cleanup(func() { _ = client.Close() })
	}
	return r
}

// use adds router middleware to the routers the rig starts. Router
// middleware runs outside the retry middleware of each handler.
func (r *rig) use(m ...message.HandlerMiddleware) *rig {
	r.middleware = append(r.middleware, m...)
	return r
}

// start runs a router with every handler (and a reader of each handler's
// dead-letter topic) and returns once it runs. It is closed when the test
// ends, or by stop.
func (r *rig) start() {
	t := r.t
	t.Helper()
	r.mu.Lock()
	r.run++
	run := r.run
	r.mu.Unlock()

	wr, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, r.logger)
	require.NoError(t, err)
	wr.AddMiddleware(r.middleware...)
	config := router.Config{Backend: r.backend, Policy: r.policy}
	if r.metrics != nil {
		config.Registerer, config.TracerProvider = r.metrics, r.tracing
	}
	if r.dlq != nil {
		config.DeadLetters = r.dlq
	}
	retrying, err := router.New(config, r.logger)
	require.NoError(t, err)
	for _, s := range r.specs {
		h, err := retrying.AddConsumerHandler(wr, s.name, r.topic, r.record(s, run))
		require.NoError(t, err)
		r.mu.Lock()
		r.topics[s.name] = h.Topics
		r.handlers[s.name] = h
		r.mu.Unlock()

		reader := s.name + ".dlq-reader"
		sub, err := r.backend.Subscriber(tiered.SubscribeParams{Group: reader, Topic: h.Topics.DLQ})
		require.NoError(t, err)
		wr.AddConsumerHandler(reader, h.Topics.DLQ, sub, func(msg *message.Message) error {
			r.mu.Lock()
			r.dead = append(r.dead, deadLetter{handler: s.name, msg: msg.Copy(), at: time.Now().Round(0)})
			r.mu.Unlock()
			return nil
		})
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := wr.Run(ctx); err != nil {
			t.Errorf("router run %d: %v", run, err)
		}
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = wr.Close()
			cancel()
			<-done
		})
	}
	t.Cleanup(stop)
	r.mu.Lock()
	r.stopFn = stop
	r.mu.Unlock()
	select {
	case <-wr.Running():
	case <-time.After(waitFor):
		t.Fatalf("router run %d did not start within %v", run, waitFor)
	}
}

// stop closes the running router and waits until it stopped.
func (r *rig) stop() {
	r.mu.Lock()
	stop := r.stopFn
	r.mu.Unlock()
	stop()
}

// record wraps s for the router of run.
func (r *rig) record(s spec, run int) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		c := call{
			handler: s.name,
			msg:     msg.Copy(),
			uuid:    msg.UUID,
			topic:   message.SubscribeTopicFromCtx(msg.Context()),
			attempt: 1,
			at:      time.Now().Round(0),
			run:     run,
		}
		r.mu.Lock()
		topics := r.topics[s.name]
		r.mu.Unlock()
		if c.topic != "" && c.topic != r.topic {
			c.tier = slices.Index(topics.Tiers, c.topic) + 1 // 0 for a retired tier
			if c.tier == 0 {
				c.tier = -1
			}
			info, err := tiered.ReadInfo(msg.Metadata)
			if err != nil {
				c.attempt = -1
			} else {
				c.attempt = info.Attempt + 1
			}
			c.due, _, _ = tiered.DueAt(msg.Metadata)
		}
		if c.sentinel() {
			c.err = errors.New("sentinel")
		} else {
			c.err = s.fn(c)
		}
		r.mu.Lock()
		r.calls = append(r.calls, c)
		r.mu.Unlock()
		return c.err
	}
}

// publish publishes msgs to the rig's topic, one by one, in order.
func (r *rig) publish(msgs ...*message.Message) {
	r.t.Helper()
	for _, msg := range msgs {
		require.NoError(r.t, r.tryPublish(msg))
	}
}

// tryPublish publishes msg to the rig's topic; it may run on any goroutine.
func (r *rig) tryPublish(msg *message.Message) error {
	if err := r.backend.Backend.Publisher().Publish(r.topic, msg); err != nil {
		return fmt.Errorf("publish %s to %s: %w", msg.UUID, r.topic, err)
	}
	return nil
}

// snapshot copies what the rig recorded so far.
func (r *rig) snapshot() ([]call, []deadLetter) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls), slices.Clone(r.dead)
}

// deadLetterOf returns the first dead letter read with the UUID uuid, or
// nil.
func (r *rig) deadLetterOf(uuid string) *message.Message {
	_, dead := r.snapshot()
	for _, d := range dead {
		if d.msg.UUID == uuid {
			return d.msg
		}
	}
	return nil
}

// handlerTopics returns the topics of handler name.
func (r *rig) handlerTopics(name string) tiered.Topics {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.topics[name]
}

// waitUntil polls cond until it holds, failing the test after waitFor.
func (r *rig) waitUntil(what string, cond func(calls []call, dead []deadLetter) bool) {
	r.t.Helper()
	r.waitUntilBefore(time.Now().Add(waitFor), what, cond)
}

// waitUntilBefore polls cond until it holds, failing the test at deadline.
func (r *rig) waitUntilBefore(deadline time.Time, what string, cond func(calls []call, dead []deadLetter) bool) {
	r.t.Helper()
	start := time.Now()
	for {
		calls, dead := r.snapshot()
		if cond(calls, dead) {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("waited %v for %s; %d calls and %d dead letters recorded", time.Since(start).Round(time.Millisecond), what, len(calls), len(dead))
		}
		time.Sleep(tick)
	}
}

// waitOutcomes waits until every message of uuids succeeded in handler or
// was dead-lettered by it.
func (r *rig) waitOutcomes(handler string, uuids []string) {
	r.t.Helper()
	r.waitOutcomesBefore(time.Now().Add(waitFor), handler, uuids)
}

// waitOutcomesBefore is waitOutcomes with a deadline.
func (r *rig) waitOutcomesBefore(deadline time.Time, handler string, uuids []string) {
	r.t.Helper()
	r.waitUntilBefore(deadline, fmt.Sprintf("an outcome for each of %d messages in %s", len(uuids), handler), func(calls []call, dead []deadLetter) bool {
		done := outcomes(handler, calls, dead)
		for _, id := range uuids {
			if o := done[id]; o.succeeded == 0 && o.dead == 0 {
				return false
			}
		}
		return true
	})
}

// flush sends a sentinel per key through handlers: it fails on every
// attempt, so it walks every tier and lands in each handler's dead-letter
// topic. Where a backend keeps order per key, anything a handler put into
// a tier or dead-letter topic before the flush, with one of keys, has been
// handled or read once flush returns.
func (r *rig) flush(keys []string, handlers ...string) {
	r.t.Helper()
	want := map[string]bool{}
	for _, key := range keys {
		msg := newMsg(key, 0)
		msg.Metadata.Set(metaSentinel, "1")
		want[msg.UUID] = true
		r.publish(msg)
	}
	r.waitUntil("the flush sentinels in every dead-letter topic", func(_ []call, dead []deadLetter) bool {
		for _, h := range handlers {
			n := 0
			seen := map[string]bool{}
			for _, d := range dead {
				if d.handler == h && want[d.msg.UUID] && !seen[d.msg.UUID] {
					seen[d.msg.UUID] = true
					n++
				}
			}
			if n < len(want) {
				return false
			}
		}
		return true
	})
}

// outcome counts how a message ended in one handler.
type outcome struct{ succeeded, dead int }

// outcomes counts, by UUID, the successful calls of handler and its dead
// letters, sentinels left out.
func outcomes(handler string, calls []call, dead []deadLetter) map[string]outcome {
	out := map[string]outcome{}
	for _, c := range calls {
		if c.handler == handler && c.err == nil && !c.sentinel() {
			o := out[c.uuid]
			o.succeeded++
			out[c.uuid] = o
		}
	}
	for _, d := range dead {
		if d.handler == handler && !d.sentinel() {
			o := out[d.msg.UUID]
			o.dead++
			out[d.msg.UUID] = o
		}
	}
	return out
}

// callsOf returns the calls of handler on the message uuid, in order.
func callsOf(calls []call, handler, uuid string) []call {
	var out []call
	for _, c := range calls {
		if c.handler == handler && c.uuid == uuid {
			out = append(out, c)
		}
	}
	return out
}

// tiersOf returns the tier of each call.
func tiersOf(calls []call) []int {
	out := make([]int, len(calls))
	for i, c := range calls {
		out[i] = c.tier
	}
	return out
}

// recordingBackend records every publish of the retry middleware and can
// fail publishes to tier and dead-letter topics.
type recordingBackend struct {
	tiered.Backend

	mu       sync.Mutex
	retry    map[string]bool // tier and dead-letter topics, from Prepare
	failLeft int             // publishes to retry topics still to fail
	injected int             // publishes failed so far
	pubs     []publishRecord
}

// publishRecord is one message the middleware published.
type publishRecord struct {
	topic, uuid string
	at, due     time.Time
	err         error
}

// failRetryPublishes makes the next n publishes to tier or dead-letter
// topics fail.
func (b *recordingBackend) failRetryPublishes(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failLeft = n
}

func (b *recordingBackend) Prepare(ctx context.Context, topics tiered.Topics) error {
	b.mu.Lock()
	if b.retry == nil {
		b.retry = map[string]bool{}
	}
	for _, tier := range topics.Tiers {
		b.retry[tier] = true
	}
	b.retry[topics.DLQ] = true
	b.mu.Unlock()
	return b.Backend.Prepare(ctx, topics)
}

func (b *recordingBackend) Publisher() message.Publisher { return recordingPublisher{b} }

// ListTopics and Lag pass the backend's tiered.Inspector through, so that
// the router finds retired tiers behind the recording.
func (b *recordingBackend) ListTopics(ctx context.Context, prefix string) ([]string, error) {
	in, ok := b.Backend.(tiered.Inspector)
	if !ok {
		return nil, fmt.Errorf("%T: %w", b.Backend, errors.ErrUnsupported)
	}
	return in.ListTopics(ctx, prefix)
}

func (b *recordingBackend) Lag(ctx context.Context, topic, group string) (int64, error) {
	in, ok := b.Backend.(tiered.Inspector)
	if !ok {
		return 0, fmt.Errorf("%T: %w", b.Backend, errors.ErrUnsupported)
	}
	return in.Lag(ctx, topic, group)
}

// MessagingSystem passes the backend's name through, for the spans.
func (b *recordingBackend) MessagingSystem() string {
	if ms, ok := b.Backend.(tiered.MessagingSystem); ok {
		return ms.MessagingSystem()
	}
	return ""
}

// published returns what was published so far.
func (b *recordingBackend) published() []publishRecord {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.pubs)
}

func (b *recordingBackend) injectedFailures() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.injected
}

type recordingPublisher struct{ b *recordingBackend }

func (p recordingPublisher) Publish(topic string, msgs ...*message.Message) error {
	b := p.b
	now := time.Now()
	b.mu.Lock()
	if b.retry[topic] && b.failLeft > 0 {
		b.failLeft--
		b.injected++
		err := fmt.Errorf("injected publish failure %d", b.injected)
		for _, msg := range msgs {
			b.pubs = append(b.pubs, publishRecord{topic: topic, uuid: msg.UUID, at: now, err: err})
		}
		b.mu.Unlock()
		return err
	}
	if b.retry[topic] {
		for _, msg := range msgs {
			if msg.Metadata.Get(metaTooLarge) != "" && len(msg.Payload) > 0 {
				err := fmt.Errorf("record of %d bytes is too large: %w", len(msg.Payload), tiered.ErrUnpublishable)
				b.pubs = append(b.pubs, publishRecord{topic: topic, uuid: msg.UUID, at: now, err: err})
				b.mu.Unlock()
				return err
			}
		}
	}
	b.mu.Unlock()
	err := b.Backend.Publisher().Publish(topic, msgs...)
	b.mu.Lock()
	for _, msg := range msgs {
		due, _, _ := tiered.DueAt(msg.Metadata)
		b.pubs = append(b.pubs, publishRecord{topic: topic, uuid: msg.UUID, at: now, due: due, err: err})
	}
	b.mu.Unlock()
	return err
}

func (recordingPublisher) Close() error { return nil }

// levelLogger keeps Info and above and prints them if the test fails.
type levelLogger struct {
	watermill.LoggerAdapter
	capture *watermill.CaptureLoggerAdapter
}

func newLevelLogger(t *testing.T) *levelLogger {
	capture := watermill.NewCaptureLogger()
	t.Cleanup(func() {
		if t.Failed() {
			capture.PrintCaptured(t)
		}
	})
	return &levelLogger{LoggerAdapter: capture, capture: capture}
}

func (l *levelLogger) Debug(string, watermill.LogFields) {}
func (l *levelLogger) Trace(string, watermill.LogFields) {}
func (l *levelLogger) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return &levelLogger{LoggerAdapter: l.LoggerAdapter.With(fields), capture: l.capture}
}
