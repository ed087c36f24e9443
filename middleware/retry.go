package middleware

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/retry-kafka/retry-kafka/internal/instrument"
	"github.com/retry-kafka/retry-kafka/internal/stack"
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

	// Registerer, when set, gets the handler's retry metrics, labelled
	// handler_name=Handler (see the README, "Metrics and tracing"):
	// retry_kafka_tier_messages_total, retry_kafka_dead_letters_total,
	// retry_kafka_successes_total, retry_kafka_publish_failures_total and
	// the histogram retry_kafka_lateness_seconds. Retriers given the same
	// registry share the metrics (their counts add up), and none of the
	// names clashes with Watermill's components/metrics on that registry.
	// The holding subscribers report the messages they hold when given the
	// same registry ([tiered.SubscriberConfig]).
	//
	// Optional. Defaults to none: nothing is registered, here or in the
	// global registry.
	Registerer prometheus.Registerer

	// TracerProvider, when set, traces the attempts: a span per attempt
	// ("process {topic}", a child of the span in the message's context or
	// of the trace context in its metadata; on a tier, linked to the span
	// of the first delivery) and a span per copy published ("send
	// {topic}"), whose W3C trace context (traceparent, tracestate) the
	// copy carries, so that its tier attempt and dead letter belong to the
	// same trace. The first attempt's span starts before the handler runs
	// when the message's trace is sampled; otherwise only if the handler
	// fails, back-dated to when it began, so that the happy path of an
	// unrecorded trace costs no span. (Under a sampler that ignores the
	// parent, the first such span recorded for a message whose parent is
	// not sampled starts at the failure; see the README, "Metrics and
	// tracing".)
	//
	// Optional. Defaults to none: no spans; the trace context a message
	// carries is copied to every hop as it is.
	TracerProvider trace.TracerProvider

	// MessagingSystem is the messaging.system attribute of the spans, as
	// OpenTelemetry's semantic conventions spell it: "kafka", "redis".
	//
	// Optional. Defaults to none (the attribute is left out). The router
	// sets it from the backend ([tiered.MessagingSystem]).
	MessagingSystem string
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
	if c.Registerer != nil && !utf8.ValidString(c.Handler) {
		errs = append(errs, fmt.Errorf("Handler %q is not valid UTF-8, which metric labels must be", c.Handler))
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

	metrics *instrument.Metrics // nil without a Registerer
	tracer  *instrument.Tracer  // nil without a TracerProvider
	// tiers and dlq are where copies go, one per tier and the dead-letter
	// topic, with their instruments resolved once.
	tiers []*target
	dlq   *target
	// dead counts dead letters by reason class; nil without metrics.
	dead [numReasons]prometheus.Counter
	// main is the hop of the handler's own topic.
	main *hop
	// backdateUnsampled is set once the span of a failed attempt 1 whose
	// parent trace is not sampled was recorded all the same (a sampler
	// that does not follow the parent): from then on such attempts read
	// the clock when the handler begins, to back-date their span. Under a
	// parent-based sampler (the SDK's default) those spans record
	// nothing, and the happy path reads no clock for them.
	backdateUnsampled atomic.Bool
}

// target is a topic that copies are published to: a tier (1 and up) or
// the dead-letter topic (tier 0).
type target struct {
	topic string
	tier  int
	// delayFor is a tier's delay as Watermill's delay.DelayedForKey
	// writes it ("10s"); empty for the dead-letter topic.
	delayFor string
	// sent counts the copies published to a tier; failures the failed
	// tries; send makes their spans. Each is nil when off.
	sent     prometheus.Counter
	failures prometheus.Counter
	send     *instrument.Span
}

// deadReason is a dead-letter reason class, the index of its counter.
type deadReason int

const (
	reasonExhausted deadReason = iota
	reasonPermanent
	reasonClassified
	reasonInvalidMetadata
	reasonUndecodable
	reasonUnpublishable
	numReasons
)

