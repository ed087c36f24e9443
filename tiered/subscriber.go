package tiered

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/retry-kafka/retry-kafka/internal/instrument"
)

// SubscriberConfig configures a [Subscriber].
type SubscriberConfig struct {
	// MaxDelay bounds every hold: a message is held until its due time, but
	// a due time more than MaxDelay (plus 1% and 1ms of slack for clock
	// drift and millisecond rounding) after the broker stored it is
	// clamped to that time + MaxDelay, so a forged or corrupt due time
	// cannot stall a tier. The broker's time comes from the backend
	// ([Delivery].AppendTime); without one, the receipt time is used. Set
	// it to the tier's delay.
	//
	// Required. Must be positive.
	MaxDelay time.Duration

	// Registerer, when set, gets the gauges of the messages this
	// subscriber holds: retry_kafka_held_messages (how many are held now)
	// and retry_kafka_oldest_held_seconds (for how long the one held
	// longest has been held), labelled handler_name=Handler and
	// tier=Tier. Subscribers and retriers given the same registry share
	// the gauges, so their holds add up (see the README, "Metrics and
	// tracing").
	//
	// Optional. Defaults to none: nothing is registered.
	Registerer prometheus.Registerer

	// Handler names the handler in the gauges' labels.
	//
	// Required with Registerer.
	Handler string

	// Tier is the tier the subscription consumes, numbered from 1 as in
	// [KeyTier], or [RetiredTier] for a tier of an earlier policy
	// (labelled "retired").
	//
	// Required with Registerer.
	Tier int
}

// RetiredTier is the [SubscriberConfig.Tier] of a tier topic of an earlier
// policy, which the router drains.
const RetiredTier = -1

// Validate reports every problem with the config without changing it.
func (c SubscriberConfig) Validate() error {
	var errs []error
	if c.MaxDelay <= 0 {
		errs = append(errs, fmt.Errorf("MaxDelay is %v, must be positive", c.MaxDelay))
	}
	if c.Registerer != nil {
		if c.Handler == "" {
			errs = append(errs, errors.New("Handler is empty, and Registerer needs it"))
		} else if !utf8.ValidString(c.Handler) {
			errs = append(errs, fmt.Errorf("Handler %q is not valid UTF-8", c.Handler))
		}
		if c.Tier < 1 && c.Tier != RetiredTier {
			errs = append(errs, fmt.Errorf("Tier is %d; with Registerer it must be 1 or more, or RetiredTier", c.Tier))
		}
	}
	return errors.Join(errs...)
}

// Subscriber is the holding subscriber: a [message.Subscriber] decorator
// that hands on each message no earlier than its due time ([DueAt]).
//
// It holds each message it receives until due. Brokers hand a consumer the
// next message of a partition (or stream) only after the previous one was
// acked, and every message of a tier waits the same delay, so there is one
// hold per partition, always of the partition's first message due; memory
// stays bounded by the number of partitions. (This rests on the wrapped
// subscriber waiting for an ack before it delivers a partition's next
// message, as watermill-kafka, this library's Kafka tier subscriber and
// watermill-redisstream do. Watermill's GoChannel does not: on it every
// waiting message is held at once.) The wait ends at once when the message's
// context, the subscription's context or the subscriber ends; the held
// message is then Nacked, so the wrapped subscriber delivers it again
// (later, or to another consumer) and nothing is lost.
//
// A message without a due time, or with one that does not parse, is handed
// on at once; the retry middleware sends the latter to the dead-letter
// topic with the reason.
type Subscriber struct {
	sub    message.Subscriber
	config SubscriberConfig
	logger watermill.LoggerAdapter
	holds  *instrument.HoldTracker // nil without a Registerer

	// mu guards closed and the wg.Add of a new subscription, so that Close
	// never waits while a Subscribe is adding to wg, and no subscription
	// starts after Close began.
	mu      sync.Mutex
	closed  bool
	closing chan struct{}
	wg      sync.WaitGroup
}

// NewSubscriber wraps sub.
func NewSubscriber(sub message.Subscriber, config SubscriberConfig, logger watermill.LoggerAdapter) (*Subscriber, error) {
	if sub == nil {
		return nil, errors.New("invalid config: nil subscriber")
	}
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	s := &Subscriber{sub: sub, config: config, logger: logger, closing: make(chan struct{})}
	if config.Registerer != nil {
		m, err := instrument.Register(config.Registerer)
		if err != nil {
			return nil, fmt.Errorf("invalid config: %w", err)
		}
		s.holds = m.Holds.Track(config.Handler, instrument.TierLabel(config.Tier))
	}
	return s, nil
}

// SubscriberDecorator returns a [message.SubscriberDecorator] that wraps
// subscribers with [NewSubscriber].
func SubscriberDecorator(config SubscriberConfig, logger watermill.LoggerAdapter) message.SubscriberDecorator {
	return func(sub message.Subscriber) (message.Subscriber, error) {
		return NewSubscriber(sub, config, logger)
	}
}

