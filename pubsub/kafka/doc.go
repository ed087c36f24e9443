// Package kafka is the Apache Kafka backend, on Sarama, writing and reading
// records as watermill-kafka's DefaultMarshaler does.
//
// One [Config] builds the publisher and every subscriber.
//
// # Topics and groups
//
//   - Each subscription has its own consumer group, named by the router from
//     topic and handler (tiered.Topics.Group) after Config.ConsumerGroupPrefix:
//     "{prefix}{topic}.{handler}" for a handler's own topic, "{prefix}{tier
//     topic}" for a tier. New groups start from the oldest offset.
//   - [Backend.Prepare] creates missing tier and dead-letter topics with the
//     main topic's partition count and Config.ReplicationFactor; tier topics
//     with message.timestamp.type=LogAppendTime, so that the holding
//     subscriber clamps due times to the broker's append time; tier and
//     dead-letter topics with min.insync.replicas=2 when the replication
//     factor is 3 or more. A missing main topic is an error unless
//     Config.CreateTopics allows creating it.
//   - The record key is kept across every hop, so per-key order holds inside
//     a tier. Copies record the original partition, offset, timestamp and key
//     in metadata ([ReadOrigin]); the retry middleware writes them with
//     tiered.Delivery.WriteOrigin on the first hop.
//
// # The consumer
//
// One session-aware, pipelined consumer serves a handler's own topic and its
// tiers alike. Per partition it reads records in offset order into an offset
// tracker and commits the partition up to its oldest unresolved record: a
// record is resolved when the handler is done with it and, if it failed, its
// tier or dead-letter copy is broker-confirmed. It reads at most
// Config.PartitionWindow offsets past that record.
//
//   - On a handler's own topic a record is handed to the router once the one
//     before it was acked, so handler calls stay one after another, in offset
//     order; but the partition does not wait for the copy of a failed
//     message.
//   - On a tier, the head of each partition is handed on at once and held
//     by the holding subscriber until due, and nothing behind it until then
//     (the consumer paces itself by the same due time; the holding subscriber
//     stays its judge); due records are handed on concurrently across keys,
//     in order within a key (a record whose key has one in flight waits in its
//     key's lane).
//   - Messages carry a tiered.Delivery in their context (the record's append
//     time on tier topics, which Prepare makes LogAppendTime, and its
//     coordinates). A message's context ends when it is acked or nacked, as
//     watermill-kafka's does, and when its partition lets it go.
//   - A record without a Watermill UUID gets tiered.OriginUUID("kafka", topic,
//     partition, offset), kept on every hop. Config.Unmarshaler reads a
//     handler's own topic; a record it cannot read goes raw to the handler's
//     dead-letter topic with the reason.
//   - Offsets are marked every Consumer.Offsets.AutoCommit.Interval and
//     committed when a session ends; with Sarama's AutoCommit turned off the
//     backend commits them itself at the same moments.
//   - When a session ends (Close, the subscription's context, a rebalance) a
//     partition stops handing records on, waits up to Config.DrainTimeout for
//     what it handed on to be acked and its copies confirmed, commits, and
//     only then lets its messages go: a graceful restart handles nothing
//     twice. After a crash, at most PartitionWindow records per partition plus
//     those resolved since the last commit are handled again.
//   - A message held in a tier never holds a rebalance: when the session ends
//     the held message's context ends at once, its hold ends, and the record,
//     uncommitted, is delivered again to whoever owns the partition next, held
//     until the same due time.
//
// # Copies
//
// The backend has one idempotent Sarama producer (acks=all) for the
// application's publishes and every copy. The publisher recognises a tier or
// dead-letter copy of a message this backend consumed (same UUID, retry
// metadata, the message's context kept) and produces it asynchronously and
// batched: Publish returns at once, the record stays unresolved until the copy
// is confirmed. A copy whose produce fails with a temporary error is produced
// again, after 100ms doubling to 30s, while its partition is owned (and during
// its drain); the handler does not run again, and a partition given up first
// leaves the record uncommitted, to be delivered again. A copy that can never
// be published (tiered.ErrUnpublishable: too large, unknown or invalid topic,
// not authorized, policy or config) is replaced by a tiered.DeadLetterStub in
// the dead-letter topic; if even that fails, the record stays uncommitted and
// the stub is tried again with a growing delay, logged at Error once. (Sarama
// batches records up to Producer.MaxMessageBytes, and a broker refuses a whole
// batch larger than the topic's max.message.bytes as too large: keep the
// former no larger than the latter, as Sarama's documentation asks, or copies
// that would fit alone may be taken for ones that never fit.)
//
// Early ack (Watermill's InstantAck): a copy that the handler publishes
// before the next commit interval after the Ack still holds the record's
// offset until it is confirmed; one published later is produced
// synchronously (Publish waits), and its record's offset may be committed
// before it: a crash then loses the message. Early ack trades that window for
// throughput.
//
// # Memory and clients
//
// A handler's own topic holds per partition Sarama's ChannelBufferSize (256)
// records and the window's unresolved ones. A tier holds per partition 4
// records in Sarama's channel, one fetch (64 KiB, or the one batch that is
// larger) and at most 1 MiB of records read ahead (at least one): in all,
// handlers x tiers x partitions x (5 records + 1 MiB), whatever the number of
// messages waiting. The backend has one client (the producer's, which the
// admin shares); each subscription has a client of its own, because a
// consumer group's requests (a JoinGroup waits for the whole rebalance, a
// fetch for MaxWaitTime) would stall every other group on a shared connection.
//
// # Embedded broker
//
// kafka://embedded, an in-process Kafka-protocol broker for demos and tests,
// is served by package github.com/retry-kafka/retry-kafka/pubsub/embedded, so
// that importing this package links no fake broker.
package kafka
