package instrument

import (
	"context"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/retry-kafka/retry-kafka/internal/stack"
)

// TracerName is the instrumentation scope of retry-kafka's spans.
const TracerName = "github.com/retry-kafka/retry-kafka"

// Span attributes of retry-kafka beside the messaging semantic
// conventions.
const (
	// AttrHandler is the handler's name.
	AttrHandler = attribute.Key("retry_kafka.handler")
	// AttrAttempt is the attempt: on a process span, the attempt it runs
	// (1 on the handler's own topic); on a send span, the attempts that
	// failed so far.
	AttrAttempt = attribute.Key("retry_kafka.attempt")
	// AttrTier is the tier: on a process span, the tier the message was
	// consumed from (0 for the handler's own topic); on a send span, the
	// tier the copy goes to (0 for the dead-letter topic).
	AttrTier = attribute.Key("retry_kafka.tier")
	// AttrPublishTries counts the tries a send span's publish took.
	AttrPublishTries = attribute.Key("retry_kafka.publish_tries")
)

// propagator is W3C Trace Context: traceparent and tracestate, carried in
// message metadata. It is fixed (no global propagator is read): the trace
// context is part of what a copy carries between hops.
var propagator propagation.TraceContext

// Carrier adapts message metadata to a propagation.TextMapCarrier.
type Carrier message.Metadata

// Get returns the value of key.
func (c Carrier) Get(key string) string { return c[key] }

// Set sets key to value.
func (c Carrier) Set(key, value string) { c[key] = value }

// Keys lists the keys.
func (c Carrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// FormatSpanContext returns sc as a W3C traceparent value, or "" when sc is
// not valid.
func FormatSpanContext(sc trace.SpanContext) string {
	if !sc.IsValid() {
		return ""
	}
	c := Carrier{}
	propagator.Inject(trace.ContextWithSpanContext(context.Background(), sc), c)
	return c["traceparent"]
}

// ParseSpanContext parses a W3C traceparent value; the span context is not
// valid when v is not one.
func ParseSpanContext(v string) trace.SpanContext {
	if v == "" {
		return trace.SpanContext{}
	}
	ctx := propagator.Extract(context.Background(), Carrier{"traceparent": v})
	return trace.SpanContextFromContext(ctx)
}

// Tracer makes the spans of one handler.
type Tracer struct {
	tracer trace.Tracer
	common []attribute.KeyValue
}

// NewTracer returns the tracer of handler. system is the
// messaging.system attribute ("kafka", "redis"; left out when empty).
func NewTracer(tp trace.TracerProvider, system, handler string) *Tracer {
	common := []attribute.KeyValue{AttrHandler.String(handler)}
	if system != "" {
		common = append(common, semconv.MessagingSystemKey.String(system))
	}
	return &Tracer{tracer: tp.Tracer(TracerName), common: common}
}

// Span makes the spans of one topic: the processing of the messages
// consumed from it, or the sending of copies to it. Its name and options
// are built once, not per message.
type Span struct {
	tracer *Tracer
	name   string
	kind   trace.SpanStartOption
	attrs  []attribute.KeyValue
}

// Process returns the span maker of the attempts on topic.
func (t *Tracer) Process(topic string) *Span {
	return t.span(topic, "process", semconv.MessagingOperationTypeProcess, trace.SpanKindConsumer)
}

// Send returns the span maker of the copies published to topic.
func (t *Tracer) Send(topic string) *Span {
	return t.span(topic, "send", semconv.MessagingOperationTypeSend, trace.SpanKindProducer)
}

func (t *Tracer) span(topic, operation string, opType attribute.KeyValue, kind trace.SpanKind) *Span {
	attrs := append(slices.Clone(t.common),
		semconv.MessagingDestinationName(topic),
		semconv.MessagingOperationName(operation),
		opType,
	)
	return &Span{tracer: t, name: operation + " " + topic, kind: trace.WithSpanKind(kind), attrs: attrs}
}

// start starts a span of s on ctx, linked to link when it is valid. Its
// attributes are set once, after the sampler kept the span: a span that is
// not sampled (most of them, with a ratio sampler) costs no attribute at
// all. The sampler sees the name ("process orders") and the kind.
//
// The steps are kept in separate functions that are not inlined, so that
// their frames are not on the stack while the SDK starts the span (deep
// already): the router starts a goroutine per message, with a small stack
// that is copied into a larger one whenever it runs out. Its callers grow
// it once (stack.Reserve8K) before anything else, parentContext
// included: without that, a sampled message's stack grew two or three
// times inside the SDK (about 4 µs of the 14 µs a sampled message cost on
// its own goroutine, bench/middleware_test.go).
func (s *Span) start(ctx context.Context, link trace.SpanContext, at time.Time, id string, attempt, tier int) (context.Context, trace.Span) {
	ctx, span := s.startSDK(ctx, link, at)
	if span.IsRecording() {
		s.setAttributes(span, id, attempt, tier)
	}
	return ctx, span
}

//go:noinline
func (s *Span) startSDK(ctx context.Context, link trace.SpanContext, at time.Time) (context.Context, trace.Span) {
	opts := make([]trace.SpanStartOption, 1, 3)
	opts[0] = s.kind
	if link.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: link}))
	}
	if !at.IsZero() {
		opts = append(opts, trace.WithTimestamp(at))
	}
	return s.tracer.tracer.Start(ctx, s.name, opts...)
}

