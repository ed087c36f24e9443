package router_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/pubsub/memory"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

type OrderPlaced struct {
	ID string `json:"id"`
}

// A Watermill CQRS event handler, added by an EventProcessor that owns its
// subscription, gets tiered retries through Attach. This test runs in real
// time and polls with a deadline.
func TestRetrier_attachGivesCQRSEventHandlerRetries(t *testing.T) {
	const delay = 50 * time.Millisecond
	backend := memory.New(nil)
	defer backend.Close()
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	retrier, err := router.New(router.Config{Backend: backend, Policy: tiered.Policy{Delays: []time.Duration{delay}}}, nil)
	require.NoError(t, err)

	marshaler := cqrs.JSONMarshaler{GenerateName: cqrs.StructName}
	topicOf := func(eventName string) string { return "events." + eventName }
	processor, err := cqrs.NewEventProcessorWithConfig(r, cqrs.EventProcessorConfig{
		GenerateSubscribeTopic: func(p cqrs.EventProcessorGenerateSubscribeTopicParams) (string, error) {
			return topicOf(p.EventName), nil
		},
		SubscriberConstructor: func(p cqrs.EventProcessorSubscriberConstructorParams) (message.Subscriber, error) {
			return backend.Subscriber(tiered.SubscribeParams{Group: p.HandlerName, Topic: topicOf(p.EventName)})
		},
		Marshaler: marshaler,
	})
	require.NoError(t, err)

	type seen struct {
		topic string
		id    string
		at    time.Time
	}
	var mu sync.Mutex
	var calls []seen
	h, err := processor.AddHandler(cqrs.NewEventHandler("billing", func(ctx context.Context, e *OrderPlaced) error {
		msg := cqrs.OriginalMessageFromCtx(ctx)
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, seen{topic: message.SubscribeTopicFromCtx(msg.Context()), id: e.ID, at: time.Now()})
		if len(calls) == 1 {
			return errBoom
		}
		return nil
	}))
	require.NoError(t, err)

	attached, err := retrier.Attach(r, h, "billing", "events.OrderPlaced")
	require.NoError(t, err)
	require.Same(t, h, attached.Main)
	require.Equal(t, []string{"events.OrderPlaced.billing.retry.50ms"}, attached.Topics.Tiers)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	<-r.Running()
	defer func() {
		require.NoError(t, r.Close())
		require.NoError(t, <-runErr)
	}()

	bus, err := cqrs.NewEventBusWithConfig(backend.Publisher(), cqrs.EventBusConfig{
		GeneratePublishTopic: func(p cqrs.GenerateEventPublishTopicParams) (string, error) { return topicOf(p.EventName), nil },
		Marshaler:            marshaler,
	})
	require.NoError(t, err)
	require.NoError(t, bus.Publish(ctx, &OrderPlaced{ID: "42"}))

	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) >= 2
	}, 5*time.Second, time.Millisecond)

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, calls, 2)
	require.Equal(t, "events.OrderPlaced", calls[0].topic)
	require.Equal(t, "events.OrderPlaced.billing.retry.50ms", calls[1].topic)
	require.Equal(t, "42", calls[0].id)
	require.Equal(t, "42", calls[1].id, "the tier hands the same event to the handler")
	require.GreaterOrEqual(t, calls[1].at.Sub(calls[0].at), delay, "not retried before the tier delay")
}

func TestRetrier_attachRejectsUnknownHandler(t *testing.T) {
	backend := memory.New(nil)
	defer backend.Close()
	retrier, err := router.New(router.Config{Backend: backend, Policy: tiered.Policy{Delays: []time.Duration{time.Second}}}, nil)
	require.NoError(t, err)
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)
	sub, err := backend.Subscriber(tiered.SubscribeParams{})
	require.NoError(t, err)
	h := r.AddConsumerHandler("billing", "orders", sub, func(*message.Message) error { return nil })

	_, err = retrier.Attach(r, h, "shipping", "orders")
	require.ErrorContains(t, err, `the router has no handler named "shipping"`)
	_, err = retrier.Attach(r, nil, "billing", "orders")
	require.ErrorContains(t, err, "nil *message.Handler")
	_, err = retrier.Attach(nil, h, "billing", "orders")
	require.ErrorContains(t, err, "nil router")
	require.Len(t, r.Handlers(), 1)
}

// AddHandler publishes what the handler returns, from the main attempt and
// from a tier alike; what a failed attempt returned is dropped.
func TestRetrier_addHandlerPublishesProducedMessagesFromEveryAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, envConfig{policy: tiered.Policy{Delays: []time.Duration{10 * time.Second}}})
		var n int
		var mu sync.Mutex
		_, err := e.retrier.AddHandler(e.router, "billing", "orders", "invoices", e.backend.Publisher(), func(msg *message.Message) ([]*message.Message, error) {
			mu.Lock()
			defer mu.Unlock()
			n++
			e.record(msg)
			out := message.NewMessage("invoice-"+msg.UUID+"-"+string(rune('0'+n)), nil)
			if msg.UUID == "m1" && n == 1 {
				return []*message.Message{out}, errBoom
			}
			return []*message.Message{out}, nil
		})
		require.NoError(t, err)
		invoices := e.collect("invoices")
		e.run()

		e.publish("orders", message.NewMessage("m1", nil))
		got := invoices.next()
		e.settle()

		require.Equal(t, "invoice-m1-2", got.UUID, "published from the tier; the failed attempt's output was dropped")
		invoices.requireEmpty()
		calls := e.recorded()
		require.Len(t, calls, 2)
		require.Equal(t, "orders.billing.retry.10s", calls[1].topic)
	})
}
