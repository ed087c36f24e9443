package middleware

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// Config configures a [Retry].
type Config struct {
	// Publisher receives the tier and dead-letter copies. It must return
	// only after the broker confirmed the write (the publishers of the
	// pubsub backends do), or, for a backend that pipelines, once the
	// backend has taken charge of confirming it before the original is
	// committed. It is wrapped in a [tiered.Publisher].
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

// Retry is the middleware of one handler. Build it with [NewRetry]; add
// [Retry.Middleware] to the handler on its own topic and
// [Retry.TierMiddleware] of tier n to the handler on Topics().Tiers[n-1].
// Each handler is bound, when it is wired, to the hop it consumes, so the
// attempt count never depends on what other middleware do to a message's
// context.
type Retry struct {
	policy tiered.Policy
	topics tiered.Topics
	pub    *tiered.Publisher
	logger watermill.LoggerAdapter
	stuck  *stuckCopies
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
	return &Retry{
		policy: config.Policy.WithDefaults(),
		topics: topics,
		pub:    pub,
		logger: logger,
		stuck:  newStuckCopies(),
	}, nil
}

// Topics returns the handler's topics: its own, one per tier, and the
// dead-letter topic.
func (r *Retry) Topics() tiered.Topics { return r.topics }

// hop is what a handler consumes: the handler's own topic (tier 0), one of
// its tiers, or a retired tier of an earlier policy.
type hop struct {
	topic string
	tier  int // 0 on the handler's own topic
	delay time.Duration
}

// Middleware wraps h, the handler on the handler's own topic: attempt 1.
//
// The retry keys a message carries there are not trusted (anyone can
// produce to that topic): they are removed before h runs, so h and
// [tiered.ReadInfo] never see forged values. When h fails (returns an error
// or panics), the middleware publishes a copy of the message (same UUID,
// payload and metadata, plus retry metadata) to the first tier, or to the
// dead-letter topic for a permanent error or when MaxAttempts is 1, and
// returns nil, so the router acks the original; messages h returned are
// dropped with the failure. See [Retry.TierMiddleware] for what happens
// when the copy cannot be published.
func (r *Retry) Middleware(h message.HandlerFunc) message.HandlerFunc {
	main := &hop{topic: r.topics.Main}
	// The closure stays small: the router runs each message on a new
	// goroutine, and a large frame here made every message grow its
	// stack before reaching h.
	return func(msg *message.Message) ([]*message.Message, error) {
		tiered.ClearUntrusted(msg.Metadata)
		delivered := msg.Context()
		produced, err := runHandler(h, msg)
		if err == nil {
			return produced, nil
		}
		return r.failed(h, msg, delivered, main, nil, err)
	}
}

// TierMiddleware returns the middleware of the handler that consumes tier
// (numbered from 1, as in [tiered.KeyTier]; its topic is
// Topics().Tiers[tier-1]).
//
// Messages there carry retry metadata written by this library, which is
// checked before h runs: metadata that cannot be used sends the message to
// the dead-letter topic with the reason. When h fails, the copy goes to the
// next tier, or to the dead-letter topic after the last attempt.
//
// When a copy cannot be published, the original is neither lost nor
// handled again:
//
//   - a temporary failure (the broker is down, a leader election, a
//     timeout) is retried as a publish, with a back-off from 50ms to 5s,
//     for as long as the subscriber keeps the message (its context is not
//     cancelled); h does not run again. If the subscriber gives the
//     message up, the error is returned and the router Nacks it;
//   - a copy that can never be published ([tiered.ErrUnpublishable]: too
//     large for the broker, its topic deleted, not authorized) is replaced
//     by a [tiered.DeadLetterStub] in the dead-letter topic: no payload, the
//     reason, and where the original sits on the broker;
//   - if even that cannot be published, the error is returned (the router
//     Nacks the original) after a delay that grows with each try of the
//     same message, from 250ms to 30s, and is logged at Error once per
//     message.
func (r *Retry) TierMiddleware(tier int) (message.HandlerMiddleware, error) {
	if tier < 1 || tier > len(r.topics.Tiers) {
		return nil, fmt.Errorf("handler %q has tiers 1 to %d, not %d", r.topics.Handler, len(r.topics.Tiers), tier)
	}
	return r.tierMiddleware(&hop{topic: r.topics.Tiers[tier-1], tier: tier, delay: r.topics.Delays[tier-1]}), nil
}

// RetiredTierMiddleware returns the middleware of a handler that consumes
// topic, a tier topic of an earlier policy (its delay has left the
// current one) that still holds messages. They are handled like those of a
// current tier, and their next failure follows the current policy: the
// tier for their next attempt, or the dead-letter topic.
func (r *Retry) RetiredTierMiddleware(topic string, delay time.Duration) (message.HandlerMiddleware, error) {
	if err := tiered.ValidateTopicName(topic); err != nil {
		return nil, err
	}
	if topic == r.topics.Main || topic == r.topics.DLQ {
		return nil, fmt.Errorf("%q is the handler's own or dead-letter topic, not a retired tier", topic)
	}
	if _, current := r.topics.Tier(topic); current {
		return nil, fmt.Errorf("%q is a tier of the current policy: use TierMiddleware", topic)
	}
	if delay <= 0 {
		return nil, fmt.Errorf("retired tier %q: delay is %v, must be positive", topic, delay)
	}
	return r.tierMiddleware(&hop{topic: topic, tier: -1, delay: delay}), nil
}

func (r *Retry) tierMiddleware(from *hop) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			return r.handleTier(h, msg, from)
		}
	}
}