// deadReasonLabels are the reason label values, by deadReason.
var deadReasonLabels = [numReasons]string{
	reasonExhausted:       instrument.ReasonExhausted,
	reasonPermanent:       instrument.ReasonPermanent,
	reasonClassified:      instrument.ReasonClassified,
	reasonInvalidMetadata: instrument.ReasonInvalidMetadata,
	reasonUndecodable:     instrument.ReasonUndecodable,
	reasonUnpublishable:   instrument.ReasonUnpublishable,
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
	r := &Retry{
		policy: config.Policy.WithDefaults(),
		topics: topics,
		pub:    pub,
		logger: logger,
		stuck:  newStuckCopies(),
	}
	if config.Registerer != nil {
		if r.metrics, err = instrument.Register(config.Registerer); err != nil {
			return nil, fmt.Errorf("invalid config: %w", err)
		}
		for i, label := range deadReasonLabels {
			r.dead[i] = r.metrics.DeadLetters.WithLabelValues(topics.Handler, label)
		}
	}
	if config.TracerProvider != nil {
		r.tracer = instrument.NewTracer(config.TracerProvider, config.MessagingSystem, topics.Handler)
	}
	for i, topic := range topics.Tiers {
		r.tiers = append(r.tiers, r.newTarget(topic, i+1))
	}
	r.dlq = r.newTarget(topics.DLQ, 0)
	r.main = r.newHop(topics.Main, 0, 0)
	return r, nil
}

// newTarget returns the target topic of tier (0: the dead-letter topic)
// with its instruments.
func (r *Retry) newTarget(topic string, tier int) *target {
	t := &target{topic: topic, tier: tier}
	if tier > 0 {
		t.delayFor = r.topics.Delays[tier-1].String()
	}
	if r.metrics != nil {
		destination := instrument.DestinationDLQ
		if tier > 0 {
			destination = instrument.DestinationTier
			t.sent = r.metrics.TierMessages.WithLabelValues(r.topics.Handler, instrument.TierLabel(tier))
		}
		t.failures = r.metrics.PublishFailures.WithLabelValues(r.topics.Handler, destination)
	}
	if r.tracer != nil {
		t.send = r.tracer.Send(topic)
	}
	return t
}

// newHop returns the hop of topic with its instruments.
func (r *Retry) newHop(topic string, tier int, delay time.Duration) *hop {
	h := &hop{topic: topic, tier: tier, delay: delay}
	if r.metrics != nil {
		label := instrument.TierLabel(tier)
		h.succeeded = r.metrics.Successes.WithLabelValues(r.topics.Handler, label)
		if tier != 0 {
			h.lateness = r.metrics.Lateness.WithLabelValues(r.topics.Handler, label)
		}
	}
	if r.tracer != nil {
		h.process = r.tracer.Process(topic)
	}
	return h
}

// Undecodable counts an entry that the backend could not decode and
// dead-lettered (retry_kafka_dead_letters_total, reason "undecodable").
// Pass it as [tiered.SubscribeParams].OnUndecodable of the handler's
// subscriptions; the router does.
func (r *Retry) Undecodable(tiered.UndecodableParams) {
	r.countDead(reasonUndecodable)
}

func (r *Retry) countDead(reason deadReason) {
	if c := r.dead[reason]; c != nil {
		c.Inc()
	}
}

// Topics returns the handler's topics: its own, one per tier, and the
// dead-letter topic.
func (r *Retry) Topics() tiered.Topics { return r.topics }

// hop is what a handler consumes: the handler's own topic (tier 0), one of
// its tiers, or a retired tier of an earlier policy.
type hop struct {
	topic string
	tier  int // 0 on the handler's own topic, -1 on a retired tier
	delay time.Duration

	// The hop's instruments, each nil when off.
	succeeded prometheus.Counter
	lateness  prometheus.Observer // tiers only
	process   *instrument.Span
}

