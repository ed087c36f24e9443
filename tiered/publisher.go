package tiered

import (
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
)

// Publisher is the delayed publisher: a [message.Publisher] decorator that
// turns a requested delay into a due time at the moment of publishing.
//
// A message asks for a delay with Watermill's own helper,
// delay.Message(msg, delay.For(d)), which sets delay.DelayedForKey.
// Publisher stamps [KeyDueAt] (milliseconds) and delay.DelayedUntilKey with
// now + d, so the delay counts from the publish, not from when the message
// was built. [Subscriber] holds the message until then. Messages without a
// delay pass through untouched.
//
// Publish returns only after the wrapped publisher returned, so it is as
// synchronous (broker-confirmed) as that publisher.
type Publisher struct {
	pub message.Publisher
}

// NewPublisher wraps pub. The logger is not used (it may be nil): Publish
// logs nothing per message, as a log line's fields cost every copy
// allocations even when the logger drops the line. The parameter stays so
// that existing callers and [PublisherDecorator] keep their signatures.
func NewPublisher(pub message.Publisher, _ watermill.LoggerAdapter) (*Publisher, error) {
	if pub == nil {
		return nil, errors.New("invalid config: nil publisher")
	}
	return &Publisher{pub: pub}, nil
}

// PublisherDecorator returns a [message.PublisherDecorator] that wraps
// publishers with [NewPublisher].
func PublisherDecorator(logger watermill.LoggerAdapter) message.PublisherDecorator {
	return func(pub message.Publisher) (message.Publisher, error) {
		return NewPublisher(pub, logger)
	}
}

// Publish stamps due times on the messages that ask for a delay, then
// publishes all of them to topic. A delay that does not parse (or is
// negative) is an error wrapping [ErrInvalidMetadata], and nothing is
// published.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	now := time.Now()
	for _, msg := range msgs {
		v, ok := msg.Metadata[delay.DelayedForKey]
		if !ok {
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return fmt.Errorf("message %s: %w: %s is %q, not a non-negative Go duration", msg.UUID, ErrInvalidMetadata, delay.DelayedForKey, clip(v))
		}
		// Round up to the millisecond written, so that the due time read
		// back is never earlier than now + d.
		due := now.Add(d).Truncate(time.Millisecond)
		if due.Before(now.Add(d)) {
			due = due.Add(time.Millisecond)
		}
		msg.Metadata.Set(KeyDueAt, formatMillis(due))
		msg.Metadata.Set(delay.DelayedUntilKey, due.UTC().Format(time.RFC3339))
	}
	return p.pub.Publish(topic, msgs...)
}

// Close closes the wrapped publisher.
func (p *Publisher) Close() error { return p.pub.Close() }
