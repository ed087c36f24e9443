package pubsub_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/pubsub"
	"github.com/retry-kafka/retry-kafka/tiered"
)

func TestOpen_memory(t *testing.T) {
	for _, url := range []string{"mem://", "memory://"} {
		t.Run(url, func(t *testing.T) {
			backend, err := pubsub.Open(context.Background(), url, nil)
			require.NoError(t, err)
			defer func() { require.NoError(t, backend.Close()) }()

			sub, err := backend.Subscriber(tiered.SubscribeParams{Group: "g", Topic: "orders"})
			require.NoError(t, err)
			defer sub.Close()
			ch, err := sub.Subscribe(context.Background(), "orders")
			require.NoError(t, err)
			require.NoError(t, backend.Publisher().Publish("orders", message.NewMessage("m1", []byte("x"))))

			select {
			case msg := <-ch:
				msg.Ack()
				require.Equal(t, "m1", msg.UUID)
			case <-time.After(5 * time.Second):
				t.Fatal("the memory backend delivered nothing")
			}
		})
	}
}

func TestOpen_rejectsBadURLs(t *testing.T) {
	tests := []struct {
		name          string
		url           string
		unknownScheme bool     // errors.Is(err, pubsub.ErrUnknownScheme)
		wantText      []string // the error names the problem and the way out
	}{
		{"empty", "", false, []string{"empty backend URL", "mem://"}},
		{"blank", "   ", false, []string{"empty backend URL"}},
		{"unknown scheme", "nats://x", true, []string{`"nats"`, "mem://", "kafka://", "redis://"}},
		{"another broker's scheme", "amqp://guest@localhost", true, []string{`"amqp"`}},
		{"no scheme", "localhost:9092", false, []string{`"localhost:9092"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var backend tiered.Backend
			var err error
			require.NotPanics(t, func() { backend, err = pubsub.Open(context.Background(), tt.url, nil) })
			require.Nil(t, backend)
			require.Error(t, err)
			if tt.unknownScheme {
				require.ErrorIs(t, err, pubsub.ErrUnknownScheme)
			}
			for _, want := range tt.wantText {
				require.ErrorContains(t, err, want)
			}
		})
	}
}
