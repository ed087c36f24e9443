package dlq

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Filter selects messages. Every field that is set must match; the zero
// Filter selects everything. Foreign messages carry no reason, handler or
// original topic, so a filter on those never selects them.
type Filter struct {
	// From selects messages the broker stored at or after From.
	//
	// Optional. Defaults to no lower bound.
	From time.Time

	// To selects messages the broker stored before To.
	//
	// Optional. Defaults to no upper bound.
	To time.Time

	// Reason is a regular expression (RE2, as the regexp package reads
	// it) that must match somewhere in the poison reason
	// ([Message.Reason]). Anchor it (^...$) to match the whole reason.
	//
	// Optional. Defaults to any reason.
	Reason string

	// Handler selects the messages of one handler ([Message.Handler]).
	//
	// Optional. Defaults to any handler.
	Handler string

	// OriginalTopic selects the messages first consumed from one topic
	// ([Message.OriginalTopic]).
	//
	// Optional. Defaults to any topic.
	OriginalTopic string

	// Key selects the Kafka records with this key. Redis entries have no
	// key: a Key filter on Redis is an error.
	//
	// Optional. Defaults to any key.
	Key string

	// UUID selects the message with this Watermill UUID.
	//
	// Optional. Defaults to any UUID.
	UUID string
}

// IsZero reports whether f selects everything.
func (f Filter) IsZero() bool { return f == Filter{} }

// timeOnly reports whether f selects by time alone.
func (f Filter) timeOnly() bool {
	f.From, f.To = time.Time{}, time.Time{}
	return f.IsZero()
}

// Validate reports every problem with f without changing it. Each error
// wraps [ErrInvalidFilter].
func (f Filter) Validate() error {
	_, err := f.compile()
	return err
}

// String describes f for logs and confirmations: "reason=~timeout
// handler=billing", or "everything".
func (f Filter) String() string {
	var parts []string
	add := func(name, v string) {
		if v != "" {
			parts = append(parts, name+v)
		}
	}
	if !f.From.IsZero() {
		add("from=", f.From.UTC().Format(time.RFC3339))
	}
	if !f.To.IsZero() {
		add("to=", f.To.UTC().Format(time.RFC3339))
	}
	add("reason=~", quoteIfSpace(f.Reason))
	add("handler=", f.Handler)
	add("original-topic=", f.OriginalTopic)
	add("key=", quoteIfSpace(f.Key))
	add("uuid=", f.UUID)
	if len(parts) == 0 {
		return "everything"
	}
	return strings.Join(parts, " ")
}

func quoteIfSpace(s string) string {
	if strings.ContainsAny(s, " \t\n\"") {
		return fmt.Sprintf("%q", s)
	}
	return s
}

// hash names a filter in checkpoint names: the same filter always gives
// the same 8 hex digits.
func (f Filter) hash() string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%d\x00%d\x00%s\x00%s\x00%s\x00%s\x00%s",
		unixMilli(f.From), unixMilli(f.To), f.Reason, f.Handler, f.OriginalTopic, f.Key, f.UUID)))
	return hex.EncodeToString(sum[:4])
}

func unixMilli(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// matcher is a validated filter.
type matcher struct {
	f      Filter
	reason *regexp.Regexp
}

func (f Filter) compile() (*matcher, error) {
	var errs []error
	m := &matcher{f: f}
	if f.Reason != "" {
		re, err := regexp.Compile(f.Reason)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: reason %q is not a regular expression: %v", ErrInvalidFilter, f.Reason, err))
		}
		m.reason = re
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.To.After(f.From) {
		errs = append(errs, fmt.Errorf("%w: the time range ends (%s) before it starts (%s)", ErrInvalidFilter,
			f.To.UTC().Format(time.RFC3339), f.From.UTC().Format(time.RFC3339)))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}

// match reports whether msg is selected.
func (m *matcher) match(msg *Message) bool {
	f := m.f
	switch {
	case !f.From.IsZero() && msg.Time.Before(f.From):
		return false
	case !f.To.IsZero() && !msg.Time.Before(f.To):
		return false
	case f.UUID != "" && msg.UUID != f.UUID:
		return false
	case f.Key != "" && string(msg.Key) != f.Key:
		return false
	case f.Handler != "" && msg.Handler() != f.Handler:
		return false
	case f.OriginalTopic != "" && msg.OriginalTopic() != f.OriginalTopic:
		return false
	case m.reason != nil && !m.reason.MatchString(msg.Reason()):
		return false
	}
	return true
}
