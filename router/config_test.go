package router_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/pubsub/memory"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

func TestNew_rejectsInvalidConfig(t *testing.T) {
	backend := memory.New(nil)
	defer backend.Close()
	tests := []struct {
		name     string
		config   router.Config
		wantIs   error
		wantText []string
	}{
		{"nil Backend", router.Config{Policy: tiered.Policy{Delays: []time.Duration{time.Second}}}, nil, []string{"Backend is nil"}},
		{"MaxAttempts > 1 with no Delays", router.Config{Backend: backend, Policy: tiered.Policy{MaxAttempts: 4}}, tiered.ErrInvalidPolicy, []string{"MaxAttempts is 4 but Delays is empty"}},
		{"zero delay", router.Config{Backend: backend, Policy: tiered.Policy{Delays: []time.Duration{time.Second, 0}}}, tiered.ErrInvalidPolicy, []string{"Delays[1] is 0s, must be positive"}},
		{"negative delay", router.Config{Backend: backend, Policy: tiered.Policy{Delays: []time.Duration{-time.Minute}}}, tiered.ErrInvalidPolicy, []string{"Delays[0] is -1m0s, must be positive"}},
		{"negative MaxAttempts", router.Config{Backend: backend, Policy: tiered.Policy{Delays: []time.Duration{time.Second}, MaxAttempts: -2}}, tiered.ErrInvalidPolicy, []string{"MaxAttempts is -2, must be at least 1"}},
		{"negative Quick.Attempts", router.Config{Backend: backend, Policy: tiered.Policy{Delays: []time.Duration{time.Second}, Quick: tiered.Quick{Attempts: -1}}}, tiered.ErrInvalidPolicy, []string{"Quick.Attempts is -1, must not be negative"}},
		{"the zero Policy", router.Config{Backend: backend}, tiered.ErrInvalidPolicy, []string{"the zero Policy retries nothing"}},
		{"two tiers with one delay", router.Config{Backend: backend, Policy: tiered.Policy{Delays: []time.Duration{10 * time.Second, 10000 * time.Millisecond}}}, tiered.ErrInvalidPolicy, []string{"Delays[0] and Delays[1] are both 10s"}},
		{"every problem is reported", router.Config{Policy: tiered.Policy{MaxAttempts: 2}}, tiered.ErrInvalidPolicy, []string{"Backend is nil", "Delays is empty"}},
		{"DeadLetters without a Registerer", router.Config{Backend: backend, Policy: tiered.Policy{Delays: []time.Duration{time.Second}}, DeadLetters: fixedDepth{}}, nil, []string{"DeadLetters is set without a Registerer"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var retrier *router.Retrier
			var err error
			require.NotPanics(t, func() { retrier, err = router.New(tt.config, nil) })
			require.Nil(t, retrier)
			require.ErrorContains(t, err, "invalid config: ")
			if tt.wantIs != nil {
				require.ErrorIs(t, err, tt.wantIs)
			}
			for _, want := range tt.wantText {
				require.ErrorContains(t, err, want)
			}
		})
	}
}

// stubBackend is the memory backend with failures to order, and a count of
// the subscribers it made that are still open.
type stubBackend struct {
	*memory.Backend
	prepareErr   error
	subscribeErr func(params tiered.SubscribeParams) error

	mu       sync.Mutex
	open     int
	prepared []tiered.Topics
	params   []tiered.SubscribeParams
}

func (b *stubBackend) Prepare(ctx context.Context, topics tiered.Topics) error {
	b.mu.Lock()
	b.prepared = append(b.prepared, topics)
	b.mu.Unlock()
	if b.prepareErr != nil {
		return b.prepareErr
	}
	return b.Backend.Prepare(ctx, topics)
}

func (b *stubBackend) Subscriber(params tiered.SubscribeParams) (message.Subscriber, error) {
	if b.subscribeErr != nil {
		if err := b.subscribeErr(params); err != nil {
			return nil, err
		}
	}
	sub, err := b.Backend.Subscriber(params)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.open++
	b.params = append(b.params, params)
	b.mu.Unlock()
	return &countedSubscriber{Subscriber: sub, b: b}, nil
}

func (b *stubBackend) openSubscribers() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open
}

type countedSubscriber struct {
	message.Subscriber
	b    *stubBackend
	once sync.Once
}

func (s *countedSubscriber) Close() error {
	s.once.Do(func() {
		s.b.mu.Lock()
		s.b.open--
		s.b.mu.Unlock()
	})
	return s.Subscriber.Close()
}

