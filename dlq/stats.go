package dlq

import (
	"context"
	"slices"
	"strings"
	"time"
)

// MaxDistinct bounds the distinct reasons, handlers and original topics
// that [Stats] counts one by one; the others are counted together (the
// Other fields), so that memory stays flat whatever a topic holds.
const MaxDistinct = 1000

// Stats describe the messages of a topic that a filter selects.
type Stats struct {
	// Topic is the topic read.
	Topic string `json:"topic"`
	// Scanned is how many messages were read; Count how many the filter
	// selected.
	Scanned int64 `json:"scanned"`
	Count   int64 `json:"count"`
	// Oldest and Newest are the broker times of the oldest and newest
	// messages selected; zero when Count is 0.
	Oldest time.Time `json:"oldest"`
	Newest time.Time `json:"newest"`
	// Foreign counts the selected messages that Watermill did not write
	// (see [Message.Foreign]).
	Foreign int64 `json:"foreign"`
	// Redriven counts the selected messages that were redriven before.
	Redriven int64 `json:"redriven"`
	// Reasons counts the selected messages by normalised reason
	// ([NormalizeReason]), most frequent first. Messages without a
	// reason count under "".
	Reasons []Count `json:"reasons"`
	// OtherReasons counts the messages whose reason came after
	// [MaxDistinct] distinct ones.
	OtherReasons int64 `json:"other_reasons"`
	// Handlers and OriginalTopics count the selected messages by
	// [Message.Handler] and [Message.OriginalTopic], most frequent
	// first, with the same bound.
	Handlers       []Count `json:"handlers"`
	OriginalTopics []Count `json:"original_topics"`
}

// Count is how many messages share a value.
type Count struct {
	// Value is the value shared: a normalised reason, a handler, a topic.
	Value string `json:"value"`
	// Count is how many selected messages have it.
	Count int64 `json:"count"`
	// Example is one message's own value, before normalisation (reasons
	// only).
	Example string `json:"example,omitempty"`
}

