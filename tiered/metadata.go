package tiered

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
)

// Metadata keys written by retry-kafka. Read and write them through [Info],
// [DueAt] and the backends' helpers rather than by hand.
//
// Retry keys are only trusted on tier topics, which this library writes; on
// a handler's own topic they are ignored and replaced at the first failure.
// Times are Unix milliseconds in decimal.
const (
	// KeyAttempt is the number of attempts that failed so far (1 after the
	// first failure).
	KeyAttempt = "retry_attempt"
	// KeyOriginalTopic is the handler's own topic, where the message
	// was first consumed.
	KeyOriginalTopic = "retry_original_topic"
	// KeyHandler is the name of the handler that failed.
	KeyHandler = "retry_handler"
	// KeyFirstFailure is the time of the first failure.
	KeyFirstFailure = "retry_first_failure_ms"
	// KeyLastFailure is the time of the latest failure.
	KeyLastFailure = "retry_last_failure_ms"
	// KeyDueAt is the earliest time the message may reach the handler
	// again. Written by [Publisher], honoured by [Subscriber].
	KeyDueAt = "retry_due_at_ms"
	// KeyTier is the 1-based tier the message is in; 0 on the dead-letter
	// topic.
	KeyTier = "retry_tier"
	// KeyLastError is the text of the latest error, at most
	// [MaxErrorBytes] bytes, replaced (not appended) at each hop.
	KeyLastError = "retry_last_error"

	// KeyKafkaPartition is the partition the message was first consumed
	// from (Kafka only).
	KeyKafkaPartition = "retry_kafka_partition"
	// KeyKafkaOffset is the offset the message was first consumed at
	// (Kafka only).
	KeyKafkaOffset = "retry_kafka_offset"
	// KeyKafkaTimestamp is the original record's timestamp (Kafka only).
	KeyKafkaTimestamp = "retry_kafka_timestamp_ms"
	// KeyKafkaKey is the original record key, raw bytes (Kafka only). Tier
	// and dead-letter records are written with this key.
	KeyKafkaKey = "retry_kafka_key"

	// KeyRedisStream is the stream the message was first consumed from
	// (Redis only): the handler's own topic for a message that failed, or
	// the stream an undecodable entry was read from, for its dead-letter
	// copy.
	KeyRedisStream = "retry_redis_stream"
	// KeyRedisEntryID is the ID of the stream entry the message was first
	// consumed as, "1700000000000-0" (Redis only). With [KeyRedisStream]
	// it finds the original: XRANGE {stream} {id} {id}.
	KeyRedisEntryID = "retry_redis_entry_id"

	// KeyRedriveCount is how many times the message was redriven from a
	// dead-letter topic back into its handler (by the dlq package or
	// retryctl). Unlike the retry keys it is not removed by [ClearInfo]:
	// it stays with the message through its next life, into the
	// dead-letter topic again, so that a cap on redrives holds across
	// redrive cycles.
	KeyRedriveCount = "retry_redrive_count"
	// KeyRedriveTime is when the message was last redriven. Kept like
	// [KeyRedriveCount].
	KeyRedriveTime = "retry_redrive_ms"

	// KeyFirstSpan is the W3C traceparent of the span of the message's
	// first delivery (attempt 1, on the handler's own topic), written on
	// its first hop when tracing is on and carried to every later one: the
	// span of each attempt links to it. (The trace context itself travels
	// in Watermill-independent W3C keys, traceparent and tracestate, which
	// are not retry keys.)
	KeyFirstSpan = "retry_first_span"

	// KeyPayloadDropped is set on a dead-letter stub ([DeadLetterStub]),
	// which stands in for a copy that could not be published at all: the
	// size in bytes of the payload that was left out. The origin keys
	// (KeyKafkaPartition and friends) say where the original can be
	// fetched again.
	KeyPayloadDropped = "retry_payload_dropped_bytes"

	// Dead-letter messages also carry Watermill's poison keys
	// (middleware.ReasonForPoisonedKey, PoisonedTopicKey,
	// PoisonedHandlerKey, PoisonedSubscriberKey), so Watermill's tooling
	// reads them, and tier messages Watermill's delay keys
	// (delay.DelayedUntilKey, delay.DelayedForKey).
)

// retryKeys are the keys that [ClearInfo] removes.
var retryKeys = [...]string{
	KeyAttempt, KeyOriginalTopic, KeyHandler, KeyFirstFailure, KeyLastFailure, KeyDueAt, KeyTier, KeyLastError, KeyFirstSpan,
	delay.DelayedUntilKey, delay.DelayedForKey,
	middleware.ReasonForPoisonedKey, middleware.PoisonedTopicKey, middleware.PoisonedHandlerKey, middleware.PoisonedSubscriberKey,
}

// MaxErrorBytes bounds the error text kept in [KeyLastError] and in the
// poison reason.
const MaxErrorBytes = 1024

// Info is the retry state a message carries between attempts.
type Info struct {
	// Attempt is the number of attempts that failed so far.
	Attempt int
	// OriginalTopic is the handler's own topic.
	OriginalTopic string
	// Handler is the name of the handler that failed.
	Handler string
	// FirstFailure and LastFailure are the times of the first and the
	// latest failure (millisecond precision).
	FirstFailure, LastFailure time.Time
	// Tier is the 1-based tier the message is in; 0 on the dead-letter
	// topic.
	Tier int
	// LastError is the latest error's text, bounded by [MaxErrorBytes].
	LastError string
}

