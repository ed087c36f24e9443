package tiered

import (
	"errors"
	"fmt"
	"time"
)

// MaxTopicNameLen is the longest topic name accepted, in bytes (Kafka's
// limit).
const MaxTopicNameLen = 249

// TopicParams describes one topic of a handler, for a [TopicNamer].
type TopicParams struct {
	// Topic is the handler's own (main) topic.
	Topic string
	// Handler is the handler's name.
	Handler string
	// DLQ is true for the dead-letter topic; Tier and Delay are then zero.
	DLQ bool
	// Tier is the tier's number, from 1, as in [KeyTier].
	Tier int
	// Delay is the tier's delay.
	Delay time.Duration
}

// TopicNamer names the tier and dead-letter topics of a handler. It must
// give each tier of a handler its own name, and names that differ between
// handlers, so that a retry never reaches another handler.
type TopicNamer func(TopicParams) string

// DefaultTopicName names tier topics "{topic}.{handler}.retry.{delay}" and
// the dead-letter topic "{topic}.{handler}.dlq", with delays written as
// [FormatDelay] does ("orders.billing.retry.10s", "orders.billing.dlq").
func DefaultTopicName(p TopicParams) string {
	if p.DLQ {
		return p.Topic + "." + p.Handler + ".dlq"
	}
	return p.Topic + "." + p.Handler + ".retry." + FormatDelay(p.Delay)
}

// FormatDelay writes d in the largest whole unit that divides it: "10s",
// "5m", "2h", "1500ms", "250us"; or in nanoseconds ("10ns").
func FormatDelay(d time.Duration) string {
	for _, u := range []struct {
		d    time.Duration
		name string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}, {time.Millisecond, "ms"}, {time.Microsecond, "us"}} {
		if d%u.d == 0 {
			return fmt.Sprintf("%d%s", d/u.d, u.name)
		}
	}
	return fmt.Sprintf("%dns", int64(d))
}

// Topics are the topics of one handler.
type Topics struct {
	// Main is the handler's own topic.
	Main string
	// Handler is the handler's name.
	Handler string
	// Tiers holds one topic per tier that attempts can reach, in order.
	Tiers []string
	// Delays holds the delay of each topic in Tiers.
	Delays []time.Duration
	// DLQ is the dead-letter topic.
	DLQ string
}

// Group returns the consumer group that consumes topic for this handler,
// before any prefix a backend adds: "{Main}.{Handler}" for the handler's
// own topic ("orders.billing"), and for a tier the tier topic's own name
// ("orders.billing.retry.10s"). Groups are named from topic and handler,
// so two services that both have a "billing" handler, on different topics,
// never share a group. It returns "" for a topic that is not the handler's.
func (t Topics) Group(topic string) string {
	if topic == t.Main {
		return t.Main + "." + t.Handler
	}
	if _, ok := t.Tier(topic); ok {
		return topic
	}
	return ""
}

// Tier returns the number (from 1, as in [KeyTier]) of the tier whose
// topic is topic, or false when topic is not one of the tier topics.
func (t Topics) Tier(topic string) (int, bool) {
	for i, name := range t.Tiers {
		if name == topic {
			return i + 1, true
		}
	}
	return 0, false
}

// Topics names the topics of the handler called handler that consumes
// topic, with namer (nil means [DefaultTopicName]). Every name is checked:
// not empty, at most [MaxTopicNameLen] bytes, only ASCII letters, digits,
// '.', '_' and '-', all distinct. Each error wraps [ErrInvalidTopicName].
func (p Policy) Topics(topic, handler string, namer TopicNamer) (Topics, error) {
	p = p.WithDefaults()
	if namer == nil {
		namer = DefaultTopicName
	}
	var errs []error
	if err := ValidateTopicName(topic); err != nil {
		errs = append(errs, fmt.Errorf("topic: %w", err))
	}
	if handler == "" {
		errs = append(errs, fmt.Errorf("%w: empty handler name", ErrInvalidTopicName))
	}
	if len(errs) > 0 {
		return Topics{}, errors.Join(errs...)
	}

	t := Topics{Main: topic, Handler: handler}
	seen := map[string]string{topic: "the main topic"}
	check := func(name, what string) {
		if err := ValidateTopicName(name); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
			return
		}
		if other, dup := seen[name]; dup {
			errs = append(errs, fmt.Errorf("%w: %s and %s are both named %q", ErrInvalidTopicName, what, other, name))
			return
		}
		seen[name] = what
	}
	for i := range p.Tiers() {
		d := p.Delays[i]
		name := namer(TopicParams{Topic: topic, Handler: handler, Tier: i + 1, Delay: d})
		check(name, fmt.Sprintf("tier %d (%v)", i+1, d))
		t.Tiers = append(t.Tiers, name)
		t.Delays = append(t.Delays, d)
	}
	t.DLQ = namer(TopicParams{Topic: topic, Handler: handler, DLQ: true})
	check(t.DLQ, "the dead-letter topic")
	if len(errs) > 0 {
		return Topics{}, errors.Join(errs...)
	}
	return t, nil
}

// ValidateTopicName checks that name suits every backend: not empty, at
// most [MaxTopicNameLen] bytes, only ASCII letters, digits, '.', '_' and
// '-', and not "." or "..".
func ValidateTopicName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidTopicName)
	case len(name) > MaxTopicNameLen:
		return fmt.Errorf("%w: %q is %d bytes, the limit is %d", ErrInvalidTopicName, name, len(name), MaxTopicNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("%w: %q", ErrInvalidTopicName, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: %q has %q at byte %d; use only ASCII letters, digits, '.', '_' and '-'", ErrInvalidTopicName, name, c, i)
		}
	}
	return nil
}
