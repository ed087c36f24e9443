package tiered

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
)

// MaxStubUserMetadataBytes bounds the user metadata a [DeadLetterStub]
// keeps: when the keys and values that are not the library's add up to
// more, all of them are left out.
const MaxStubUserMetadataBytes = 4096

// The metadata keys of the W3C trace context (OpenTelemetry's
// propagation.TraceContext writes them).
const (
	traceparentKey = "traceparent"
	tracestateKey  = "tracestate"
)

// DeadLetterStub returns the message to dead-letter in place of msg, a
// tier or dead-letter copy that the broker can never take as it is (its
// publish failed with an error wrapping [ErrUnpublishable]: too large, say).
// The stub is small enough for any broker, and says why it stands there:
//
//   - the same UUID, and msg's context;
//   - no payload: [KeyPayloadDropped] gives the size that was left out;
//   - every retry key, origin key (where the original can be fetched
//     again: Kafka partition and offset, Redis entry ID), poison key and
//     trace context key (traceparent, tracestate) of msg, with [KeyTier] 0;
//   - the user's metadata when it is small ([MaxStubUserMetadataBytes]),
//     none of it otherwise;
//   - reason, bounded by [MaxErrorBytes], as [KeyLastError] and as
//     Watermill's poison reason, followed by what was left out.
//
// The caller sets the poison keys it knows (topic, handler, subscriber)
// when msg does not carry them yet.
func DeadLetterStub(msg *message.Message, reason string) *message.Message {
	stub := message.NewMessage(msg.UUID, nil)
	stub.SetContext(msg.Context())

	var userBytes, userKeys int
	for k, v := range msg.Metadata {
		if !libraryKey(k) {
			userBytes += len(k) + len(v)
			userKeys++
		}
	}
	keepUser := userBytes <= MaxStubUserMetadataBytes
	for k, v := range msg.Metadata {
		if k == delay.DelayedForKey || k == delay.DelayedUntilKey || k == KeyDueAt {
			continue // a dead letter is not held
		}
		if keepUser || libraryKey(k) {
			stub.Metadata.Set(k, v)
		}
	}

	left := []string{fmt.Sprintf("payload of %d bytes", len(msg.Payload))}
	if !keepUser {
		left = append(left, fmt.Sprintf("user metadata (%d keys, %d bytes)", userKeys, userBytes))
	}
	text := Truncate(reason, MaxErrorBytes-200) + "; left out to fit: " + strings.Join(left, " and ")
	stub.Metadata.Set(KeyPayloadDropped, strconv.Itoa(len(msg.Payload)))
	stub.Metadata.Set(KeyTier, "0")
	stub.Metadata.Set(KeyLastError, Truncate(text, MaxErrorBytes))
	stub.Metadata.Set(middleware.ReasonForPoisonedKey, Truncate(text, MaxErrorBytes))
	return stub
}

// libraryKey reports whether k is a key this library or Watermill's
// poison queue writes, or one of the W3C trace context, which keeps the
// stub in the trace of the message it stands for.
func libraryKey(k string) bool {
	switch k {
	case middleware.ReasonForPoisonedKey, middleware.PoisonedTopicKey, middleware.PoisonedHandlerKey, middleware.PoisonedSubscriberKey,
		traceparentKey, tracestateKey:
		return true
	}
	return strings.HasPrefix(k, "retry_")
}
