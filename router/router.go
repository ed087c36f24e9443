package router

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/retry-kafka/retry-kafka/internal/instrument"
	"github.com/retry-kafka/retry-kafka/middleware"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// prepareTimeout bounds the topic preparation of one handler.
const prepareTimeout = 30 * time.Second

// Config configures a [Retrier].
type Config struct {
	// Backend gives the subscriptions and the publisher of tier and
	// dead-letter copies (see the pubsub package).
	//
	// Required.
	Backend tiered.Backend

	// Policy is the retry policy of every handler added.
	//
	// Required.
	Policy tiered.Policy

	// TopicName names the tier and dead-letter topics.
	//
	// Optional. Defaults to [tiered.DefaultTopicName]:
	// "{topic}.{handler}.retry.{delay}" and "{topic}.{handler}.dlq".
	TopicName tiered.TopicNamer

	// Registerer, when set, gets the retry metrics of every handler added
	// (see the README, "Metrics and tracing"): the middleware's counters
	// and lateness histogram ([middleware.Config].Registerer) and the
	// holding subscribers' gauges of held messages
	// ([tiered.SubscriberConfig].Registerer), labelled with the handler's
	// name (handler_name) and tier. Give it the registry of Watermill's
	// metrics.NewPrometheusMetricsBuilder: no name clashes, and
	// handler_name is the same label. Retriers on one registry share the
	// metrics.
	//
	// Optional. Defaults to none: nothing is registered, here or in the
	// global registry.
	Registerer prometheus.Registerer

	// TracerProvider, when set, traces the attempts of every handler added
	// and every copy published, with the W3C trace context carried in
	// metadata from hop to hop (see [middleware.Config].TracerProvider for
	// when the first attempt gets its span, and the README, "Metrics and
	// tracing").
	//
	// Optional. Defaults to none: no spans.
	TracerProvider trace.TracerProvider

	// DeadLetters, with Registerer, reports the dead-letter topic of every
	// handler added at each scrape: retry_kafka_dlq_messages (how many it
	// holds), retry_kafka_dlq_oldest_seconds (the age of the oldest) and
	// retry_kafka_dlq_read_errors_total, read through it at most every 5
	// seconds. Give it a *dlq.Client on the same broker (see the dlq
	// package); the backend itself does not tell.
	//
	// Optional. Defaults to none. Requires Registerer.
	DeadLetters DeadLetterDepth
}

// DeadLetterDepth reads how many messages a dead-letter topic holds and
// when the broker stored the oldest (zero when it holds none), for
// [Config].DeadLetters. The dlq package's Client implements it.
type DeadLetterDepth interface {
	DeadLetterDepth(ctx context.Context, topic string) (messages int64, oldest time.Time, err error)
}

// Validate reports every problem with the config without changing it.
func (c Config) Validate() error {
	var errs []error
	if c.Backend == nil {
		errs = append(errs, errors.New("Backend is nil"))
	}
	if err := c.Policy.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.DeadLetters != nil && c.Registerer == nil {
		errs = append(errs, errors.New("DeadLetters is set without a Registerer to report to"))
	}
	return errors.Join(errs...)
}

// Retrier adds handlers with tiered retries to Watermill routers.
type Retrier struct {
	config Config
	logger watermill.LoggerAdapter
	dlqs   *instrument.DeadLetters // nil without Config.DeadLetters
}

