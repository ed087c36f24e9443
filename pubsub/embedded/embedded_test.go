package embedded_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/pubsub"
	"github.com/retry-kafka/retry-kafka/pubsub/embedded"
	"github.com/retry-kafka/retry-kafka/pubsub/kafka"
	"github.com/retry-kafka/retry-kafka/tiered"
)

func TestOpen_embeddedKafkaDeliversMessages(t *testing.T) {
	ctx := context.Background()
	b, err := embedded.Open(ctx, "kafka://embedded?group_prefix=demo.&partitions=2", nil)
	require.NoError(t, err)
	defer func() { require.NoError(t, b.Close()) }()
	k, ok := b.(*embedded.Kafka)
	require.True(t, ok)
	require.NotEqual(t, []string{"embedded"}, k.Brokers(), "the embedded broker's own address is used")

	topics, err := tiered.Policy{Delays: []time.Duration{time.Second}}.Topics("orders", "billing", nil)
	require.NoError(t, err)
	require.NoError(t, b.Prepare(ctx, topics), "the embedded broker may create topics")
	sub, err := b.Subscriber(tiered.SubscribeParams{Group: topics.Group("orders"), Topic: "orders"})
	require.NoError(t, err)
	defer sub.Close()
	ch, err := sub.Subscribe(ctx, "orders")
	require.NoError(t, err)
	require.NoError(t, b.Publisher().Publish("orders", message.NewMessage("m1", []byte("x"))))
	select {
	case msg := <-ch:
		msg.Ack()
		require.Equal(t, "m1", msg.UUID)
	case <-time.After(30 * time.Second):
		t.Fatal("the embedded broker delivered nothing")
	}
}

func TestOpen_otherURLsGoToPubsubOpen(t *testing.T) {
	b, err := embedded.Open(context.Background(), "mem://", nil)
	require.NoError(t, err)
	require.NoError(t, b.Close())
	_, err = embedded.Open(context.Background(), "nats://x", nil)
	require.ErrorIs(t, err, pubsub.ErrUnknownScheme)
}

func TestOpen_badEmbeddedURLs(t *testing.T) {
	for url, want := range map[string]string{
		"kafka://embedded,h:9092":       `"embedded" cannot be listed with other brokers`,
		"kafka://embedded?colour=blue":  `unknown parameter "colour"`,
		"kafka://embedded?partitions=x": "partitions",
	} {
		_, err := embedded.Open(context.Background(), url, nil)
		require.ErrorContains(t, err, want, url)
	}
}

// pubsub.Open does not link the embedded broker: it says where it is.
func TestPubsubOpen_embeddedNamesThePackage(t *testing.T) {
	_, err := pubsub.Open(context.Background(), kafka.EmbeddedURL, nil)
	require.ErrorContains(t, err, "pubsub/embedded")
}