// Stats reads the messages of topic that filter selects, streaming, and
// counts them.
func (c *Client) Stats(ctx context.Context, topic string, filter Filter) (*Stats, error) {
	m, err := c.prepareScan(ctx, topic, filter)
	if err != nil {
		return nil, err
	}
	acc := newStatsAcc(topic)
	err = c.d.scan(ctx, topic, scanOptions{since: filter.From, until: filter.To}, func(msg *Message) error {
		acc.s.Scanned++
		if m.match(msg) {
			acc.add(msg)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return acc.result(), nil
}

// statsAcc accumulates [Stats].
type statsAcc struct {
	s                  Stats
	reasons            counter
	handlers, original counter
	normalized         map[string]string // reason → NormalizeReason(reason), bounded
}

func newStatsAcc(topic string) *statsAcc {
	return &statsAcc{s: Stats{Topic: topic}, reasons: newCounter(), handlers: newCounter(), original: newCounter(), normalized: map[string]string{}}
}

func (a *statsAcc) add(msg *Message) {
	s := &a.s
	s.Count++
	if s.Oldest.IsZero() || msg.Time.Before(s.Oldest) {
		s.Oldest = msg.Time
	}
	if msg.Time.After(s.Newest) {
		s.Newest = msg.Time
	}
	if msg.Foreign {
		s.Foreign++
	}
	if msg.Redrives() > 0 {
		s.Redriven++
	}
	reason := msg.Reason()
	if msg.Raw != nil {
		reason = msg.DecodeError
	}
	norm, ok := a.normalized[reason]
	if !ok {
		norm = NormalizeReason(reason)
		if len(a.normalized) >= 4*MaxDistinct {
			clear(a.normalized) // bounded: reasons with IDs rarely repeat
		}
		a.normalized[reason] = norm
	}
	a.reasons.add(norm, reason)
	a.handlers.add(msg.Handler(), "")
	a.original.add(msg.OriginalTopic(), "")
}

func (a *statsAcc) result() *Stats {
	s := a.s
	s.Reasons, s.OtherReasons = a.reasons.sorted()
	s.Handlers, _ = a.handlers.sorted()
	s.OriginalTopics, _ = a.original.sorted()
	return &s
}

// counter counts up to MaxDistinct distinct values.
type counter struct {
	counts map[string]*Count
	other  int64
}

func newCounter() counter { return counter{counts: map[string]*Count{}} }

func (c *counter) add(value, example string) {
	if n, ok := c.counts[value]; ok {
		n.Count++
		return
	}
	if len(c.counts) >= MaxDistinct {
		c.other++
		return
	}
	c.counts[value] = &Count{Value: value, Count: 1, Example: example}
}

// sorted returns the counts, most frequent first (then by value), and
// the count of the others.
func (c *counter) sorted() ([]Count, int64) {
	out := make([]Count, 0, len(c.counts))
	for _, n := range c.counts {
		out = append(out, *n)
	}
	slices.SortFunc(out, func(a, b Count) int {
		if a.Count != b.Count {
			if a.Count > b.Count {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Value, b.Value)
	})
	return out, c.other
}

// NormalizeReason folds the parts of a reason that differ from message to
// message, so that one cause counts as one reason: UUIDs become "<uuid>",
// words of 8 or more hexadecimal digits (0x prefix allowed) that mix
// digits and letters "<hex>", every other run of digits "N", and runs of
// white space one space.
//
//	"attempt 3 of 3 failed, no attempts left: order 1042: card declined"
//	→ "attempt N of N failed, no attempts left: order N: card declined"
//
// It is one pass over the text, without regular expressions: stats and
// redrives call it for every message.
func NormalizeReason(reason string) string {
	var b strings.Builder
	b.Grow(len(reason))
	space := false
	for i := 0; i < len(reason); {
		c := reason[i]
		if isSpace(c) {
			space = true
			i++
			continue
		}
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		if !isWord(c) {
			b.WriteByte(c)
			i++
			continue
		}
		// At the start of a word.
		if n := uuidAt(reason, i); n > 0 {
			b.WriteString("<uuid>")
			i += n
			continue
		}
		j := i
		for j < len(reason) && isWord(reason[j]) {
			j++
		}
		word := reason[i:j]
		if isHexID(word) {
			b.WriteString("<hex>")
		} else {
			for k := 0; k < len(word); {
				if isDigit(word[k]) {
					for k < len(word) && isDigit(word[k]) {
						k++
					}
					b.WriteByte('N')
					continue
				}
				b.WriteByte(word[k])
				k++
			}
		}
		i = j
	}
	return b.String()
}

// uuidAt returns 36 when a UUID (8-4-4-4-12 hexadecimal digits) that ends
// a word starts at s[i], else 0.
func uuidAt(s string, i int) int {
	const n = 36
	if len(s)-i < n || (i+n < len(s) && isWord(s[i+n])) {
		return 0
	}
	for k := 0; k < n; k++ {
		c := s[i+k]
		switch k {
		case 8, 13, 18, 23:
			if c != '-' {
				return 0
			}
		default:
			if !isHex(c) {
				return 0
			}
		}
	}
	return n
}

// isHexID reports whether word is 8 or more hexadecimal digits, with an
// optional 0x, mixing digits and letters.
func isHexID(word string) bool {
	if len(word) > 2 && word[0] == '0' && (word[1] == 'x' || word[1] == 'X') {
		word = word[2:]
	}
	if len(word) < 8 {
		return false
	}
	digit, letter := false, false
	for k := 0; k < len(word); k++ {
		c := word[k]
		switch {
		case isDigit(c):
			digit = true
		case isHex(c):
			letter = true
		default:
			return false
		}
	}
	return digit && letter
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}
func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }
func isWord(c byte) bool {
	return isDigit(c) || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
}
