package instrument

import (
	"context"
	"slices"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
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
	opts   []trace.SpanStartOption
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
	return &Span{
		tracer: t,
		name:   operation + " " + topic,
		opts:   []trace.SpanStartOption{trace.WithSpanKind(kind), trace.WithAttributes(attrs...)},
	}
}

// StartProcess starts the span of one attempt on msg, a child of the span
// in msg's context when it has one (a tracing middleware outside ours),
// else of the trace context in msg's metadata (the producer's, or the send
// span of the hop before), linked to first (the first delivery's span)
// when it is valid.
func (s *Span) StartProcess(msg *message.Message, attempt, tier int, first trace.SpanContext) (context.Context, trace.Span) {
	ctx := msg.Context()
	if !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = propagator.Extract(ctx, Carrier(msg.Metadata))
	}
	opts := s.opts
	if first.IsValid() {
		opts = append(slices.Clip(opts), trace.WithLinks(trace.Link{SpanContext: first}))
	}
	ctx, span := s.tracer.tracer.Start(ctx, s.name, opts...)
	if span.IsRecording() {
		span.SetAttributes(semconv.MessagingMessageID(msg.UUID), AttrAttempt.Int(attempt), AttrTier.Int(tier))
	}
	return ctx, span
}

// StartSend starts the span of the publish of out, a copy for the next
// hop, as a child of the span in out's context (the attempt's), and writes its trace context into
// out's metadata and context: the next hop's attempt, or the dead letter,
// belongs to the same trace.
func (s *Span) StartSend(out *message.Message, attempt, tier int) trace.Span {
	ctx, span := s.tracer.tracer.Start(out.Context(), s.name, s.opts...)
	if span.IsRecording() {
		span.SetAttributes(semconv.MessagingMessageID(out.UUID), AttrAttempt.Int(attempt), AttrTier.Int(tier))
	}
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
