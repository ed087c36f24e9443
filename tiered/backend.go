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
	// Group names the consumer group, before any prefix the backend
	// adds. The router names it with [Topics.Group], from topic and
	// handler, so that every handler (and each of its tiers) consumes on
	// its own and equal handler names on two topics share no group.
	Group string

	// Handler is the name of the handler the subscription is for, which a
	// backend writes into what it dead-letters itself. Empty outside a
	// handler.
	Handler string

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

	// OnUndecodable, when not nil, is called each time the backend has
	// dead-lettered, publish confirmed, an entry of Topic that it could
	// not decode into a message. The router passes the retry
	// middleware's Retry.Undecodable, which counts it in the
	// metrics.
	OnUndecodable func(UndecodableParams)
}

// UndecodableParams describes an entry that a backend could not decode and
// dead-lettered, for [SubscribeParams.OnUndecodable].
type UndecodableParams struct {
	// Topic is the topic the entry was read from.
	Topic string
	// DLQ is the dead-letter topic it was written to.
	DLQ string
}

// MessagingSystem is an optional capability of a [Backend]: the name of
// its broker as OpenTelemetry's semantic conventions spell the
// messaging.system attribute ("kafka"; "redis" for Redis Streams, which the
// conventions do not list). The retry middleware puts it on its spans.
type MessagingSystem interface {
	MessagingSystem() string
}

// Inspector is an optional capability of a [Backend]: it lists topics and
// tells how far a consumer group is behind on one. The router uses it to
// find a handler's retired tiers (tier topics of an earlier policy that
// still hold messages) and the dlq package to discover the topology.
// Backends that cannot inspect (the in-memory one) do not implement it; a
// wrapper around such a backend returns an error wrapping
// errors.ErrUnsupported.
type Inspector interface {
	// ListTopics returns, sorted, the names of the topics (Redis: stream
	// keys) that start with prefix; "" lists them all.
	ListTopics(ctx context.Context, prefix string) ([]string, error)

	// Lag returns how many messages of topic the consumer group has not
	// consumed yet: on Kafka the records after the group's committed
	// offsets; on Redis the entries not yet delivered to the group plus
	// those delivered but not acknowledged. group is named as in
	// [SubscribeParams.Group], before any prefix the backend adds. A group
	// that does not exist yet lags by every message of the topic (new
	// groups start from the oldest); a topic that does not exist has lag
	// 0.
	Lag(ctx context.Context, topic, group string) (int64, error)
}