//go:noinline
func (s *Span) setAttributes(span trace.Span, id string, attempt, tier int) {
	attrs := make([]attribute.KeyValue, 0, len(s.attrs)+3)
	attrs = append(attrs, s.attrs...)
	span.SetAttributes(append(attrs, semconv.MessagingMessageID(id), AttrAttempt.Int(attempt), AttrTier.Int(tier))...)
}

// StartProcess starts the span of one attempt on msg, delivered with
// context ctx: a child of the span in ctx when it has one (a tracing
// middleware outside ours), else of the trace context in msg's metadata
// (the producer's, or the send span of the hop before), linked to first
// (the first delivery's span) when it is valid. It starts at at, or now
// when at is zero.
//
// Its caller grows the goroutine's stack first (stack.Reserve8K), where
// it is shallow and before the attempt reads anything: parentContext's
// lookups alone overflow the stack the router's goroutine starts with,
// and so does reading the retry metadata of a tier attempt, so that
// growing it here instead copied it twice.
func (s *Span) StartProcess(ctx context.Context, msg *message.Message, attempt, tier int, first trace.SpanContext, at time.Time) (context.Context, trace.Span) {
	return s.start(parentContext(ctx, msg), first, at, msg.UUID, attempt, tier)
}

// Parent reports whether the attempt on msg, delivered with context ctx,
// has a parent span (ok) and whether the parent's trace is being recorded
// (sampled): the span in ctx, or else the trace context in msg's metadata.
// It allocates nothing and runs on the happy path of every message, so the
// metadata's traceparent is not parsed: only its shape and sampled flag
// are read (a malformed value counts as no parent; StartProcess parses it
// for real).
func Parent(ctx context.Context, msg *message.Message) (sampled, ok bool) {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return sc.IsSampled(), true
	}
	return sampledFlag(msg.Metadata["traceparent"])
}

// sampledFlag reads the sampled bit of a W3C traceparent,
// "vv-<32 hex trace ID>-<16 hex parent ID>-ff": the low bit of the flags
// ff. ok is false when v does not have that shape.
func sampledFlag(v string) (sampled, ok bool) {
	const flagsAt = 2 + 1 + 32 + 1 + 16 + 1
	if len(v) < flagsAt+2 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return false, false
	}
	switch v[flagsAt+1] {
	case '1', '3', '5', '7', '9', 'b', 'd', 'f':
		return true, true
	}
	return false, true
}

// parentContext returns msg's context with the parent of its attempt's
// span on top, so that the SDK's lookups of it (three, when it starts a
// span) find it at once instead of walking the router's and the
// subscriber's values each time: the span in the context, else the remote
// one in the metadata, else none (a root span).
//
//go:noinline
func parentContext(ctx context.Context, msg *message.Message) context.Context {
	if parent := trace.SpanFromContext(ctx); parent.SpanContext().IsValid() {
		return trace.ContextWithSpan(ctx, parent)
	}
	if remote := propagator.Extract(ctx, Carrier(msg.Metadata)); remote != ctx {
		return remote // Extract put the remote span context on top
	}
	return trace.ContextWithSpanContext(ctx, trace.SpanContext{})
}

// StartSend starts the span of the publish of out, a copy for the next
// hop, as a child of the span in out's context (the attempt's), and writes its trace context into
// out's metadata and context: the next hop's attempt, or the dead letter,
// belongs to the same trace.
func (s *Span) StartSend(out *message.Message, attempt, tier int) trace.Span {
	_ = stack.Reserve8K(0)
	ctx, span := s.start(out.Context(), trace.SpanContext{}, time.Time{}, out.UUID, attempt, tier)
	propagator.Inject(ctx, Carrier(out.Metadata))
	out.SetContext(trace.ContextWithSpan(out.Context(), span))
	return span
}

// maxStatusBytes bounds the error text of a span's status.
const maxStatusBytes = 512

// Fail marks span as failed with err.
func Fail(span trace.Span, err error) {
	if !span.IsRecording() {
		return
	}
	span.RecordError(err)
	text := err.Error()
	if len(text) > maxStatusBytes {
		cut := maxStatusBytes
		for cut > 0 && !utf8.RuneStart(text[cut]) {
			cut--
		}
		text = text[:cut]
	}
	span.SetStatus(codes.Error, text)
}
