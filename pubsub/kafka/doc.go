// Package kafka is the Apache Kafka backend, on watermill-kafka v3 (Sarama).
//
// One [Config] builds the publisher and every subscriber:
//
//   - Each subscription gets its own consumer group (a handler's main topic
//     and each of its tiers), prefixed by Config.ConsumerGroupPrefix. New
//     groups start from the oldest offset, so nothing published before a
//     group's first join is skipped.
//   - [Backend.Prepare] creates tier and dead-letter topics when missing,
//     with the main topic's partition count; a missing main topic is an
//     error unless Config.CreateTopics allows creating it.
//   - The record key is kept across every hop: tier and dead-letter records
//     are written with the original key, so per-key order holds inside a
//     tier. Tier and dead-letter copies record the original partition,
//     offset, timestamp and key in metadata (tiered.KeyKafkaPartition and
//     friends; [ReadOrigin] reads them), taken from the consumed record
//     when the message first fails, so the happy path does not pay for it.
//   - Main topics are consumed with watermill-kafka's own subscriber. Tier
//     topics are consumed with a session-aware subscriber: a held message's
//     context ends with the consumer-group session, so a rebalance never
//     waits for a message held in a long tier. The held message's offset is
//     not committed; whoever owns the partition next delivers it again,
//     held until the same due time.
//
// [NewEmbedded] runs an in-process Kafka-protocol broker (kfake) for demos
// and quick tests. It is not for production: it keeps everything in memory.
package kafka
