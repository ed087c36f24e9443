// Package instrument holds retry-kafka's Prometheus instruments and its
// OpenTelemetry spans, shared by the retry middleware, the holding
// subscriber and the router. Nothing here is registered anywhere until a
// caller passes a prometheus.Registerer to [Register]; nothing is traced
// until it passes a TracerProvider to [NewTracer].
package instrument

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names. The README's "Metrics" section documents them; the
// dashboard of examples/observability queries exactly these.
const (
	// namespace prefixes every name, so that none can clash with
	// Watermill's components/metrics (handler_execution_time_seconds,
	// publish_time_seconds, subscriber_messages_received_total, under the
	// namespace and subsystem its builder is given).
	namespace = "retry_kafka"

	NameTierMessages    = namespace + "_tier_messages_total"
	NameDeadLetters     = namespace + "_dead_letters_total"
	NameSuccesses       = namespace + "_successes_total"
	NamePublishFailures = namespace + "_publish_failures_total"
	NameLateness        = namespace + "_lateness_seconds"
	NameHeld            = namespace + "_held_messages"
	NameOldestHeld      = namespace + "_oldest_held_seconds"
)

// Label names. handler_name is Watermill's own label name (its
// components/metrics uses it for the router's handler), so that a query can
// join the two; here its value is the handler's name as given to the
// router package (its tier handlers included), not the name of each tier
// handler on the router.
const (
	LabelHandler     = "handler_name"
	LabelTier        = "tier"
	LabelReason      = "reason"
	LabelDestination = "destination"
)

// Dead-letter reason classes: the values of the reason label, a fixed set
// whatever the errors say.
const (
	// ReasonExhausted: the last attempt failed.
	ReasonExhausted = "exhausted"
	// ReasonPermanent: the handler returned a tiered.Permanent error.
	ReasonPermanent = "permanent"
	// ReasonClassified: the policy's Classify sent the error there.
	ReasonClassified = "classified"
	// ReasonInvalidMetadata: a message on a tier topic carried retry
	// metadata that cannot be used.
	ReasonInvalidMetadata = "invalid_metadata"
	// ReasonUndecodable: the backend could not decode the broker's entry
	// into a message.
	ReasonUndecodable = "undecodable"
	// ReasonUnpublishable: the copy for the next tier could never be
	// published, so a stub of it was dead-lettered instead.
	ReasonUnpublishable = "unpublishable"
)

// Reasons lists every dead-letter reason class.
var Reasons = [...]string{ReasonExhausted, ReasonPermanent, ReasonClassified, ReasonInvalidMetadata, ReasonUndecodable, ReasonUnpublishable}

// Destination label values of publish failures.
const (
	DestinationTier = "tier"
	DestinationDLQ  = "dlq"
)

// RetiredTierLabel is the tier label of a tier of an earlier policy that
// the router drains (see router's "Changing the policy").
const RetiredTierLabel = "retired"

// TierLabel returns the tier label value of tier: "0" for the handler's
// own topic, "1" and up for its tiers, [RetiredTierLabel] for a negative
// tier (a retired one).
func TierLabel(tier int) string {
	if tier < 0 {
		return RetiredTierLabel
	}
	return strconv.Itoa(tier)
}

// LatenessBuckets are the buckets of the lateness histogram, in seconds:
// a due message normally reaches its handler within milliseconds; seconds
// mean a tier that cannot keep up.
var LatenessBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}

// Metrics are the instruments on one registry. Every retrier and holding
// subscriber given the same registry shares them (see [Register]), so that
// two of them never clash: their counts add up.
type Metrics struct {
	TierMessages    *prometheus.CounterVec
	DeadLetters     *prometheus.CounterVec
	Successes       *prometheus.CounterVec
	PublishFailures *prometheus.CounterVec
	Lateness        *prometheus.HistogramVec
	Holds           *Holds
}

// Register registers the instruments on reg, or returns those already
// registered there by an earlier call. It fails, leaving reg as it was, when
// another collector holds one of the names.
func Register(reg prometheus.Registerer) (*Metrics, error) {
	if reg == nil {
		return nil, errors.New("nil prometheus.Registerer")
	}
	handlerTier := []string{LabelHandler, LabelTier}
	m := &Metrics{
		TierMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameTierMessages,
			Help: "Failed messages sent to a tier topic (publish confirmed), by handler and tier (1 is the first tier).",
		}, handlerTier),
		DeadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameDeadLetters,
			Help: "Messages sent to the dead-letter topic (publish confirmed), by handler and reason: exhausted, permanent, classified, invalid_metadata, undecodable, unpublishable.",
		}, []string{LabelHandler, LabelReason}),
		Successes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NameSuccesses,
			Help: "Handler calls that succeeded, by handler and the tier the message was consumed from (0 is the handler's own topic, retired a tier of an earlier policy).",
		}, handlerTier),
		PublishFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: NamePublishFailures,
			Help: "Failed tries to publish a tier or dead-letter copy, by handler and destination (tier, dlq).",
		}, []string{LabelHandler, LabelDestination}),
		Lateness: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    NameLateness,
			Help:    "How late a tier's messages reach the retry middleware: entry time minus due time, in seconds, by handler and tier.",
			Buckets: LatenessBuckets,
		}, handlerTier),
		Holds: NewHolds(nil),
	}
	var added []prometheus.Collector
	fail := func(err error) (*Metrics, error) {
		for _, c := range added {
			reg.Unregister(c)
		}
		return nil, err
	}
	var err error
	for _, slot := range []**prometheus.CounterVec{&m.TierMessages, &m.DeadLetters, &m.Successes, &m.PublishFailures} {
		if *slot, err = registerOrReuse(reg, *slot, &added); err != nil {
			return fail(err)
		}
	}
	if m.Lateness, err = registerOrReuse(reg, m.Lateness, &added); err != nil {
		return fail(err)
	}
	if m.Holds, err = registerOrReuse(reg, m.Holds, &added); err != nil {
		return fail(err)
	}
	return m, nil
}

// registerOrReuse registers c on reg, or returns the collector of the same
// type that an earlier call registered with the same descriptors.
func registerOrReuse[C prometheus.Collector](reg prometheus.Registerer, c C, added *[]prometheus.Collector) (C, error) {
	err := reg.Register(c)
	if err == nil {
		*added = append(*added, c)
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("register retry-kafka metrics: %w", err)
}
