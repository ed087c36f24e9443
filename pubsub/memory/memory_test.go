package memory_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/pubsub/memory"
	"github.com/retry-kafka/retry-kafka/tiered"
)

var _ tiered.Backend = (*memory.Backend)(nil)

func receive(t *testing.T, ch <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case msg, ok := <-ch:
		require.True(t, ok, "channel closed")
		msg.Ack()
		return msg
	case <-time.After(5 * time.Second):
		t.Fatal("nothing delivered")
		return nil
	}
}

func subscribe(t *testing.T, b *memory.Backend, topic string) (message.Subscriber, <-chan *message.Message) {
	t.Helper()
	sub, err := b.Subscriber(tiered.SubscribeParams{Group: "g", Topic: topic})
	require.NoError(t, err)
	ch, err := sub.Subscribe(context.Background(), topic)
	require.NoError(t, err)
	return sub, ch
}

// A subscription made after a publish still gets the message: tier
// messages published before a router starts are not lost.
func TestBackend_lateSubscriberGetsEarlierMessages(t *testing.T) {
	b := memory.New(nil)
	defer b.Close()
	require.NoError(t, b.Publisher().Publish("orders.billing.retry.10s", message.NewMessage("m1", nil)))

	_, ch := subscribe(t, b, "orders.billing.retry.10s")

	require.Equal(t, "m1", receive(t, ch).UUID)
}

// Every subscription gets every message, like one consumer group per
// handler.
func TestBackend_eachSubscriptionGetsEveryMessage(t *testing.T) {
	b := memory.New(nil)
	defer b.Close()
	_, billing := subscribe(t, b, "orders")
	_, shipping := subscribe(t, b, "orders")

	require.NoError(t, b.Publisher().Publish("orders", message.NewMessage("m1", nil)))

	require.Equal(t, "m1", receive(t, billing).UUID)
	require.Equal(t, "m1", receive(t, shipping).UUID)
}

// Closing one subscriber ends its own subscriptions only; closing the
// shared publisher closes nothing.
func TestBackend_subscriberCloseEndsOnlyItsOwnSubscriptions(t *testing.T) {
	b := memory.New(nil)
	defer b.Close()
	first, firstCh := subscribe(t, b, "orders")
	_, secondCh := subscribe(t, b, "orders")

	require.NoError(t, first.Close())
	require.NoError(t, first.Close(), "Close is idempotent")
	select {
	case _, open := <-firstCh:
		require.False(t, open)
	case <-time.After(5 * time.Second):
		t.Fatal("the closed subscriber's channel stayed open")
	}

	require.NoError(t, b.Publisher().Close())
	require.NoError(t, b.Publisher().Publish("orders", message.NewMessage("m1", nil)), "the backend still publishes")
	require.Equal(t, "m1", receive(t, secondCh).UUID, "the other subscription still receives")
}

func TestBackend_closeEndsEverySubscription(t *testing.T) {
	b := memory.New(nil)
	_, ch := subscribe(t, b, "orders")
	require.NoError(t, b.Prepare(context.Background(), tiered.Topics{Main: "orders"}))

	require.NoError(t, b.Close())
	require.NoError(t, b.Close(), "Close is idempotent")

	select {
	case _, open := <-ch:
		require.False(t, open)
	case <-time.After(5 * time.Second):
		t.Fatal("subscription still open after Close")
	}
	require.Error(t, b.Publisher().Publish("orders", message.NewMessage("m1", nil)), "no publishing after Close")
}

// GoChannel's internal lock is not a durable block for testing/synctest, so
// this test runs on real time: the negative checks give a wrongly delivered
// message 200ms to show up, which it does at once when the relay is broken.
func TestSubscriber_deliversTheNextMessageOnlyAfterAckOrNack(t *testing.T) {
	b := memory.New(nil)
	defer b.Close()
	sub, err := b.Subscriber(tiered.SubscribeParams{Group: "g", Topic: "orders"})
	require.NoError(t, err)
	defer sub.Close()
	ch, err := sub.Subscribe(context.Background(), "orders")
	require.NoError(t, err)
	require.NoError(t, b.Publisher().Publish("orders",
		message.NewMessage("a", nil), message.NewMessage("b", nil), message.NewMessage("c", nil)))

	nothingMore := func(held *message.Message) {
		t.Helper()
		select {
		case m := <-ch:
			t.Fatalf("message %s delivered while %s was neither acked nor nacked", m.UUID, held.UUID)
		case <-time.After(200 * time.Millisecond):
		}
	}
	first := <-ch
	nothingMore(first)
	first.Ack()
	second := <-ch
	require.NotEqual(t, first.UUID, second.UUID)
	nothingMore(second)
	second.Nack() // delivered again, before or after the third
	seen := map[string]bool{first.UUID: true}
	for len(seen) < 3 {
		m := <-ch
		seen[m.UUID] = true
		m.Ack()
	}
}