// handleTier checks the retry metadata of a message consumed from a tier
// topic, then runs h.
func (r *Retry) handleTier(h message.HandlerFunc, msg *message.Message, from *hop) ([]*message.Message, error) {
	delivered := msg.Context()
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
		reason := fmt.Errorf("retry metadata on tier topic %s cannot be used: %w", from.topic, err)
		now := time.Now()
		info = tiered.Info{OriginalTopic: r.topics.Main, Handler: r.topics.Handler, FirstFailure: now, LastFailure: now}
		return nil, r.deadLetter(msg, delivered, from, info, reason)
	}
	produced, err := runHandler(h, msg)
	if err == nil {
		return produced, nil
	}
	return r.failed(h, msg, delivered, from, &info, err)
}

// failed handles an attempt of h that failed with err: quick attempts,
// then the next tier or the dead-letter topic. tier is the retry metadata
// of a message consumed from a tier topic, nil on the main topic.
func (r *Retry) failed(h message.HandlerFunc, msg *message.Message, delivered context.Context, from *hop, tier *tiered.Info, err error) ([]*message.Message, error) {
	var info tiered.Info
	if tier != nil {
		info = *tier
	}
	var panicked wmiddleware.RecoveredPanicError
	if errors.As(err, &panicked) {
		r.logger.Error("Handler panicked", err, watermill.LogFields{"topic": from.topic, "message_uuid": msg.UUID})
	}
	if tier == nil && r.policy.Quick.Attempts > 0 {
		var produced []*message.Message
		produced, err = r.quick(h, msg, delivered, err)
		if err == nil {
			return produced, nil
		}
	}
	if gaveUp(delivered, msg) {
		// The subscriber gave the message up while it was handled (a
		// Kafka rebalance ended the session, the subscription closed):
		// the attempt was interrupted, not failed. Nack it; whoever
		// consumes it next tries again without losing an attempt.
		// (A deadline, such as Watermill's Timeout middleware sets, is
		// a failure like any other and goes to the next tier; so is a
		// message acked before its handler ended, whose context the
		// subscriber ends at the Ack.)
		return nil, fmt.Errorf("attempt interrupted, the message's context was cancelled: %w", err)
	}

	// A forged or corrupt attempt near MaxInt must not wrap around into
	// an early tier: it saturates, and is then past every MaxAttempts.
	attempt := math.MaxInt
	if info.Attempt < math.MaxInt {
		attempt = info.Attempt + 1
	}
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
		return nil, r.deadLetter(msg, delivered, from, info, err)
	}
	return nil, r.toTier(msg, delivered, from, info, next, err)
}

