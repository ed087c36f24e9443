package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/dlq"
	"github.com/retry-kafka/retry-kafka/pubsub/embedded"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// A handler dead-letters three orders; the dead-letter topic is counted by
// reason, and, once the bug is fixed, redriven to the handler.
func Example() {
	ctx := context.Background()
	backend, err := embedded.Open(ctx, "kafka://embedded", nil) // kafka://host:9092 or redis://host:6379/0 alike
	if err != nil {
		panic(err)
	}
	defer backend.Close()

	r, _ := message.NewRouter(message.RouterConfig{}, nil)
	retrying, _ := router.New(router.Config{Backend: backend, Policy: tiered.Policy{MaxAttempts: 1}}, nil)
	fixed := make(chan struct{})
	charged := make(chan string, 3)
	h, _ := retrying.AddConsumerHandler(r, "billing", "orders", func(msg *message.Message) error {
		select {
		case <-fixed:
			charged <- string(msg.Payload)
			return nil
		default:
			return fmt.Errorf("charge %s: %w", msg.Payload, errors.New("gateway timeout"))
		}
	})
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	defer r.Close()
	for _, order := range []string{"order-1", "order-2", "order-3"} {
		_ = backend.Publisher().Publish("orders", message.NewMessage(watermill.NewUUID(), []byte(order)))
	}

	ops, err := dlq.New(dlq.Config{Backend: backend}, nil)
	if err != nil {
		panic(err)
	}
	defer ops.Close()
	for d, _ := ops.Depth(ctx, h.Topics.DLQ); d.Messages < 3; d, _ = ops.Depth(ctx, h.Topics.DLQ) {
		time.Sleep(10 * time.Millisecond)
	}

	stats, _ := ops.Stats(ctx, h.Topics.DLQ, dlq.Filter{})
	for _, reason := range stats.Reasons {
		fmt.Printf("%d × %s\n", reason.Count, reason.Value)
	}

	close(fixed) // the fix is deployed
	res, _ := ops.Redrive(ctx, dlq.RedriveParams{Topic: h.Topics.DLQ})
	fmt.Println("redriven:", res.Moved)
	for range res.Moved {
		<-charged
	}
	fmt.Println("charged:", res.Moved)
	// Output:
	// 3 × attempt N of N failed, no attempts left: charge order-N: gateway timeout
	// redriven: 3
	// charged: 3
}