// success counts a successful attempt on the hop.
func (h *hop) success() {
	if h.succeeded != nil {
		h.succeeded.Inc()
	}
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
	main := r.main
	if main.process != nil {
		return r.tracedMiddleware(h, main)
	}
	// The closure stays small: the router runs each message on a new
	// goroutine, and a large frame here made every message grow its
	// stack before reaching h.
	return func(msg *message.Message) ([]*message.Message, error) {
		tiered.ClearUntrusted(msg.Metadata)
		delivered := msg.Context()
		produced, err := runHandler(h, msg)
		if err == nil {
			main.success()
			return produced, nil
		}
		// The failure path (the copy, its publish) is deep: grow the
		// stack for it here, where few frames are on it to copy, if h
		// did not grow it already.
		_ = stack.Reserve2K(0)
		return r.failed(h, msg, delivered, main, nil, err)
	}
}

// tracedMiddleware is Middleware with tracing on. Attempt 1 has its span,
// which the failure path's send spans are children of. In a trace that is
// being recorded (the message's parent span is sampled) the span starts
// before h runs, so that h's own spans are its children. Otherwise it
// starts only if h fails, back-dated to when h began: an OpenTelemetry SDK
// span costs more CPU than this middleware and most of a broker's delivery
// (see BENCHMARKS.md), which on the happy path of a trace that nobody
// records would buy nothing. When the parent is there but not sampled, the
// clock is not even read for that, until such a span was recorded (see
// Retry.backdateUnsampled). The closure stays as small as Middleware's;
// the spans are started in methods whose frames are gone when h runs.
func (r *Retry) tracedMiddleware(h message.HandlerFunc, main *hop) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		tiered.ClearUntrusted(msg.Metadata)
		sampled, hasParent := instrument.Parent(msg.Context(), msg)
		if sampled {
			return r.handleMainSampled(h, msg, main)
		}
		delivered := msg.Context()
		began := unknownStart
		if !hasParent || r.backdateUnsampled.Load() {
			began = time.Since(clockBase)
		}
		produced, err := runHandler(h, msg)
		if err == nil {
			main.success()
			return produced, nil
		}
		return r.failedUntraced(h, msg, delivered, main, began, err)
	}
}

// handleMainSampled runs attempt 1 of a message in a recorded trace in
// its span.
func (r *Retry) handleMainSampled(h message.HandlerFunc, msg *message.Message, main *hop) ([]*message.Message, error) {
	_ = stack.Reserve8K(0)
	delivered, span := main.process.StartProcess(msg.Context(), msg, 1, 0, trace.SpanContext{}, time.Time{})
	defer span.End()
	msg.SetContext(delivered)
	produced, err := runHandler(h, msg)
	if err == nil {
		main.success()
		return produced, nil
	}
	return r.failed(h, msg, delivered, main, nil, err)
}

// clockBase is what the untraced happy path reads the time against:
// time.Since of a time with a monotonic reading reads one clock, where
// time.Now reads two (wall and monotonic), and a message outside a
// recorded trace only needs to know when its handler began if it fails.
var clockBase = time.Now()

// unknownStart is the start of an attempt whose handler's start was not
// read (see Retry.backdateUnsampled).
const unknownStart = time.Duration(-1)

// failedUntraced starts the span of a failed attempt 1 that had none,
// back-dated to began (time.Since(clockBase) when h was called, or
// unknownStart: not back-dated), and handles the failure in it.
func (r *Retry) failedUntraced(h message.HandlerFunc, msg *message.Message, delivered context.Context, main *hop, began time.Duration, err error) ([]*message.Message, error) {
	var start time.Time
	if began != unknownStart {
		// Now less how long h ran: the wall clock now, so a step of the
		// system clock since clockBase does not move the span.
		start = time.Now().Add(began - time.Since(clockBase))
	}
	_ = stack.Reserve8K(0)
	delivered, span := main.process.StartProcess(delivered, msg, 1, 0, trace.SpanContext{}, start)
	defer span.End()
	if began == unknownStart && span.IsRecording() {
		// The sampler records attempts whose parent is not sampled:
		// back-date the next ones.
		r.backdateUnsampled.Store(true)
	}
	msg.SetContext(delivered)
	return r.failed(h, msg, delivered, main, nil, err)
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
	return r.tierMiddleware(r.newHop(r.topics.Tiers[tier-1], tier, r.topics.Delays[tier-1])), nil
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
	return r.tierMiddleware(r.newHop(topic, -1, delay)), nil
}