// gaveUp reports whether the subscriber gave msg up while it was handled:
// its context was cancelled (not merely past a deadline) and it was not
// acked. A message acked early (Watermill's InstantAck) has its context
// ended by the subscriber at the Ack, which is no reason to drop its copy.
func gaveUp(delivered context.Context, msg *message.Message) bool {
	if !errors.Is(delivered.Err(), context.Canceled) {
		return false
	}
	select {
	case <-msg.Acked():
		return false
	default:
		return true
	}
}

// copyForHop copies msg for its next hop: same UUID, payload and
// metadata, and a live context that keeps the original's values (tracing,
// correlation, the backend's Delivery) but not its cancellation or
// deadline, which Watermill's Timeout middleware may have used up.
//
// On the first hop, from the handler's own topic, whatever origin the
// metadata claims is replaced by the one the backend recorded.
func (r *Retry) copyForHop(msg *message.Message, delivered context.Context, from *hop, info tiered.Info) *message.Message {
	out := msg.Copy()
	out.SetContext(context.WithoutCancel(delivered))
	tiered.ClearInfo(out.Metadata)
	if from.tier == 0 {
		tiered.ClearOrigin(out.Metadata)
		if d := tiered.DeliveryFrom(delivered); d != nil && d.WriteOrigin != nil {
			d.WriteOrigin(out.Metadata)
		}
	}
	info.Write(out.Metadata)
	return out
}

func (r *Retry) toTier(msg *message.Message, delivered context.Context, from *hop, info tiered.Info, tier int, cause error) error {
	info.Tier = tier
	out := r.copyForHop(msg, delivered, from, info)
	d := r.topics.Delays[tier-1]
	delay.Message(out, delay.For(d))
	topic := r.topics.Tiers[tier-1]
	if err := r.publish(msg, delivered, from, topic, out); err != nil {
		return errors.Join(cause, err)
	}
	r.logger.Debug("Message sent to tier", watermill.LogFields{
		"topic": topic, "message_uuid": msg.UUID, "tier": info.Tier, "attempt": info.Attempt, "due_in": d.String(),
	})
	return nil
}

func (r *Retry) deadLetter(msg *message.Message, delivered context.Context, from *hop, info tiered.Info, reason error) error {
	info.Tier = 0
	info.LastError = reason.Error()
	out := r.copyForHop(msg, delivered, from, info)
	r.poison(out, delivered, from, tiered.Truncate(reason.Error(), tiered.MaxErrorBytes))
	if err := r.publish(msg, delivered, from, r.topics.DLQ, out); err != nil {
		return errors.Join(reason, err)
	}
	r.logger.Info("Message sent to the dead-letter topic", watermill.LogFields{
		"topic": r.topics.DLQ, "message_uuid": msg.UUID, "attempt": info.Attempt, "reason": tiered.Truncate(reason.Error(), 200),
	})
	return nil
}

// poison sets Watermill's poison keys on a dead-letter copy.
func (r *Retry) poison(out *message.Message, delivered context.Context, from *hop, reason string) {
	out.Metadata.Set(wmiddleware.ReasonForPoisonedKey, reason)
	out.Metadata.Set(wmiddleware.PoisonedTopicKey, from.topic)
	out.Metadata.Set(wmiddleware.PoisonedHandlerKey, r.topics.Handler)
	out.Metadata.Set(wmiddleware.PoisonedSubscriberKey, message.SubscriberNameFromCtx(delivered))
}
