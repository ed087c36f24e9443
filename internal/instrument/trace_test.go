package instrument_test

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/retry-kafka/retry-kafka/internal/instrument"
)

// Parent reads the sampled flag of a traceparent without parsing it; it
// must agree with OpenTelemetry's parser on every value the parser
// accepts, and find a parent in each of them.
func TestParent_agreesWithThePropagator(t *testing.T) {
	for _, v := range []string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-extra",
		"", "garbage", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
	} {
		msg := message.NewMessage("m1", nil)
		if v != "" {
			msg.Metadata.Set("traceparent", v)
		}
		parsed := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier(msg.Metadata)))
		got, ok := instrument.Parent(context.Background(), msg)
		if parsed.IsValid() {
			require.Equal(t, parsed.IsSampled(), got, "traceparent %q", v)
			require.True(t, ok, "traceparent %q", v)
		} else {
			require.False(t, got, "traceparent %q", v)
			require.False(t, ok, "traceparent %q: malformed, no parent", v)
		}
	}
}

// A span in the context decides, whatever the metadata says.
func TestParent_spanInContextFirst(t *testing.T) {
	msg := message.NewMessage("m1", nil)
	msg.Metadata.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	unsampled := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}})
	sampled, ok := instrument.Parent(trace.ContextWithSpanContext(context.Background(), unsampled), msg)
	require.False(t, sampled)
	require.True(t, ok)

	sampled, ok = instrument.Parent(context.Background(), message.NewMessage("m2", nil))
	require.False(t, sampled)
	require.False(t, ok, "no span and no traceparent: no parent")
}
