package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"

	"github.com/retry-kafka/retry-kafka/middleware"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// The tests of this package run middleware.Retry on a real Watermill router
// over GoChannel, in real time: outcomes are awaited with require.Eventually,
// never with a sleep.

const (
	waitFor = 5 * time.Second
	tick    = time.Millisecond
)

var errBrokerDown = errors.New("broker unavailable")

// published is one message that reached the broker through the retry
// middleware, as the publisher saw it.
type published struct {
	topic string
	msg   *message.Message
	// ctxErr, hasDeadline and subscribeTopic describe the copy's context at
	// the moment it was published.
	ctxErr         error
	hasDeadline    bool
	subscribeTopic string
}

// brokerPublisher records what it publishes and fails the first
// failures[topic] publishes to a topic, like a broker that is down for a
// while.
type brokerPublisher struct {
	next message.Publisher

	mu       sync.Mutex
	failures map[string]int
	// tooLarge refuses, as tiered.ErrUnpublishable, the messages to a
	// topic that carry a payload, like a broker refusing a record that grew
	// too large: a dead-letter stub passes.
	tooLarge  map[string]bool
	failedOn  map[string]int
	published []published
}

// failed returns how many publishes to topic failed.
func (p *brokerPublisher) failed(topic string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failedOn[topic]
}

func (p *brokerPublisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	if p.failures[topic] > 0 {
		p.failures[topic]--
		if p.failedOn == nil {
			p.failedOn = map[string]int{}
		}
		p.failedOn[topic]++
		p.mu.Unlock()
		return errBrokerDown
	}
	if p.tooLarge[topic] {
		for _, m := range msgs {
			if len(m.Payload) > 0 {
				if p.failedOn == nil {
					p.failedOn = map[string]int{}
				}
				p.failedOn[topic]++
				p.mu.Unlock()
				return fmt.Errorf("record too large: %w", tiered.ErrUnpublishable)
			}
		}
	}
	for _, m := range msgs {
		_, hasDeadline := m.Context().Deadline()
		p.published = append(p.published, published{
			topic:          topic,
			msg:            m,
			ctxErr:         m.Context().Err(),
			hasDeadline:    hasDeadline,
			subscribeTopic: message.SubscribeTopicFromCtx(m.Context()),
		})
	}
	p.mu.Unlock()
	return p.next.Publish(topic, msgs...)
}

func (p *brokerPublisher) Close() error { return nil }

func (p *brokerPublisher) on(topic string) []published {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []published
	for _, m := range p.published {
		if m.topic == topic {
			out = append(out, m)
		}
	}
	return out
}

func (p *brokerPublisher) all() []published {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]published(nil), p.published...)
}

type rigConfig struct {
	policy tiered.Policy
	// failures makes the first n publishes to a topic fail.
	failures map[string]int
	// tooLarge makes the publishes of copies with a payload to a topic
	// fail with tiered.ErrUnpublishable.
	tooLarge map[string]bool
	// registerer and tracing go to middleware.Config.
	registerer prometheus.Registerer
	tracing    trace.TracerProvider
	// before are router middleware added before the retry middleware
	// (they run outside it), after are added after it (inside).
	before, after []message.HandlerMiddleware
	// tiers also consumes the tier topics (with no hold), so messages walk
	// every hop.
	tiers bool
	// transform runs on each message the router receives, before the
	// middleware.
	transform func(*message.Message)
	handler   message.NoPublishHandlerFunc
}

// rig is a router with one handler "billing" on "orders" behind the retry
// middleware, over a GoChannel.
type rig struct {
	pub   *brokerPublisher
	retry *middleware.Retry
	gc    *gochannel.GoChannel

	mu        sync.Mutex
	calls     []string // topic of each handler call
	delivered map[string][]*message.Message
	acks      map[string]int
	nacks     map[string]int
	errs      []error // errors the router got back (and Nacked for)
}

