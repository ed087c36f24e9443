package router_test

import (
	"context"
	"errors"
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

func TestRetrier_failAlwaysWalksTiersThenDLQ(t *testing.T) {
	backend := memory.New(nil)
	defer backend.Close()
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(t, err)

	retrier, err := router.New(router.Config{Backend: backend, Policy: tiered.Policy{
		Delays: []time.Duration{10 * time.Millisecond, 20 * time.Millisecond}, MaxAttempts: 4,
	}}, nil)
	require.NoError(t, err)

	var mu sync.Mutex
	var seen []string
	_, err = retrier.AddConsumerHandler(r, "billing", "orders", func(msg *message.Message) error {
		mu.Lock()
		seen = append(seen, message.SubscribeTopicFromCtx(msg.Context()))
		mu.Unlock()
		return errors.New("boom")
	})
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	<-r.Running()

	dlq, err := backend.Subscriber(tiered.SubscribeParams{})
	require.NoError(t, err)
	ch, err := dlq.Subscribe(ctx, "orders.billing.dlq")
	require.NoError(t, err)

	require.NoError(t, backend.Publisher().Publish("orders", message.NewMessage("m1", []byte("x"))))
	select {
	case m := <-ch:
		m.Ack()
		require.Equal(t, "m1", m.UUID)
		info := m.Metadata
		require.Equal(t, "4", info.Get(tiered.KeyAttempt))
	case <-time.After(5 * time.Second):
		t.Fatal("no DLQ message")
	}
	mu.Lock()
	require.Equal(t, []string{"orders", "orders.billing.retry.10ms", "orders.billing.retry.20ms", "orders.billing.retry.20ms"}, seen)
	mu.Unlock()
	require.NoError(t, r.Close())
}
