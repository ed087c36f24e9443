// Package tiered is the backend-free core of retry-kafka: the retry policy,
// the names of tier and dead-letter topics, the metadata contract, error
// classification, and the two decorators that make delays work on any
// Watermill pub/sub.
//
// A message that fails in a handler leaves its topic at once and is copied to
// a tier topic, whose every message waits the same delay. Because each tier
// has one delay, the order of arrival in a tier is the order of due times, so
// a tier consumer only ever waits for the message at its head: memory stays
// bounded by the prefetch and nothing behind the head can be due earlier.
// After the last attempt the message goes to the handler's dead-letter topic.
//
//   - [Policy] says how many attempts a message gets and how long each tier
//     waits; [Policy.Topics] names the topics of one handler.
//   - [Publisher] stamps a due time on messages published with a delay.
//   - [Subscriber] holds each message until its due time, and no longer than
//     the tier's delay whatever the message says.
//   - [Info] reads and writes the retry metadata; [Permanent] marks an error
//     that must not be retried.
//
// Most applications use the router package, which wires all of this onto a
// Watermill router in one call.
package tiered
