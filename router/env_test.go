package router_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/pubsub/memory"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// Most tests here run the whole thing (a Watermill router, the retrier,
// the in-memory backend) inside a testing/synctest bubble: time.Now() is the
// bubble's clock, which only moves when every goroutine waits, so tier
// delays of minutes take no real time and the moment a handler runs can be
// asserted exactly. Waits are guarded: time.After(forever) fires at once
// when nothing else can happen, and a runaway redelivery loop (which would
// keep the clock from moving) ends the wait through env.runaway.

const (
	forever         = 1000 * time.Hour
	runawayDelivers = 500
)

// call is one run of a handler.
type call struct {
	topic   string        // the topic the message was consumed from
	at      time.Duration // since env.start
	attempt string        // retry_attempt the message carried
	tier    string        // retry_tier the message carried
}

type envConfig struct {
	backend    tiered.Backend // nil means a new memory backend
	policy     tiered.Policy
	topicName  tiered.TopicNamer
	middleware []message.HandlerMiddleware // router middleware, added before any handler
}

type env struct {
	t       *testing.T
	start   time.Time
	backend tiered.Backend
	router  *message.Router
	retrier *router.Retrier

	runaway     chan struct{}
	runawayOnce sync.Once
	closed      chan struct{} // closed when the test ends
	deliveries  atomic.Int64

	mu    sync.Mutex
	calls []call
	acks  map[string]int // per topic, messages the router acked
	nacks map[string]int // per topic, messages the router Nacked
}

// newEnv must be called inside a synctest bubble (or not, for tests that
// poll in real time).
func newEnv(t *testing.T, cfg envConfig) *env {
	t.Helper()
	e := &env{t: t, start: time.Now(), backend: cfg.backend, runaway: make(chan struct{}), closed: make(chan struct{}), acks: map[string]int{}, nacks: map[string]int{}}
	if e.backend == nil {
		e.backend = memory.New(nil)
	}
	t.Cleanup(func() {
		close(e.closed)
		require.NoError(t, e.backend.Close())
	})

	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	e.router = r
	r.AddSubscriberDecorators(message.MessageTransformSubscriberDecorator(e.watch))
	r.AddMiddleware(cfg.middleware...)

	e.retrier, err = router.New(router.Config{Backend: e.backend, Policy: cfg.policy, TopicName: cfg.topicName}, nil)
	require.NoError(t, err)
	return e
}

// watch counts deliveries to the router, stops a runaway loop, and records
// whether each delivery was acked or Nacked.
func (e *env) watch(m *message.Message) {
	if e.deliveries.Add(1) > runawayDelivers {
		e.runawayOnce.Do(func() { close(e.runaway) })
	}
	topic := message.SubscribeTopicFromCtx(m.Context())
	go func() {
		select {
		case <-m.Acked():
			e.mu.Lock()
			e.acks[topic]++
			e.mu.Unlock()
		case <-m.Nacked():
			e.mu.Lock()
			e.nacks[topic]++
			e.mu.Unlock()
		case <-e.closed:
		}
	}()
}

// handle adds a handler with tiered retries that records each call and
// then runs h. n is the 1-based number of the call.
func (e *env) handle(name, topic string, h func(n int, msg *message.Message) error) *router.Handler {
	e.t.Helper()
	var n atomic.Int64
	added, err := e.retrier.AddConsumerHandler(e.router, name, topic, func(msg *message.Message) error {
		e.record(msg)
		return h(int(n.Add(1)), msg)
	})
	require.NoError(e.t, err)
	return added
}

func (e *env) record(msg *message.Message) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, call{
		topic:   message.SubscribeTopicFromCtx(msg.Context()),
		at:      time.Since(e.start),
		attempt: msg.Metadata.Get(tiered.KeyAttempt),
		tier:    msg.Metadata.Get(tiered.KeyTier),
	})
}

// run starts the router; it is closed when the test ends.
func (e *env) run() {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.router.Run(ctx) }()
	<-e.router.Running()
	e.t.Cleanup(func() {
		require.NoError(e.t, e.router.Close())
		require.NoError(e.t, <-done)
		cancel()
	})
}

func (e *env) publish(topic string, msg *message.Message) {
	e.t.Helper()
	require.NoError(e.t, e.backend.Publisher().Publish(topic, msg))
}

// settle lets the bubble's clock run far past every delay, then waits
// until every goroutine is blocked: whatever was going to happen happened.
func (e *env) settle() {
	e.t.Helper()
	select {
	case <-time.After(24 * time.Hour):
	case <-e.runaway:
		e.t.Fatalf("more than %d deliveries: a message is looping", runawayDelivers)
	}
	synctest.Wait()
}

// sleepUntil moves the bubble's clock to start+at and lets everything due
// by then happen.
func (e *env) sleepUntil(at time.Duration) {
	e.t.Helper()
	select {
	case <-time.After(at - time.Since(e.start)):
	case <-e.runaway:
		e.t.Fatalf("more than %d deliveries: a message is looping", runawayDelivers)
	}
	synctest.Wait()
}

func (e *env) recorded() []call {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]call(nil), e.calls...)
}

func (e *env) counts(topic string) (acks, nacks int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.acks[topic], e.nacks[topic]
}

// collector reads a topic on its own subscription (as another consumer
// group would), so tests see what was published there.
type collector struct {
	e     *env
	topic string
	ch    chan *message.Message
}

func (e *env) collect(topic string) *collector {
	e.t.Helper()
	sub, err := e.backend.Subscriber(tiered.SubscribeParams{Group: "test-collector", Topic: topic})
	require.NoError(e.t, err)
	in, err := sub.Subscribe(context.Background(), topic)
	require.NoError(e.t, err)
	c := &collector{e: e, topic: topic, ch: make(chan *message.Message, 2*runawayDelivers)}
	go func() {
		for m := range in {
			m.Ack()
			select {
			case c.ch <- m:
			default:
			}
		}
	}()
	e.t.Cleanup(func() { require.NoError(e.t, sub.Close()) })
	return c
}

// next returns the next message published on the topic.
func (c *collector) next() *message.Message {
	c.e.t.Helper()
	select {
	case m := <-c.ch:
		return m
	case <-c.e.runaway:
		c.e.t.Fatalf("more than %d deliveries while waiting on %s: a message is looping", runawayDelivers, c.topic)
	case <-time.After(forever):
		c.e.t.Fatalf("nothing was published on %s", c.topic)
	}
	return nil
}

// requireEmpty fails if a message was published on the topic that the
// test did not read. Call it after settle.
func (c *collector) requireEmpty() {
	c.e.t.Helper()
	select {
	case m := <-c.ch:
		c.e.t.Fatalf("unexpected message %s on %s (attempt %q, reason %q)",
			m.UUID, c.topic, m.Metadata.Get(tiered.KeyAttempt), m.Metadata.Get("reason_poisoned"))
	default:
	}
}

// collectAll collects the handler's tier and dead-letter topics.
func (e *env) collectAll(topics tiered.Topics) (tiers []*collector, dlq *collector) {
	for _, topic := range topics.Tiers {
		tiers = append(tiers, e.collect(topic))
	}
	return tiers, e.collect(topics.DLQ)
}