func newRig(t *testing.T, cfg rigConfig) *rig {
	t.Helper()
	gc := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	rg := &rig{
		pub:       &brokerPublisher{next: gc, failures: cfg.failures, tooLarge: cfg.tooLarge},
		gc:        gc,
		delivered: map[string][]*message.Message{},
		acks:      map[string]int{},
		nacks:     map[string]int{},
	}
	retry, err := middleware.NewRetry(middleware.Config{
		Publisher:       rg.pub,
		Policy:          cfg.policy,
		Topic:           "orders",
		Handler:         "billing",
		Registerer:      cfg.registerer,
		TracerProvider:  cfg.tracing,
		MessagingSystem: "gochannel",
	}, nil)
	require.NoError(t, err)
	rg.retry = retry

	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: waitFor}, watermill.NopLogger{})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	r.AddSubscriberDecorators(message.MessageTransformSubscriberDecorator(func(m *message.Message) { rg.watch(ctx, m) }))
	if cfg.transform != nil {
		r.AddSubscriberDecorators(message.MessageTransformSubscriberDecorator(cfg.transform))
	}
	r.AddMiddleware(rg.recordErrors)
	r.AddMiddleware(cfg.before...)

	handler := func(msg *message.Message) error {
		rg.mu.Lock()
		rg.calls = append(rg.calls, message.SubscribeTopicFromCtx(msg.Context()))
		rg.mu.Unlock()
		return cfg.handler(msg)
	}
	r.AddConsumerHandler("billing", "orders", gc, handler).AddMiddleware(retry.Middleware)
	if cfg.tiers {
		for i, topic := range retry.Topics().Tiers {
			mw, err := retry.TierMiddleware(i + 1)
			require.NoError(t, err)
			r.AddConsumerHandler("billing.tier"+string(rune('1'+i)), topic, gc, handler).AddMiddleware(mw)
		}
	}
	r.AddMiddleware(cfg.after...)

	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	<-r.Running()
	t.Cleanup(func() {
		require.NoError(t, r.Close())
		require.NoError(t, <-done)
		cancel()
		require.NoError(t, gc.Close())
	})
	return rg
}

// watch records each delivery to the router and whether it was acked or
// Nacked.
func (rg *rig) watch(ctx context.Context, m *message.Message) {
	topic := message.SubscribeTopicFromCtx(m.Context())
	rg.mu.Lock()
	rg.delivered[topic] = append(rg.delivered[topic], m)
	rg.mu.Unlock()
	go func() {
		select {
		case <-m.Acked():
			rg.mu.Lock()
			rg.acks[topic]++
			rg.mu.Unlock()
		case <-m.Nacked():
			rg.mu.Lock()
			rg.nacks[topic]++
			rg.mu.Unlock()
		case <-ctx.Done():
		}
	}()
}

func (rg *rig) recordErrors(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := h(msg)
		if err != nil {
			rg.mu.Lock()
			rg.errs = append(rg.errs, err)
			rg.mu.Unlock()
		}
		return out, err
	}
}

func (rg *rig) publish(t *testing.T, msg *message.Message) {
	t.Helper()
	require.NoError(t, rg.gc.Publish("orders", msg))
}

// settled reports whether topic's deliveries were all acked or Nacked, and
// at least one was acked.
func (rg *rig) settled(topic string) bool {
	rg.mu.Lock()
	defer rg.mu.Unlock()
	return rg.acks[topic] > 0 && rg.acks[topic]+rg.nacks[topic] == len(rg.delivered[topic])
}

func (rg *rig) snapshot() (calls []string, acks, nacks map[string]int, errs []error) {
	rg.mu.Lock()
	defer rg.mu.Unlock()
	acks, nacks = map[string]int{}, map[string]int{}
	for k, v := range rg.acks {
		acks[k] = v
	}
	for k, v := range rg.nacks {
		nacks[k] = v
	}
	return append([]string(nil), rg.calls...), acks, nacks, append([]error(nil), rg.errs...)
}
