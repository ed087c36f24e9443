// Package dlq operates the dead-letter and tier topics of retry-kafka on
// Kafka and Redis, through one API: see what the topology holds, read
// and analyse dead letters, send them back once the bug is fixed, and
// delete them. The retryctl command (cmd/retryctl) is a thin layer over it.
//
//	c, err := dlq.Open(ctx, "kafka://127.0.0.1:9092", logger) // the application's URL
//	defer c.Close()
//	topo, err := c.Topology(ctx, "")                          // handlers, tiers, dead-letter topics
//	for msg, err := range c.Messages(ctx, "orders.billing.dlq", dlq.Filter{Reason: "timeout"}) { ... }
//	stats, err := c.Stats(ctx, "orders.billing.dlq", dlq.Filter{})
//	res, err := c.Redrive(ctx, dlq.RedriveParams{Topic: "orders.billing.dlq"})
//
// # Reading without consuming
//
// Every read goes straight to the partitions (Kafka fetch requests, no
// consumer group) or the stream (Redis XRANGE): no group of the
// application moves and nothing is acknowledged. A read takes the topic
// up to its end when it starts, and streams: memory stays flat however
// many messages a topic holds. Records that Watermill did not write are
// listed as they are ([Message.Foreign], [Message.Raw]), never skipped
// and never an error.
//
// # Redrive
//
// [Client.Redrive] moves selected dead letters to their original topic
// (or the handler's first tier, or a named topic) with their UUID,
// payload, key and user metadata, and clears their retry metadata so they
// start a new life. Each carries a redrive count (tiered.KeyRedriveCount)
// that survives the retry middleware, so a cap (3 by default) stops a
// message that keeps failing from looping. A redrive checkpoints in a
// consumer group of its own on the dead-letter topic, after the broker
// confirmed each batch: interrupted, it resumes where it stopped; finished,
// it moves only what arrived since. It never deletes: [Client.Purge] does.
//
// # Purge
//
// Redis deletes the selected entries. Kafka can only delete the start of
// a partition (DeleteRecords), so a Kafka purge takes everything, or what
// was stored before a time, or what lies before an offset per partition;
// any other filter is refused with an error wrapping [ErrNotSupported].
//
// # Discovery
//
// [Client.Topology] finds handlers by the default topic naming rule of
// tiered.DefaultTopicName and measures each queue: a tier's depth is its
// consumer group's lag, with the age of its oldest waiting message and
// the due time of its head; a dead-letter topic's depth is its length and
// age of its oldest message. [Client.Depth] is the cheap call for metrics.
package dlq
