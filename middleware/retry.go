package middleware

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/cenkalti/backoff/v4"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// Config configures a [Retry].
type Config struct {
	// Publisher receives the tier and dead-letter copies. It must return
	// only after the broker confirmed the write (the publishers of the
	// pubsub backends do); it is wrapped in a [tiered.Publisher].
	//
	// Required.
	Publisher message.Publisher

	// Policy says how often and after which delays a message is retried.
	//
	// Required.
	Policy tiered.Policy

	// Topic is the handler's own topic.
	//
	// Required.
	Topic string

	// Handler names the handler in topic names and metadata. Two handlers
	// on one topic need different names.
	//
	// Required.
	Handler string

	// TopicName names the tier and dead-letter topics.
	//
	// Optional. Defaults to [tiered.DefaultTopicName].
	TopicName tiered.TopicNamer
}

// Validate reports every problem with the config without changing it.
func (c Config) Validate() error {
	var errs []error
	if c.Publisher == nil {
		errs = append(errs, errors.New("Publisher is nil"))
	}
	if err := c.Policy.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Handler == "" {
		errs = append(errs, errors.New("Handler is empty"))
	}
	if c.Topic == "" {
		errs = append(errs, errors.New("Topic is empty"))
	}
	if len(errs) == 0 {
		if _, err := c.Policy.Topics(c.Topic, c.Handler, c.TopicName); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Retry is the middleware of one handler. Build it with [NewRetry] and add
// [Retry.Middleware] to the handler's main subscription and to each of its
// tier subscriptions ([Retry.Topics] names them).
type Retry struct {
	policy tiered.Policy
	topics tiered.Topics
	pub    *tiered.Publisher
	logger watermill.LoggerAdapter
}

// NewRetry checks config and builds the middleware.
func NewRetry(config Config, logger watermill.LoggerAdapter) (*Retry, error) {
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	topics, err := config.Policy.Topics(config.Topic, config.Handler, config.TopicName)
	if err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	pub, err := tiered.NewPublisher(config.Publisher, logger)
	if err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	return &Retry{policy: config.Policy.WithDefaults(), topics: topics, pub: pub, logger: logger}, nil
}

// Topics returns the handler's topics: its own, one per tier, and the
// dead-letter topic.
func (r *Retry) Topics() tiered.Topics { return r.topics }

// Middleware wraps h. Messages consumed from a tier topic (known from the
// router's context, [message.SubscribeTopicFromCtx]) carry retry metadata
// that is checked before h runs: malformed metadata sends the message to
// the dead-letter topic with the reason. On any other topic the retry
// metadata is ignored.
//
// When h fails (returns an error or panics), the middleware publishes a
// copy of the message (same UUID, payload and metadata, plus retry
// metadata) to the next tier or the dead-letter topic and returns nil, so
// the router acks the original. Messages h returned are dropped with the
// failure. If the publish fails, it returns an error that wraps both
// failures and the router Nacks the original.
func (r *Retry) Middleware(h message.HandlerFunc) message.HandlerFunc {
	// The closure stays small: the router runs each message on a new
	// goroutine, and a large frame here made every message grow its
	// stack before reaching h.
	return func(msg *message.Message) ([]*message.Message, error) {
		consumedFrom := message.SubscribeTopicFromCtx(msg.Context())
		if _, onTier := r.topics.Tier(consumedFrom); onTier {
			return r.handleTier(h, msg, consumedFrom)
		}
		consumed := msg.Context()
		produced, err := call(h, msg)
		if err == nil {
			return produced, nil
		}
		return r.failed(h, msg, consumed, nil, err)
	}
}

// handleTier checks the retry metadata of a message consumed from a tier
// topic, then runs h.
func (r *Retry) handleTier(h message.HandlerFunc, msg *message.Message, consumedFrom string) ([]*message.Message, error) {
	info, err := tiered.ReadInfo(msg.Metadata)
	if err == nil {
		// The holding subscriber hands on a malformed due time at
		// once and relies on this check to dead-letter it.
		_, _, err = tiered.DueAt(msg.Metadata)
	}
	if err == nil && (info.OriginalTopic != r.topics.Main || info.Handler != r.topics.Handler) {
		err = fmt.Errorf("%w: message belongs to handler %q on topic %q, not %q on %q",
			tiered.ErrInvalidMetadata, info.Handler, info.OriginalTopic, r.topics.Handler, r.topics.Main)
	}
	if err != nil {
		reason := fmt.Errorf("retry metadata on tier topic %s cannot be used: %w", consumedFrom, err)
		now := time.Now()
		info = tiered.Info{OriginalTopic: r.topics.Main, Handler: r.topics.Handler, FirstFailure: now, LastFailure: now}
		return nil, r.deadLetter(msg, info, reason)
	}
	consumed := msg.Context()
	produced, err := call(h, msg)
	if err == nil {
		return produced, nil
	}
	return r.failed(h, msg, consumed, &info, err)
}

// failed handles an attempt of h that failed with err: quick attempts,
// then the next tier or the dead-letter topic. tier is the retry metadata
// of a message consumed from a tier topic, nil on the main topic.
func (r *Retry) failed(h message.HandlerFunc, msg *message.Message, consumed context.Context, tier *tiered.Info, err error) ([]*message.Message, error) {
	var info tiered.Info
	if tier != nil {
		info = *tier
	}
	if tier == nil && r.policy.Quick.Attempts > 0 {
		var produced []*message.Message
		produced, err = r.quick(h, msg, consumed, err)
		if err == nil {
			return produced, nil
		}
	}
	if errors.Is(consumed.Err(), context.Canceled) {
		// The subscriber gave the message up while it was handled (a
		// Kafka rebalance ended the session, the subscription closed):
		// the attempt was interrupted, not failed. Nack it; whoever
		// consumes it next tries again without losing an attempt.
		// (A deadline, such as Watermill's Timeout middleware sets, is
		// a failure like any other and goes to the next tier.)
		return nil, fmt.Errorf("attempt interrupted, the message's context was cancelled: %w", err)
	}

	attempt := info.Attempt + 1
	now := time.Now()
	if info.Attempt == 0 {
		info.FirstFailure = now
	}
	info.Attempt = attempt
	info.OriginalTopic = r.topics.Main
	info.Handler = r.topics.Handler
	info.LastFailure = now
	info.LastError = err.Error()

	decision := r.policy.Decide(tiered.ClassifyParams{Err: err, Message: msg, Attempt: attempt})
	next, ok := r.policy.TierFor(attempt)
	if decision == tiered.DeadLetter || !ok {
		if decision == tiered.DeadLetter {
			err = fmt.Errorf("attempt %d failed with an error that is not retried: %w", attempt, err)
		} else {
			err = fmt.Errorf("attempt %d of %d failed, no attempts left: %w", attempt, r.policy.MaxAttempts, err)
		}
		return nil, r.deadLetter(msg, info, err)
	}
	return nil, r.toTier(msg, info, next, err)
}

// call runs h, turning a panic into an error.
func call(h message.HandlerFunc, msg *message.Message) (produced []*message.Message, err error) {
	defer func() {
		if p := recover(); p != nil {
			produced, err = nil, fmt.Errorf("handler panicked: %v", p)
		}
	}()
	produced, err = h(msg)
	if err == nil {
		return produced, nil
	}
	return nil, err
}

// quick runs the in-process attempts. It stops early on a permanent
// error, on a classifier's DeadLetter, or when consumed (the message's
// context as the middleware received it) ends.
func (r *Retry) quick(h message.HandlerFunc, msg *message.Message, consumed context.Context, err error) ([]*message.Message, error) {
	b := r.policy.Quick.BackOff()
	b.Reset()
	for i := 0; i < r.policy.Quick.Attempts; i++ {
		if r.policy.Decide(tiered.ClassifyParams{Err: err, Message: msg, Attempt: 1}) == tiered.DeadLetter {
			return nil, err
		}
		wait := b.NextBackOff()
		if wait == backoff.Stop {
			return nil, err
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-consumed.Done():
			timer.Stop()
			return nil, err
		}
		r.logger.Trace("Quick attempt", watermill.LogFields{"message_uuid": msg.UUID, "attempt": i + 1})
		// A middleware inside this one (Watermill's Timeout) may have
		// replaced the context and cancelled it when the attempt ended.
		msg.SetContext(consumed)
		var produced []*message.Message
		if produced, err = call(h, msg); err == nil {
			return produced, nil
		}
	}
	return nil, err
}

// hopCopy copies msg for its next hop: same UUID, payload and metadata, and
// a live context that keeps the original's values (tracing, correlation)
// but not its cancellation or deadline, which Watermill's Timeout
// middleware may have used up.
//
// On the first hop, from the handler's own topic, whatever origin the
// metadata claims is cleared too, so the backend records the true one.
func (r *Retry) hopCopy(msg *message.Message, info tiered.Info) *message.Message {
	out := msg.Copy()
	out.SetContext(context.WithoutCancel(msg.Context()))
	tiered.ClearInfo(out.Metadata)
	if _, onTier := r.topics.Tier(message.SubscribeTopicFromCtx(msg.Context())); !onTier {
		tiered.ClearOrigin(out.Metadata)
	}
	info.Write(out.Metadata)
	return out
}

func (r *Retry) toTier(msg *message.Message, info tiered.Info, tier int, cause error) error {
	info.Tier = tier + 1
	out := r.hopCopy(msg, info)
	d := r.topics.Delays[tier]
	delay.Message(out, delay.For(d))
	topic := r.topics.Tiers[tier]
	if err := r.pub.Publish(topic, out); err != nil {
		r.logger.Error("Cannot publish failed message to its tier, Nacking it", err, watermill.LogFields{
			"topic": topic, "message_uuid": msg.UUID, "attempt": info.Attempt,
		})
		return errors.Join(cause, fmt.Errorf("publish to tier topic %s: %w", topic, err))
	}
	r.logger.Debug("Message sent to tier", watermill.LogFields{
		"topic": topic, "message_uuid": msg.UUID, "tier": info.Tier, "attempt": info.Attempt, "due_in": d.String(),
	})
	return nil
}

func (r *Retry) deadLetter(msg *message.Message, info tiered.Info, reason error) error {
	info.Tier = 0
	info.LastError = reason.Error()
	out := r.hopCopy(msg, info)
	ctx := msg.Context()
	consumedFrom := message.SubscribeTopicFromCtx(ctx)
	if consumedFrom == "" {
		consumedFrom = r.topics.Main
	}
	out.Metadata.Set(wmiddleware.ReasonForPoisonedKey, tiered.Truncate(reason.Error(), tiered.MaxErrorBytes))
	out.Metadata.Set(wmiddleware.PoisonedTopicKey, consumedFrom)
	out.Metadata.Set(wmiddleware.PoisonedHandlerKey, r.topics.Handler)
	out.Metadata.Set(wmiddleware.PoisonedSubscriberKey, message.SubscriberNameFromCtx(ctx))
	if err := r.pub.Publish(r.topics.DLQ, out); err != nil {
		r.logger.Error("Cannot publish failed message to the dead-letter topic, Nacking it", err, watermill.LogFields{
			"topic": r.topics.DLQ, "message_uuid": msg.UUID, "attempt": info.Attempt,
		})
		return errors.Join(reason, fmt.Errorf("publish to dead-letter topic %s: %w", r.topics.DLQ, err))
	}
	r.logger.Info("Message sent to the dead-letter topic", watermill.LogFields{
		"topic": r.topics.DLQ, "message_uuid": msg.UUID, "attempt": info.Attempt, "reason": tiered.Truncate(reason.Error(), 200),
	})
	return nil
}
