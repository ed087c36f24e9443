package router_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/pubsub/memory"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// A handler that fails once: its message leaves "orders" at once and comes
// back from the first tier when due, with its retry metadata.
func Example() {
	backend := memory.New(nil)
	defer backend.Close()
	r, _ := message.NewRouter(message.RouterConfig{}, nil)

	retrying, err := router.New(router.Config{
		Backend: backend,
		Policy:  tiered.Policy{Delays: []time.Duration{10 * time.Millisecond, time.Second}},
	}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	done := make(chan struct{})
	_, err = retrying.AddConsumerHandler(r, "billing", "orders", func(msg *message.Message) error {
		fmt.Printf("%s from %s, attempt %q\n", msg.UUID, message.SubscribeTopicFromCtx(msg.Context()), msg.Metadata.Get(tiered.KeyAttempt))
		if msg.Metadata.Get(tiered.KeyAttempt) == "" {
			return errors.New("card service unavailable")
		}
		fmt.Println("last error:", msg.Metadata.Get(tiered.KeyLastError))
		close(done)
		return nil
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	go func() { _ = r.Run(context.Background()) }()
	<-r.Running()
	_ = backend.Publisher().Publish("orders", message.NewMessage("order-1", []byte(`{"amount":42}`)))
	<-done
	_ = r.Close()
	// Output:
	// order-1 from orders, attempt ""
	// order-1 from orders.billing.retry.10ms, attempt "1"
	// last error: card service unavailable
}

// The names of a handler's topics, before anything runs.
func ExampleRetrier_AddConsumerHandler() {
	backend := memory.New(nil)
	defer backend.Close()
	r, _ := message.NewRouter(message.RouterConfig{}, nil)
	retrying, _ := router.New(router.Config{
		Backend: backend,
		Policy:  tiered.Policy{Delays: []time.Duration{10 * time.Second, time.Minute}, MaxAttempts: 5},
	}, nil)

	h, err := retrying.AddConsumerHandler(r, "billing", "orders", func(*message.Message) error { return nil })
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("tiers:", h.Topics.Tiers)
	fmt.Println("dead letters:", h.Topics.DLQ)

	_, err = retrying.AddConsumerHandler(r, "billing", "payments", func(*message.Message) error { return nil })
	fmt.Println(err)
	// Output:
	// tiers: [orders.billing.retry.10s orders.billing.retry.1m]
	// dead letters: orders.billing.dlq
	// the router already has a handler named "billing"
}