func (r *Retry) tierMiddleware(from *hop) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			// handleTier's checks are deep enough to outgrow the
			// goroutine's starting stack: grow it here, where few
			// frames are on it to copy, once, to what the attempt
			// needs (with tracing on, what its span's start and end
			// need, sampled or not: see instrument.Span.StartProcess).
			if from.process == nil {
				_ = stack.Reserve2K(0)
			} else {
				_ = stack.Reserve8K(0)
			}
			return r.handleTier(h, msg, from)
		}
	}
}

// handleTier checks the retry metadata of a message consumed from a tier
// topic, then runs h.
func (r *Retry) handleTier(h message.HandlerFunc, msg *message.Message, from *hop) ([]*message.Message, error) {
	entered := time.Now()
	if from.process != nil {
		span := r.startTierSpan(msg, from)
		defer span.End()
	}
	delivered := msg.Context()
	info, err := tiered.ReadInfo(msg.Metadata)
	var due time.Time
	var hasDue bool
	if err == nil {
		// The holding subscriber hands on a malformed due time at
		// once and relies on this check to dead-letter it.
		due, hasDue, err = tiered.DueAt(msg.Metadata)
	}
	if err == nil && (info.OriginalTopic != r.topics.Main || info.Handler != r.topics.Handler) {
		err = fmt.Errorf("%w: message belongs to handler %q on topic %q, not %q on %q",
			tiered.ErrInvalidMetadata, info.Handler, info.OriginalTopic, r.topics.Handler, r.topics.Main)
	}
	if err != nil {
		return nil, r.unusableMetadata(msg, delivered, from, err)
	}
	if from.lateness != nil && hasDue {
		// A due time the holding subscriber clamped (forged, or from a
		// clock far ahead) is handed on before it: it counts as on time.
		from.lateness.Observe(max(entered.Sub(due), 0).Seconds())
	}
	produced, err := runHandler(h, msg)
	if err == nil {
		from.success()
		return produced, nil
	}
	return r.failed(h, msg, delivered, from, &info, err)
}

// unusableMetadata dead-letters msg, whose retry metadata cannot be used
// (err says why).
func (r *Retry) unusableMetadata(msg *message.Message, delivered context.Context, from *hop, err error) error {
	reason := fmt.Errorf("retry metadata on tier topic %s cannot be used: %w", from.topic, err)
	if from.process != nil {
		instrument.Fail(trace.SpanFromContext(delivered), reason)
	}
	now := time.Now()
	info := tiered.Info{OriginalTopic: r.topics.Main, Handler: r.topics.Handler, FirstFailure: now, LastFailure: now}
	return r.deadLetter(msg, delivered, from, info, reasonInvalidMetadata, reason)
}

// startTierSpan starts the span of an attempt on a tier, linked to the
// first delivery's span, and puts it in msg's context.
func (r *Retry) startTierSpan(msg *message.Message, from *hop) trace.Span {
	attempt, tier := 0, 0 // unknown when the metadata cannot be used
	if info, err := tiered.ReadInfo(msg.Metadata); err == nil {
		attempt, tier = info.Attempt+1, info.Tier
	}
	first := instrument.ParseSpanContext(msg.Metadata.Get(tiered.KeyFirstSpan))
	ctx, span := from.process.StartProcess(msg.Context(), msg, attempt, tier, first, time.Time{})
	msg.SetContext(ctx)
	return span
}