func TestRetrier_addConsumerHandlerRejectsBadInput(t *testing.T) {
	ok := func(*message.Message) error { return nil }
	tests := []struct {
		name      string
		policy    tiered.Policy
		topicName tiered.TopicNamer
		backend   func(b *stubBackend)
		before    func(t *testing.T, r *message.Router, w *router.Retrier, sub message.Subscriber)
		emptyName bool
		topic     string
		nilFn     bool
		nilRouter bool
		wantIs    error
		wantText  string
	}{
		{
			name: "name taken by a plain router handler",
			before: func(_ *testing.T, r *message.Router, _ *router.Retrier, sub message.Subscriber) {
				r.AddConsumerHandler("billing", "payments", sub, ok)
			},
			wantText: `the router already has a handler named "billing"`,
		},
		{
			name: "name taken by a handler with retries",
			before: func(t *testing.T, r *message.Router, w *router.Retrier, _ message.Subscriber) {
				_, err := w.AddConsumerHandler(r, "billing", "payments", ok)
				require.NoError(t, err)
			},
			wantText: `the router already has a handler named "billing"`,
		},
		{
			name: "tier handler name taken",
			before: func(_ *testing.T, r *message.Router, _ *router.Retrier, sub message.Subscriber) {
				r.AddConsumerHandler("billing.retry.10s", "payments", sub, ok)
			},
			wantText: `the router already has a handler named "billing.retry.10s"`,
		},
		{name: "bad topic characters", topic: "orders!", wantIs: tiered.ErrInvalidTopicName, wantText: `"orders!" has '!'`},
		{name: "topic over 249 bytes", topic: strings.Repeat("o", 250), wantIs: tiered.ErrInvalidTopicName, wantText: "the limit is 249"},
		{name: "empty handler name", emptyName: true, wantText: "Handler is empty"},
		{name: "nil handler function", nilFn: true, wantText: "nil handler function"},
		{name: "nil router", nilRouter: true, wantText: "nil router"},
		{
			name:     "topics cannot be prepared",
			backend:  func(b *stubBackend) { b.prepareErr = errors.New("no such cluster") },
			wantText: `handler "billing": prepare topics: no such cluster`,
		},
		{
			name: "a tier subscription fails",
			backend: func(b *stubBackend) {
				b.subscribeErr = func(p tiered.SubscribeParams) error {
					if p.Delay == time.Minute {
						return errors.New("group busy")
					}
					return nil
				}
			},
			policy:   tiered.Policy{Delays: []time.Duration{10 * time.Second, time.Minute}},
			wantText: `handler "billing": subscribe to orders.billing.retry.1m: group busy`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			backend := &stubBackend{Backend: memory.New(nil)}
			defer backend.Close()
			if tt.backend != nil {
				tt.backend(backend)
			}
			policy := tt.policy
			if policy.Delays == nil {
				policy.Delays = []time.Duration{10 * time.Second}
			}
			w, err := router.New(router.Config{Backend: backend, Policy: policy, TopicName: tt.topicName}, nil)
			require.NoError(t, err)
			r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
			require.NoError(t, err)
			plain, err := backend.Backend.Subscriber(tiered.SubscribeParams{})
			require.NoError(t, err)
			if tt.before != nil {
				tt.before(t, r, w, plain)
			}
			handlersBefore := len(r.Handlers())
			openBefore := backend.openSubscribers()

			name, topic, fn := "billing", "orders", message.NoPublishHandlerFunc(ok)
			if tt.emptyName {
				name = ""
			}
			if tt.topic != "" {
				topic = tt.topic
			}
			if tt.nilFn {
				fn = nil
			}
			target := r
			if tt.nilRouter {
				target = nil
			}

			var added *router.Handler
			require.NotPanics(t, func() { added, err = w.AddConsumerHandler(target, name, topic, fn) })

			require.Nil(t, added)
			require.ErrorContains(t, err, tt.wantText)
			if tt.wantIs != nil {
				require.ErrorIs(t, err, tt.wantIs)
			}
			require.Len(t, r.Handlers(), handlersBefore, "a failed add leaves the router as it was")
			require.Equal(t, openBefore, backend.openSubscribers(), "a failed add closes the subscribers it made")
		})
	}
}

func TestRetrier_addConsumerHandlerWiresOneSubscriptionPerTier(t *testing.T) {
	backend := &stubBackend{Backend: memory.New(nil)}
	defer backend.Close()
	w, err := router.New(router.Config{Backend: backend, Policy: tiered.Policy{
		Delays: []time.Duration{10 * time.Second, time.Minute}, MaxAttempts: 6,
	}}, nil)
	require.NoError(t, err)
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)

	h, err := w.AddConsumerHandler(r, "billing", "orders", func(*message.Message) error { return nil })

	require.NoError(t, err)
	require.NotNil(t, h.Main)
	require.Len(t, h.Tiers, 2)
	require.Equal(t, []string{"orders.billing.retry.10s", "orders.billing.retry.1m"}, h.Topics.Tiers)
	require.Equal(t, "orders.billing.dlq", h.Topics.DLQ)
	handlers := r.Handlers()
	for _, name := range []string{"billing", "billing.retry.10s", "billing.retry.1m"} {
		require.Contains(t, handlers, name)
	}
	require.Len(t, handlers, 3)
	require.Equal(t, []tiered.Topics{h.Topics}, backend.prepared, "topics prepared once, before use")
	require.Equal(t, []tiered.SubscribeParams{
		{Group: "orders.billing", Handler: "billing", Topic: "orders", DLQ: "orders.billing.dlq"},
		{Group: "orders.billing.retry.10s", Handler: "billing", Topic: "orders.billing.retry.10s", Delay: 10 * time.Second, DLQ: "orders.billing.dlq"},
		{Group: "orders.billing.retry.1m", Handler: "billing", Topic: "orders.billing.retry.1m", Delay: time.Minute, DLQ: "orders.billing.dlq"},
	}, backend.params)

	_, err = w.AddConsumerHandler(r, "shipping", "orders", func(*message.Message) error { return nil })
	require.NoError(t, err, "a second handler on the same topic gets its own names")
	require.Len(t, r.Handlers(), 6)

	// A handler of the same name on another topic (another service, say)
	// consumes in groups of its own.
	other, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	backend.params = nil
	_, err = w.AddConsumerHandler(other, "billing", "invoices", func(*message.Message) error { return nil })
	require.NoError(t, err)
	require.Equal(t, []string{"invoices.billing", "invoices.billing.retry.10s", "invoices.billing.retry.1m"},
		[]string{backend.params[0].Group, backend.params[1].Group, backend.params[2].Group})
}
