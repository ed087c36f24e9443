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
		{"no scheme, a password", "user:s3cret@localhost:6379", false, []string{`"user:xxxxx@localhost:6379" has no scheme`}},
		{"unknown scheme, a password", "amqp://guest:s3cret@localhost", true, []string{`"amqp://guest:xxxxx@localhost"`}},
		{"mem with a host", "mem://localhost", false, []string{`mem URL "mem://localhost": nothing may follow "mem://", found "localhost"`}},
		{"memory with a host", "memory://x", false, []string{`nothing may follow "memory://"`}},
		{"mem with a path", "mem:///data", false, []string{`found "/data"`}},
		{"mem with parameters", "mem://?partitions=3", false, []string{`found "?partitions=3"`, "no host, path or parameters"}},
		{"mem, unparseable", "mem://%zz", false, []string{`found "%zz"`}},
		{"mem with a password", "mem://user:s3cret@host", false, []string{`found "user:xxxxx@host"`}},
		{"redis, unknown parameter", "redis://user:s3cret@127.0.0.1:1/0?partitions=3", false, []string{`redis URL "redis://user:xxxxx@127.0.0.1:1/0?partitions=3": unknown parameter "partitions" (known: `}},
		{"redis, repeated parameter", "redis://127.0.0.1:1/0?max_len=1&max_len=2", false, []string{`parameter "max_len" is given 2 times`}},
		{"redis, unparseable", "redis://user:s3cret@%zz", false, []string{`redis URL "redis://user:xxxxx@%zz"`}},
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
			require.NotContains(t, err.Error(), "s3cret", "no password in errors")
		})
	}
}
