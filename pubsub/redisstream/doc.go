// Package redisstream is the Redis Streams backend of retry-kafka, on
// watermill-redisstream and go-redis v9: each topic is a stream, each
// handler (and each of its tiers) a consumer group.
//
// [New] takes a [Config] with the caller's client, which the backend never
// closes (watermill-redisstream closes the client it is given; the backend
// hands it a wrapper whose Close does nothing). [Open] parses a
// redis://[user:password@]host:6379/0 URL and owns the client it makes. Both
// check that the server is Redis 6.2 or later: recovering the entries of a
// dead consumer uses XPENDING ... IDLE.
//
// # Claiming
//
// An entry read by a consumer stays pending until acked; the other consumers
// of its group claim it once it has been idle for MaxIdleTime (60s by
// default), so the entries of a consumer that died are processed again. A
// live consumer never lets its entries look idle: every MaxIdleTime/3 it
// refreshes its claim (XCLAIM ... JUSTID to itself, which resets the idle
// time and not the delivery count) on every entry it has in hand, the one
// in its handler or held until due and the ones it read ahead behind it.
// So a held tier entry is never taken from a live consumer and run twice,
// however long the tier, a slow handler keeps its entries, and the entries
// of a dead consumer come back after MaxIdleTime (plus at most one
// ClaimInterval) on every stream, never a tier delay later; they are held
// by their new consumer until due. A Nacked message is delivered again
// after NackResendSleep (1s), not in a hot loop.
//
// # Identity and origin
//
// An entry in Watermill's field layout but without its UUID (a producer
// that is not Watermill) gets tiered.OriginUUID("redis", stream, entry ID),
// the same on every redelivery; the tier and dead-letter copies keep it.
// Every message's context carries a tiered.Delivery: the entry ID's time
// (the server's clock, which the holding subscriber clamps due times to),
// and the stream and entry ID that the retry middleware writes into a
// failed message's copy ([tiered.KeyRedisStream], [tiered.KeyRedisEntryID]).
//
// # Redis Cluster
//
// Config.Client may be a *redis.ClusterClient. Every command the backend
// and watermill-redisstream send names one stream (and [Backend.ListTopics]
// scans every master), so a handler's streams need no common hash tag: its
// main, tier and dead-letter streams live on whichever masters their names
// hash to. A stream is one key, so one topic is served by one master: the
// cluster spreads topics and tiers, not the entries of one stream. The
// backend has a cluster client reload its slot map every second (go-redis
// v9 otherwise waits up to ClusterStateReloadInterval, 60s by default,
// when a master dies without answering), so a failover stops the streams
// of the lost master for the cluster's own failover time, about
// cluster-node-timeout plus a second; keep MaxIdleTime above it. A master
// without a replica is an outage of its streams until it restarts (of the
// whole cluster once it is marked failed, with Redis's default
// cluster-require-full-coverage yes).
//
// # Entries that are not Watermill messages
//
// watermill-redisstream ends a subscription on an entry it cannot decode
// (written by another tool, or with corrupt metadata). Here such an entry is
// sent to the handler's dead-letter stream instead: the entry's
// fields as a JSON object for payload ([KeyBase64Fields] says how fields
// that are not UTF-8 are kept), Watermill's poison keys with the reason,
// [tiered.KeyRedisStream] and [KeyEntryID], under the UUID derived from the
// stream and entry ID. Without a dead-letter topic it is logged at
// Error and acked. A dead letter too large to publish becomes a stub without
// the fields (tiered.DeadLetterStub); a publish that fails is tried again
// after a wait growing from NackResendSleep to 30s, logged at Error once.
//
// # Publish errors
//
// The publisher wraps with tiered.ErrUnpublishable the errors that
// publishing the same message again cannot mend: WRONGTYPE, NOPERM, a
// stream whose IDs are used up, Watermill's reserved UUID key in the
// metadata, and a message over the server's proto-max-bulk-len or
// client-query-buffer-limit (which the server answers by dropping the
// connection: on such an error the message's size is checked against the
// limits, read with CONFIG GET). All else is temporary: see the doc of
// [Backend.Publisher].
//
// # Trimming
//
// With Config.MaxLen, the handlers' streams and tier streams are trimmed
// with XADD MAXLEN ~, whether or not their entries were read: keep it well
// above the backlog of a stream, a tier holding the failures of a whole
// delay. Dead-letter streams (those named to [Backend.Prepare], and any
// message carrying Watermill's poison reason) are never trimmed.
//
// # Closing
//
// A subscription that closes lets the message in its handler finish (for at
// most Config.CloseTimeout) and acks it in Redis; messages read ahead stay
// pending and are claimed after MaxIdleTime. Close logs nothing at Error.
package redisstream
