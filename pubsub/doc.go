// Package pubsub opens a [tiered.Backend] from a URL, so that moving an
// application from one broker to another is a configuration change:
//
//	mem://                          in-memory (tests, examples)
//	kafka://host:9092,host2:9092    Apache Kafka (package pubsub/kafka)
//	redis://host:6379/0             Redis Streams (package pubsub/redisstream)
//
// kafka://embedded, an in-process Kafka-protocol broker for demos and
// tests, is opened by package pubsub/embedded (embedded.Open, which takes
// every URL above too), so that a program that imports this package does
// not link a fake broker; Open refuses it with an error that says so.
//
// Each backend's package also takes a config struct, for settings a URL
// does not carry (a caller's Redis client, Sarama overrides).
package pubsub
