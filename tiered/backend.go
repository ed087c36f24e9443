package tiered

import (
	"context"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Backend is a broker as retry-kafka uses it: one publisher, subscribers
// made per subscription, and the topics of each handler prepared ahead of
// use. The pubsub package opens one from a URL; the router package wires
// handlers with it.
type Backend interface {
	// Publisher returns the backend's publisher. It is synchronous: Publish
	// returns after the broker confirmed the write. It is shared; Close the
	// backend, not the publisher.
	Publisher() message.Publisher

	// Subscriber returns a new subscriber for one subscription. The caller
	// owns it and closes it (a Watermill router closes the subscribers of
	// its handlers when it stops).
	Subscriber(params SubscribeParams) (message.Subscriber, error)

	// Prepare makes the topics of one handler ready: it creates the tier
	// and dead-letter topics where the broker needs them created, and
	// checks the handler's own topic. It is idempotent.
	Prepare(ctx context.Context, topics Topics) error

	// Close releases what the backend opened. It never closes a client
	// the caller passed in. It is safe to call more than once.
	Close() error
}

// SubscribeParams describes one subscription, for [Backend.Subscriber].
type SubscribeParams struct {
	// Group names the consumer group. It is unique per handler and
	// topic, so that every handler (and each of its tiers) consumes on its
	// own.
	Group string

	// Topic is the topic that will be subscribed to.
	Topic string

	// Delay is the tier delay of Topic, or 0 for a handler's own topic.
	// Backends use it to keep a held message from being redelivered to
	// another consumer while it waits.
	Delay time.Duration

	// DLQ is the handler's dead-letter topic. A backend sends there, with
	// the reason, what it reads from Topic but cannot decode into a
	// message, rather than stopping the subscription. Empty outside a
	// handler (the entry is then acked and logged).
	DLQ string
}
