// Package tests is the scenario suite of retry-kafka: the same scenarios,
// unchanged, against every backend, plus Watermill's own universal pub/sub
// suite over the library's two decorators. It holds only tests; run it with
//
//	go test -race ./tests/
//
// # Backends
//
// Each backend is a Backend value (backends_test.go): a name, a constructor
// that returns a fresh tiered.Backend closed when the test ends, and its
// Features.
//
//   - mem: pubsub/memory, Watermill's persistent GoChannel.
//   - kafka: pubsub/kafka through internal/kafkatest: an embedded kfake
//     broker per test, or the Apache Kafka of KAFKA_BROKERS
//     (export KAFKA_BROKERS=$(scripts/kafka.sh start)). Main topics get
//     three partitions and the record key is the message's "key" metadata,
//     so per-key order is something to keep, not a given of one
//     partition. Each backend has its own consumer group prefix, since a
//     real broker is shared by every test and run.
//   - redis: pubsub/redisstream on a real redis-server found or started by
//     internal/redistest (REDIS_ADDR, else 127.0.0.1:6379, else
//     redis-server from PATH), with a short claim idle time (2s) so that
//     entries left pending by a closed router come back within a test.
//   - redis-cluster: the same on a Redis Cluster client: the nodes of
//     REDIS_CLUSTER_ADDRS, else three masters that internal/redistest
//     starts once for the test binary (redis-server --cluster-enabled yes,
//     redis-cli --cluster create) and stops when its tests end (TestMain).
//     A handler's main, tier and dead-letter streams land on whichever
//     masters their names hash to.
//
// # Features
//
// Features say what a backend promises beyond what every backend must;
// scenarios read them instead of naming backends:
//
//   - KeepsOrderPerKey: same-key messages leave a tier in the order they
//     entered it (Kafka: the record key is kept on every hop; Redis: one
//     stream per tier). The per-key order scenario is skipped without it.
//   - PersistentAcrossRestart: messages held in a tier when a router closes
//     are handled by the next router, and what the first one acked is not
//     handled again.
//   - ConsumerGroups: subscriptions share messages by group.
//   - DeliversAfterAck: a subscription hands on a partition's next message
//     only after the previous Ack, so a blocking handler would hold the
//     main topic back. GoChannel does not (it hands everything on at
//     once), so the main-flow scenario cannot catch a blocking retry on
//     mem; it says so in its log.
//   - RestartReplaysHistory: a new subscription receives a topic's whole
//     history (GoChannel). The restart scenario then checks, by UUID, that
//     every message succeeded at least once, and reports the replays.
//   - Watermill: the Features given to Watermill's suite for this backend.
//
// # Scenarios (scenarios_test.go)
//
// Every scenario runs as a parallel subtest per backend, on a topic of its
// own, through the public API: router.New(...).AddConsumerHandler on a
// Watermill router. The rig (rig_test.go) records every handler call (topic,
// tier, attempt, time, due time), every message of each handler's
// dead-letter topic (read by a plain subscription in a group of its own),
// and every publish of the retry middleware (a wrapper around the backend's
// publisher, which can also fail publishes to tier and dead-letter topics).
// Handlers follow a plan carried in the message's metadata (fail n
// attempts, fail permanently at attempt n), so a duplicate is treated
// exactly like the original. Waits poll with a deadline; nothing sleeps to
// wait for an outcome. To show that nothing else is on its way, a scenario
// flushes: it sends, per key, a sentinel that fails every attempt and waits
// until it has walked every tier into the dead-letter topic, which on a
// backend that keeps order per key is after anything published before it.
//
//  1. Happy path: handled once, from the main topic; nothing published to a
//     tier or dead-letter topic.
//  2. Fail k times, then succeed: tiers 1..k visited in order, success from
//     tier k with attempt k+1; no dead letter.
//  3. Exhaustion: main, tier 1, tier 2 in order, each not before its due
//     time nor sooner than its delay after the attempt before; then one
//     dead letter with the same UUID, payload and user metadata, attempt,
//     tier 0, original topic, handler, first and last failure times, last
//     error and Watermill's poison keys.
//  4. Permanent error: dead-lettered from the step where it happened, with
//     no further attempt.
//  5. Never early: every tier delivery at or after its due time and at least
//     the tier's delay after the attempt before; lateness is logged (p50,
//     p90, max), not judged.
//  6. Main flow not blocked: with 50 messages held in a 20s tier, 20 new
//     messages are all handled before the first held one is due.
//  7. Per-handler isolation: two handlers on one topic, one always failing:
//     the other sees each message exactly once, only from the main topic,
//     and nothing reaches its tier or dead-letter topics.
//  8. Per-key order in a tier (KeepsOrderPerKey).
//  9. Restart: a router closed while messages are held in a tier; a new one
//     with the same handlers on the same backend handles each, from the
//     tier, not before its due time.
//  10. Tier and dead-letter publish failures: the first publishes fail;
//     every message still ends as planned, succeeded or dead-lettered, and
//     the extra attempts show the originals came back.
//  11. Volume: 2,000 messages, 30% failing a seeded-random number of times
//     (some past MaxAttempts): each ends as planned, never both succeeded
//     and dead-lettered; duplicates and timings are logged.
//
// # Watermill's universal suite (watermill_test.go)
//
// github.com/ThreeDotsLabs/watermill/pubsub/tests.TestPubSub runs, per
// backend, against the decorators wired as a tier is: Watermill's
// delay.NewPublisher (every message asks for a 20ms delay) over
// tiered.NewPublisher over the backend's publisher, and tiered.NewSubscriber
// over a tier subscription of the backend (SubscribeParams.Delay > 0, the
// Kafka backend's session-aware tier consumer). The constructor without a
// group puts every subscriber of one test in one group; the consumer group
// constructor maps the suite's group to SubscribeParams.Group. The memory
// backend needs a single instance, so every constructor call of one test
// shares one GoChannel. Features.Watermill declares what each backend
// supports; RestartServiceCommand is not set, so TestReconnect is skipped
// everywhere.
//
// # Adding a backend
//
// Write a constructor func(t *testing.T) tiered.Backend that returns a
// fresh backend (its own consumer groups at least), closed with t.Cleanup,
// tuned for tests (short redelivery and claim times), and add a Backend with
// honest Features to backends(). Every scenario and Watermill's suite then
// run on it. If a scenario fails, fix the backend or, if the backend truly
// cannot promise it, add a Feature that says so and have the scenario read
// it; never name a backend in a scenario.
package tests