// Subscribe subscribes to topic on the wrapped subscriber and returns a
// channel that yields each message once it is due. The channel is closed
// after the wrapped channel closes, which Watermill subscribers do when ctx
// ends or they are closed; holds end at once on either.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	in, err := s.sub.Subscribe(ctx, topic)
	if err != nil {
		return nil, err
	}
	out := make(chan *message.Message)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// Each message that is not due yet is held on its own goroutine: a
		// partitioned broker delivers the next message of a partition only
		// after the previous one was acked, so there is at most one hold
		// per partition, and a head held on one partition never delays the
		// head of another. A message due already (most of them, on a
		// short tier or a backlog) is handed on from here: a goroutine of
		// its own cost more than the rest of its way through this
		// subscriber.
		var holds sync.WaitGroup
		defer close(out)
		defer holds.Wait()
		for msg := range in {
			due, wait := s.dueOf(topic, msg)
			if !wait {
				s.send(ctx, msg, out)
				continue
			}
			holds.Add(1)
			go func() {
				defer holds.Done()
				if !s.hold(ctx, topic, msg, due) {
					msg.Nack()
					return
				}
				s.send(ctx, msg, out)
			}()
		}
	}()
	return out, nil
}

// send hands msg on on out, or Nacks it when the wait for the receiver
// is cut short.
func (s *Subscriber) send(ctx context.Context, msg *message.Message, out chan<- *message.Message) {
	select {
	case out <- msg:
	case <-msg.Context().Done():
		msg.Nack()
	case <-ctx.Done():
		msg.Nack()
	case <-s.closing:
		msg.Nack()
	}
}

// dueOf returns when msg is to be handed on, and whether that is still
// ahead (wait). A message without a due time, or with a malformed one
// (logged), is due at once.
func (s *Subscriber) dueOf(topic string, msg *message.Message) (due time.Time, wait bool) {
	due, ok, err := DueAt(msg.Metadata)
	if err != nil {
		s.logger.Info("Message has a malformed due time, handing it on at once", watermill.LogFields{
			"topic": topic, "message_uuid": msg.UUID, "err": err.Error(),
		})
		return time.Time{}, false
	}
	if !ok {
		return time.Time{}, false
	}
	// Due times are wall-clock instants, so the whole hold runs on the wall
	// clock: a timer measures monotonic time, which drifts from the wall
	// clock (by hundreds of ppm on some VMs), so each wake-up re-reads it.
	now := time.Now().Round(0)
	// The clamp counts from when the broker stored the message where the
	// backend knows it (the broker's clock vouches for it), else from
	// receipt. From receipt, k messages with forged far-future due times
	// would each hold the partition for a whole delay, one after another;
	// from the append time, all of them are due within one delay of when
	// they were written, so a tier is never stalled by more than one delay.
	base := now
	if d := DeliveryFrom(msg.Context()); d != nil && !d.AppendTime.IsZero() && d.AppendTime.Before(now) {
		base = d.AppendTime.Round(0)
	}
	if limit := base.Add(s.config.MaxDelay + clampSlack(s.config.MaxDelay)); due.After(limit) {
		s.logger.Info("Message is due later than its tier's delay allows, holding it for the delay only", watermill.LogFields{
			"topic": topic, "message_uuid": msg.UUID, "due_in": due.Sub(now).String(), "max_delay": s.config.MaxDelay.String(),
		})
		due = base.Add(s.config.MaxDelay)
	}
	return due, due.After(now)
}

// hold waits until due (on the wall clock). It returns false when the wait
// was cut short.
func (s *Subscriber) hold(ctx context.Context, topic string, msg *message.Message, due time.Time) bool {
	wait := time.Until(due)
	if wait <= 0 {
		return true
	}
	if s.holds != nil {
		defer s.holds.Hold()()
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			wait := time.Until(due)
			if wait <= 0 {
				return true
			}
			timer.Reset(wait)
			continue
		case <-msg.Context().Done():
		case <-ctx.Done():
		case <-s.closing:
		}
		s.logger.Debug("Stopped holding message: its context or the subscription ended", watermill.LogFields{"topic": topic, "message_uuid": msg.UUID})
		return false
	}
}

// clampSlack is how far past receipt + MaxDelay a due time may lie before
// it is clamped: due times are rounded up to the millisecond when stamped,
// and the publisher's wall clock may run a little ahead of ours. Without
// it, an honest message could be clamped to an instant before its due time
// and handed on early.
func clampSlack(maxDelay time.Duration) time.Duration {
	return time.Millisecond + maxDelay/100
}

// Close stops every hold, closes the wrapped subscriber and waits until
// every subscription's channel is closed. Subscribe returns [ErrClosed]
// after it. It is safe to call more than once.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closing)
	s.mu.Unlock()
	err := s.sub.Close()
	s.wg.Wait()
	return err
}