// New checks config and returns a Retrier.
func New(config Config, logger watermill.LoggerAdapter) (*Retrier, error) {
	if err := config.Validate(); err != nil {
		return nil, fmt.Errorf("invalid config: %w", err)
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	config.Policy = config.Policy.WithDefaults()
	w := &Retrier{config: config, logger: logger}
	if config.DeadLetters != nil {
		var err error
		if w.dlqs, err = instrument.RegisterDeadLetters(config.Registerer); err != nil {
			return nil, fmt.Errorf("invalid config: %w", err)
		}
	}
	return w, nil
}

// Handler is what one Add call put on the router.
type Handler struct {
	// Main is the handler on the handler's own topic.
	Main *message.Handler
	// Tiers holds one handler per tier topic, in tier order.
	Tiers []*message.Handler
	// Retired holds one handler per retired tier: a tier topic of an
	// earlier policy of this handler (its delay has left Policy.Delays)
	// that still held messages when the handler was added. Each stops by
	// itself once its tier is drained.
	Retired []*message.Handler
	// Topics names the handler's topics.
	Topics tiered.Topics
}

// AddHandler adds a handler that consumes topic, like
// [message.Router.AddHandler], with tiered retries. Messages h returns are
// published to publishTopic with publisher, from the main attempt and from
// every tier. The handler's tier subscriptions are named "{name}.retry.{delay}".
//
// It prepares the handler's topics on the backend (creating tier and
// dead-letter topics where needed, waiting at most 30 seconds), and returns
// an error, never a panic, for a bad name or a taken handler name. If the
// router already runs, call its RunHandlers afterwards.
//
// Changing Policy.Delays renames tier topics, so messages may still wait in
// tiers of an earlier policy. Where the backend can inspect topics
// ([tiered.Inspector]: Kafka and Redis) and topics have the default names,
// AddHandler finds the handler's retired tiers that still hold messages,
// logs them, and consumes each until it is drained (Handler.Retired): their
// messages are handed on when due, never later than their retired delay
// allows, and their next failure follows the current policy. A handler that
// is renamed or removed leaves its topics and groups as they are: its
// messages wait in its tiers until a handler of the old name runs again
// (see README, "Changing the policy").
func (w *Retrier) AddHandler(r *message.Router, name, topic, publishTopic string, publisher message.Publisher, h message.HandlerFunc) (*Handler, error) {
	if h == nil {
		return nil, errors.New("nil handler function")
	}
	return w.add(r, nil, name, topic, func(handlerName, subTopic string, sub message.Subscriber) *message.Handler {
		return r.AddHandler(handlerName, subTopic, sub, publishTopic, publisher, h)
	})
}

// AddConsumerHandler adds a handler that consumes topic and returns no
// messages, like [message.Router.AddConsumerHandler], with tiered retries.
// See [Retrier.AddHandler].
func (w *Retrier) AddConsumerHandler(r *message.Router, name, topic string, h message.NoPublishHandlerFunc) (*Handler, error) {
	if h == nil {
		return nil, errors.New("nil handler function")
	}
	return w.add(r, nil, name, topic, func(handlerName, subTopic string, sub message.Subscriber) *message.Handler {
		return r.AddConsumerHandler(handlerName, subTopic, sub, h)
	})
}

// Attach gives tiered retries to a handler that something else added to
// the router, such as a Watermill CQRS event or command processor:
//
//	h, err := eventProcessor.AddHandler(handler)
//	...
//	_, err = retrying.Attach(r, h, handlerName, topic)
//
// name is the handler's name on the router and topic the topic it
// consumes. Attach adds the retry middleware to h and one tier handler per
// tier running the same handler function. The tier handlers publish
// nothing: attach to handlers that return no messages. Router-level
// middleware applies to the tier handlers too; middleware added to h alone
// does not (add it to each of the returned Tiers as well).
func (w *Retrier) Attach(r *message.Router, h *message.Handler, name, topic string) (*Handler, error) {
	if h == nil {
		return nil, errors.New("nil *message.Handler")
	}
	if r == nil {
		return nil, errors.New("nil router")
	}
	fn, ok := r.Handlers()[name]
	if !ok {
		return nil, fmt.Errorf("the router has no handler named %q", name)
	}
	return w.add(r, h, name, topic, func(handlerName, subTopic string, sub message.Subscriber) *message.Handler {
		return r.AddConsumerHandler(handlerName, subTopic, sub, func(msg *message.Message) error {
			_, err := fn(msg)
			return err
		})
	})
}

// add wires the main handler (unless main is given) and the tier handlers.
func (w *Retrier) add(
	r *message.Router,
	main *message.Handler,
	name, topic string,
	addOne func(handlerName, topic string, sub message.Subscriber) *message.Handler,
) (*Handler, error) {
	if r == nil {
		return nil, errors.New("nil router")
	}
	var system string
	if ms, ok := w.config.Backend.(tiered.MessagingSystem); ok {
		system = ms.MessagingSystem()
	}
	retry, err := middleware.NewRetry(middleware.Config{
		Publisher:       w.config.Backend.Publisher(),
		Policy:          w.config.Policy,
		Topic:           topic,
		Handler:         name,
		TopicName:       w.config.TopicName,
		Registerer:      w.config.Registerer,
		TracerProvider:  w.config.TracerProvider,
		MessagingSystem: system,
	}, w.logger)
	if err != nil {
		return nil, fmt.Errorf("handler %q: %w", name, err)
	}
	topics := retry.Topics()
	var onUndecodable func(tiered.UndecodableParams) // counted in the metrics
	if w.config.Registerer != nil {
		onUndecodable = retry.Undecodable
	}

	names := make([]string, len(topics.Tiers))
	existing := r.Handlers()
	if _, taken := existing[name]; taken && main == nil {
		return nil, fmt.Errorf("the router already has a handler named %q", name)
	}
	for i, d := range topics.Delays {
		names[i] = name + ".retry." + tiered.FormatDelay(d)
		if _, taken := existing[names[i]]; taken {
			return nil, fmt.Errorf("the router already has a handler named %q", names[i])
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), prepareTimeout)
	defer cancel()
	if err := w.config.Backend.Prepare(ctx, topics); err != nil {
		return nil, fmt.Errorf("handler %q: prepare topics: %w", name, err)
	}
	retired, err := w.findRetiredTiers(ctx, topics)
	if err != nil {
		return nil, fmt.Errorf("handler %q: %w", name, err)
	}

	// Make every subscriber and middleware before touching the router, so
	// that a failure leaves the router as it was.
	var subs []message.Subscriber
	closeAll := func() {
		for _, s := range subs {
			_ = s.Close()
		}
	}
	var mainSub message.Subscriber
	if main == nil {
		mainSub, err = w.config.Backend.Subscriber(tiered.SubscribeParams{
			Group: topics.Group(topic), Handler: name, Topic: topic, DLQ: topics.DLQ, OnUndecodable: onUndecodable,
		})
		if err != nil {
			return nil, fmt.Errorf("handler %q: subscribe to %s: %w", name, topic, err)
		}
		subs = append(subs, mainSub)
	}
	// hops are the tier handlers to add: one per tier of the policy, then
	// one per retired tier that still holds messages.
	type hop struct {
		name, topic string
		tier        int // tiered.RetiredTier for a retired one
		delay       time.Duration
		sub         message.Subscriber
		mw          message.HandlerMiddleware
	}
	var hops []hop
	subscribe := func(h hop, group string) (hop, error) {
		sub, err := w.config.Backend.Subscriber(tiered.SubscribeParams{
			Group: group, Handler: name, Topic: h.topic, Delay: h.delay, DLQ: topics.DLQ, OnUndecodable: onUndecodable,
		})
		if err != nil {
			return h, fmt.Errorf("handler %q: subscribe to %s: %w", name, h.topic, err)
		}
		subs = append(subs, sub)
		if h.tier == tiered.RetiredTier {
			if sub, err = newDrainingSubscriber(sub, w.config.Backend, group, w.logger); err != nil {
				return h, fmt.Errorf("handler %q: %w", name, err)
			}
		}
		hold := tiered.SubscriberConfig{MaxDelay: h.delay}
		if w.config.Registerer != nil {
			hold.Registerer, hold.Handler, hold.Tier = w.config.Registerer, name, h.tier
		}
		if h.sub, err = tiered.NewSubscriber(sub, hold, w.logger); err != nil {
			return h, fmt.Errorf("handler %q: %w", name, err)
		}
		return h, nil
	}
	for i, tierTopic := range topics.Tiers {
		mw, err := retry.TierMiddleware(i + 1)
		if err == nil {
			var h hop
			h, err = subscribe(hop{name: names[i], topic: tierTopic, tier: i + 1, delay: topics.Delays[i], mw: mw}, topics.Group(tierTopic))
			hops = append(hops, h)
		}
		if err != nil {
			closeAll()
			return nil, err
		}
	}
	for _, rt := range retired {
		h := hop{name: name + ".retry." + tiered.FormatDelay(rt.delay), topic: rt.topic, tier: tiered.RetiredTier, delay: rt.delay}
		if _, taken := existing[h.name]; taken {
			closeAll()
			return nil, fmt.Errorf("the router already has a handler named %q", h.name)
		}
		mw, err := retry.RetiredTierMiddleware(rt.topic, rt.delay)
		if err == nil {
			h.mw = mw
			h, err = subscribe(h, rt.topic) // a tier's group is named after its topic
			hops = append(hops, h)
		}
		if err != nil {
			closeAll()
			return nil, err
		}
		w.logger.Info("Found a retired tier that still holds messages: consuming it until it is drained", watermill.LogFields{
			"handler_name": name, "topic": rt.topic, "delay": rt.delay.String(), "messages": rt.lag,
		})
	}

	if w.dlqs != nil {
		if err := w.dlqs.Watch(name, topics.DLQ, w.config.DeadLetters.DeadLetterDepth); err != nil {
			closeAll()
			return nil, fmt.Errorf("handler %q: %w", name, err)
		}
	}

	out := &Handler{Main: main, Topics: topics}
	if main == nil {
		out.Main = addOne(name, topic, mainSub)
	}
	// Each handler is bound to the hop it consumes here, where it is
	// wired, not from a context value that other middleware may replace.
	out.Main.AddMiddleware(retry.Middleware)
	for i, h := range hops {
		added := addOne(h.name, h.topic, h.sub)
		added.AddMiddleware(h.mw)
		if i < len(topics.Tiers) {
			out.Tiers = append(out.Tiers, added)
		} else {
			out.Retired = append(out.Retired, added)
		}
	}
	w.logger.Debug("Added handler with tiered retries", watermill.LogFields{
		"handler_name": name, "topic": topic, "tiers": len(topics.Tiers), "dlq": topics.DLQ,
	})
	return out, nil
}