// failed handles an attempt of h that failed with err: quick attempts,
// then the next tier or the dead-letter topic. tier is the retry metadata
// of a message consumed from a tier topic, nil on the main topic.
func (r *Retry) failed(h message.HandlerFunc, msg *message.Message, delivered context.Context, from *hop, tier *tiered.Info, err error) ([]*message.Message, error) {
	var info tiered.Info
	if tier != nil {
		info = *tier
	}
	if from.process != nil {
		instrument.Fail(trace.SpanFromContext(delivered), err)
	}
	if _, panicked := errors.AsType[wmiddleware.RecoveredPanicError](err); panicked {
		r.logger.Error("Handler panicked", err, watermill.LogFields{"topic": from.topic, "message_uuid": msg.UUID})
	}
	if tier == nil && r.policy.Quick.Attempts > 0 {
		var produced []*message.Message
		produced, err = r.quick(h, msg, delivered, err)
		if err == nil {
			from.success()
			if from.process != nil {
				// Ok overrides the Error that the first call's failure set.
				trace.SpanFromContext(delivered).SetStatus(codes.Ok, "an in-process attempt succeeded")
			}
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
		class := reasonExhausted
		if decision == tiered.DeadLetter {
			class = reasonClassified
			if tiered.IsPermanent(err) {
				class = reasonPermanent
			}
			err = fmt.Errorf("attempt %d failed with an error that is not retried: %w", attempt, err)
		} else {
			err = fmt.Errorf("attempt %d of %d failed, no attempts left: %w", attempt, r.policy.MaxAttempts, err)
		}
		return nil, r.deadLetter(msg, delivered, from, info, class, err)
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
	// Not msg.Copy(): its metadata map starts empty and grows while it is
	// filled, then again while the retry keys are added.
	out := message.NewMessage(msg.UUID, msg.Payload)
	out.Metadata = make(message.Metadata, len(msg.Metadata)+hopKeys)
	maps.Copy(out.Metadata, msg.Metadata)
	out.SetContext(context.WithoutCancel(delivered))
	tiered.ClearInfo(out.Metadata)
	if from.tier == 0 {
		tiered.ClearOrigin(out.Metadata)
		if d := tiered.DeliveryFrom(delivered); d != nil && d.WriteOrigin != nil {
			d.WriteOrigin(out.Metadata)
		}
		if from.process != nil {
			// The attempt's span is the first delivery's, which every
			// later attempt links to.
			if first := instrument.FormatSpanContext(trace.SpanContextFromContext(delivered)); first != "" {
				out.Metadata.Set(tiered.KeyFirstSpan, first)
			}
		}
	} else if first := msg.Metadata.Get(tiered.KeyFirstSpan); first != "" {
		out.Metadata.Set(tiered.KeyFirstSpan, first)
	}
	info.Write(out.Metadata)
	return out
}

// hopKeys is about how many keys copyForHop and toTier add to a copy's
// metadata (the retry keys of tiered.Info, the first span, the origin and
// Watermill's delay), a size hint for its map.
const hopKeys = 12

func (r *Retry) toTier(msg *message.Message, delivered context.Context, from *hop, info tiered.Info, tier int, cause error) error {
	info.Tier = tier
	out := r.copyForHop(msg, delivered, from, info)
	to := r.tiers[tier-1]
	// What delay.Message(out, delay.For(d)) writes, less its due time:
	// the publisher (tiered.Publisher) stamps that, and KeyDueAt, itself.
	out.Metadata.Set(delay.DelayedForKey, to.delayFor)
	stubbed, err := r.publish(msg, delivered, from, to, out, info.Attempt)
	if err != nil {
		return errors.Join(cause, err)
	}
	if stubbed {
		r.countDead(reasonUnpublishable)
		return nil
	}
	if to.sent != nil {
		to.sent.Inc()
	}
	// No log line per message sent on: it cost the failure path a map of
	// fields and five allocations even when the logger drops it; the
	// counters and spans tell the same (see the README, "Metrics and
	// tracing").
	return nil
}

func (r *Retry) deadLetter(msg *message.Message, delivered context.Context, from *hop, info tiered.Info, class deadReason, reason error) error {
	info.Tier = 0
	info.LastError = reason.Error()
	out := r.copyForHop(msg, delivered, from, info)
	r.poison(out, delivered, from, tiered.Truncate(reason.Error(), tiered.MaxErrorBytes))
	if _, err := r.publish(msg, delivered, from, r.dlq, out, info.Attempt); err != nil {
		return errors.Join(reason, err)
	}
	r.countDead(class)
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
