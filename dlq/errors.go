package dlq

import "errors"

// Sentinel errors. Compare with [errors.Is].
var (
	// ErrUnsupportedBackend is returned by [New] and [Open] for a backend
	// that cannot be inspected (the in-memory one).
	ErrUnsupportedBackend = errors.New("backend cannot be inspected")

	// ErrUnknownTopic is wrapped by errors about a topic (Redis: stream)
	// that does not exist.
	ErrUnknownTopic = errors.New("topic does not exist")

	// ErrNotDeadLetterTopic is wrapped by the error of [Client.Redrive]
	// and [Client.Purge] for a topic that is not a dead-letter topic:
	// its name does not end in ".dlq" and its first message carries no
	// poison reason.
	ErrNotDeadLetterTopic = errors.New("not a dead-letter topic")

	// ErrInvalidFilter is wrapped by errors about a [Filter] that cannot
	// be used: a reason that is not a regular expression, a time range
	// that ends before it starts, a key filter on Redis.
	ErrInvalidFilter = errors.New("invalid filter")

	// ErrNotSupported is wrapped by the error of an operation that the
	// broker cannot do, such as deleting single records from a Kafka
	// partition.
	ErrNotSupported = errors.New("not supported by the broker")

	// ErrNotFound is returned by [Client.Get] when no message has the
	// ID asked for.
	ErrNotFound = errors.New("message not found")

	// ErrClosed is returned after [Client.Close].
	ErrClosed = errors.New("dlq client closed")
)
