// Package router wires non-blocking tiered retries onto a Watermill
// [message.Router] in one call per handler: the handler's own subscription,
// one subscription per tier (each behind a holding [tiered.Subscriber]),
// the retry middleware on all of them, and handler names that stay unique
// however many handlers share a topic.
//
//	retrying, err := router.New(router.Config{Backend: backend, Policy: policy}, logger)
//	...
//	_, err = retrying.AddConsumerHandler(r, "billing", "orders", billing)
//
// The router stays the application's: its other handlers, middleware,
// plugins and decorators keep working.
//
// [Config] turns on Prometheus metrics (Registerer, beside Watermill's own
// on the same registry), OpenTelemetry tracing across hops
// (TracerProvider) and the dead-letter depth at scrape time (DeadLetters,
// a dlq.Client); the README's "Metrics and tracing" lists what they
// report.
package router
