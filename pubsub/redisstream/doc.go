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
// of its group claim it once it has been idle for MaxIdleTime, so entries
// of a consumer that died are processed again. On a handler's own stream
// MaxIdleTime is Config.MaxIdleTime (60s by default): it must exceed the
// time a handler takes on three messages (each consumer reads up to two
// entries ahead). A tier entry stays pending while it is held until its due
// time, so on a tier with delay d the claim idle time is d + MaxIdleTime: a
// held message is never taken from a live consumer and run twice, and the
// held messages of a dead consumer come back d + MaxIdleTime (plus at most
// one ClaimInterval) after it read them, never before they are due. A
// Nacked message is delivered again after NackResendSleep (1s), not in a
// hot loop.
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
// sent to the handler's dead-letter stream instead: a new UUID, the entry's
// fields as a JSON object for payload, Watermill's poison keys with the
// reason, and [KeyEntryID]. Without a dead-letter topic it is logged at
// Error and acked. If the publish fails, it is tried again; the subscription
// goes on either way.
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