// ReadInfo parses the retry metadata of a message consumed from a tier
// topic. Missing or malformed keys give an error wrapping
// [ErrInvalidMetadata] that names the key and its value.
//
// A handler may call it to learn which attempt it runs. On a handler's own
// topic the retry middleware removes the retry keys before the handler runs
// ([ClearUntrusted]), so there ReadInfo reports them missing rather than
// returning what a producer forged.
func ReadInfo(md message.Metadata) (Info, error) {
	var info Info
	var err error
	if info.Attempt, err = intKey(md, KeyAttempt); err != nil {
		return Info{}, err
	}
	if info.Attempt < 1 {
		return Info{}, fmt.Errorf("%w: %s is %d, must be at least 1", ErrInvalidMetadata, KeyAttempt, info.Attempt)
	}
	if info.Tier, err = intKey(md, KeyTier); err != nil {
		return Info{}, err
	}
	if info.FirstFailure, err = timeKey(md, KeyFirstFailure); err != nil {
		return Info{}, err
	}
	if info.LastFailure, err = timeKey(md, KeyLastFailure); err != nil {
		return Info{}, err
	}
	if info.OriginalTopic = md.Get(KeyOriginalTopic); info.OriginalTopic == "" {
		return Info{}, fmt.Errorf("%w: %s is missing", ErrInvalidMetadata, KeyOriginalTopic)
	}
	if info.Handler = md.Get(KeyHandler); info.Handler == "" {
		return Info{}, fmt.Errorf("%w: %s is missing", ErrInvalidMetadata, KeyHandler)
	}
	info.LastError = md.Get(KeyLastError)
	return info, nil
}

// Write sets the retry keys of md from i. LastError is cut to
// [MaxErrorBytes].
func (i Info) Write(md message.Metadata) {
	md.Set(KeyAttempt, strconv.Itoa(i.Attempt))
	md.Set(KeyOriginalTopic, i.OriginalTopic)
	md.Set(KeyHandler, i.Handler)
	md.Set(KeyFirstFailure, formatMillis(i.FirstFailure))
	md.Set(KeyLastFailure, formatMillis(i.LastFailure))
	md.Set(KeyTier, strconv.Itoa(i.Tier))
	md.Set(KeyLastError, Truncate(i.LastError, MaxErrorBytes))
}

// ClearInfo removes every retry, delay and poison key from md. Messages
// consumed from a handler's own topic are cleared before their first hop,
// so that forged or stale metadata never steers a retry.
func ClearInfo(md message.Metadata) {
	for _, k := range retryKeys {
		delete(md, k)
	}
}

// ClearUntrusted removes from md the retry keys and origin keys, which a
// message consumed from a handler's own topic cannot be trusted to carry
// (anyone can write to that topic). The retry middleware calls it before
// the handler sees such a message, so that [ReadInfo] and the backends'
// origin readers never return forged values there. Watermill's delay and
// poison keys are left alone, and so are keys that are not about one life
// of the message through the tiers. It costs one pass over md, on the happy
// path.
func ClearUntrusted(md message.Metadata) {
	for k := range md {
		if strings.HasPrefix(k, "retry_") &&
			(slices.Contains(retryKeys[:], k) || slices.Contains(originKeys[:], k) || k == KeyPayloadDropped) {
			delete(md, k)
		}
	}
}

// originKeys are the keys that [ClearOrigin] removes.
var originKeys = [...]string{KeyKafkaPartition, KeyKafkaOffset, KeyKafkaTimestamp, KeyKafkaKey, KeyRedisStream, KeyRedisEntryID}

// ClearOrigin removes the keys that record where a message was first
// consumed ([KeyKafkaPartition] and friends, [KeyRedisStream],
// [KeyRedisEntryID]). The retry middleware clears
// them, like the retry keys, before a message's first hop: a backend then
// records the true origin of the record it consumed, never a forged one.
func ClearOrigin(md message.Metadata) {
	for _, k := range originKeys {
		delete(md, k)
	}
}

// DueAt returns the due time a message carries: [KeyDueAt], else
// Watermill's delay.DelayedUntilKey. ok is false when it carries neither; a
// malformed value gives an error wrapping [ErrInvalidMetadata].
func DueAt(md message.Metadata) (due time.Time, ok bool, err error) {
	if _, present := md[KeyDueAt]; present {
		due, err := timeKey(md, KeyDueAt)
		return due, err == nil, err
	}
	if v, present := md[delay.DelayedUntilKey]; present {
		due, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return time.Time{}, false, fmt.Errorf("%w: %s is %q, not an RFC 3339 time", ErrInvalidMetadata, delay.DelayedUntilKey, clip(v))
		}
		return due, true, nil
	}
	return time.Time{}, false, nil
}

// Truncate cuts s to at most n bytes on a UTF-8 boundary, ending it with
// "…" when it was cut.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const ellipsis = "…"
	if n < len(ellipsis) {
		// No room for the ellipsis: cut on a rune boundary only.
		cut := max(n, 0)
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return s[:cut]
	}
	cut := n - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

func intKey(md message.Metadata, key string) (int, error) {
	v, ok := md[key]
	if !ok {
		return 0, fmt.Errorf("%w: %s is missing", ErrInvalidMetadata, key)
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("%w: %s is %q, not an integer", ErrInvalidMetadata, key, clip(v))
	}
	return n, nil
}

func timeKey(md message.Metadata, key string) (time.Time, error) {
	v, ok := md[key]
	if !ok {
		return time.Time{}, fmt.Errorf("%w: %s is missing", ErrInvalidMetadata, key)
	}
	ms, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %s is %q, not Unix milliseconds", ErrInvalidMetadata, key, clip(v))
	}
	return time.UnixMilli(ms), nil
}

func formatMillis(t time.Time) string {
	if t.IsZero() {
		return "0"
	}
	return strconv.FormatInt(t.UnixMilli(), 10)
}

// clip bounds a value quoted in an error message.
func clip(v string) string { return Truncate(v, 64) }
