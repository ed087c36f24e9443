package tiered_test

import (
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/tiered"
)

const (
	traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tracestate  = "vendor=value"
)

// A stub keeps the W3C trace context even when it leaves the user's
// metadata out, so the dead letter stays in the trace of the message it
// stands for.
func TestDeadLetterStub_keepsTheTraceContext(t *testing.T) {
	msg := message.NewMessage("m1", []byte("a payload too large"))
	msg.Metadata.Set("big", strings.Repeat("x", tiered.MaxStubUserMetadataBytes+1))
	msg.Metadata.Set("traceparent", traceparent)
	msg.Metadata.Set("tracestate", tracestate)
	msg.Metadata.Set(tiered.KeyFirstSpan, traceparent)

	stub := tiered.DeadLetterStub(msg, "too large")

	require.Empty(t, stub.Metadata.Get("big"), "the user's metadata is left out")
	require.Equal(t, traceparent, stub.Metadata.Get("traceparent"))
	require.Equal(t, tracestate, stub.Metadata.Get("tracestate"))
	require.Equal(t, traceparent, stub.Metadata.Get(tiered.KeyFirstSpan))
}

// On a handler's own topic the trace context is the producer's and is
// kept; the first-delivery span is a retry key, which a producer cannot
// forge there.
func TestClearUntrusted_keepsTheTraceContextNotTheFirstSpan(t *testing.T) {
	md := message.Metadata{"traceparent": traceparent, "tracestate": tracestate, tiered.KeyFirstSpan: traceparent}

	tiered.ClearUntrusted(md)

	require.Equal(t, message.Metadata{"traceparent": traceparent, "tracestate": tracestate}, md)
}
