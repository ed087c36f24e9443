// Package middleware turns a Watermill handler's error into a non-blocking
// retry: the failed message is copied to its next tier topic (or to the
// dead-letter topic when it has no attempts left, or when the error is
// permanent), and the original is acked only after that publish succeeded.
// If the publish fails, the original is Nacked and comes back: nothing is
// ever lost.
//
// [Retry] is a plain [message.HandlerMiddleware], so it composes with
// Watermill's own middleware (Recoverer, Timeout, CorrelationID, metrics)
// in any order. A panic in the handler counts as a failure like any other.
// Most applications use the router package, which adds it together with the
// tier subscriptions.
//
// With a Registerer in its [Config] it counts what happens to messages
// (copies per tier, dead letters by reason, successes per tier, publish
// failures, lateness); with a TracerProvider it traces every attempt and
// copy, the W3C trace context travelling in the metadata from hop to hop.
// The README's "Metrics and tracing" lists the names.
package middleware
