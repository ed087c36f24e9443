// Command drill is retry-kafka's fault drill: it runs the library the way an
// application does, in separate consumer processes, on real Apache Kafka
// (scripts/kafka.sh) or a real redis-server, kills those processes and the
// broker with SIGKILL at random moments, and checks that nothing was lost,
// wrongly dead-lettered or handled early. Duplicates are counted, per kill
// and per broker restart, not judged: at-least-once allows them.
//
//	go run ./tests/drill -broker kafka -messages 2000 -kills 5 -broker-restarts 1
//	go run ./tests/drill -broker redis -messages 10000 -kills 50 -broker-restarts 0
//	go run ./tests/drill -broker kafka -kafka-nodes 3 -kills 0 -broker-restarts 2
//
// # What runs
//
// The consumer ("drill consume", started by the drill from its own binary)
// is a small main on the public API only: pubsub.Open on the broker's URL,
// a Watermill router, router.New with a policy of three tiers (2s, 5s, 10s;
// four attempts), and AddConsumerHandler. Its handler follows a plan the
// message carries (fail n attempts; fail permanently at attempt n; see
// [mix] for the failure mix) and, before it returns, appends a record of
// the handling to a journal file and fsyncs it. Since the retry middleware
// acks or publishes only after the handler returned, a kill cannot hide a
// handling the broker saw.
//
// The drill starts the broker (Kafka through scripts/kafka.sh in
// -kafka-state-dir, reusing one already running there; Redis as its own
// redis-server with appendonly yes and appendfsync always, on a free port),
// prepares the handler's topics, publishes the messages evenly over the
// window, and starts the consumer processes. At random moments (gaps that
// average the window split evenly, counted from the end of the fault
// before) it kills a consumer process (kill -9), which is started again at
// once, or
// kills the broker (kill -9 of the JVM or redis-server; on a Kafka cluster
// the node leading the main topic's partition 0), leaves it down for
// -broker-down and starts it again on the same data dir and port. While a
// single broker is down the producer waits; a publish that fails anyway is
// retried with the same message, and those messages are left out of the
// duplicate counts (the producer, not the library, may have duplicated
// them).
//
// After the last fault it waits until every message that should succeed
// did and every consumer group of the handler (main topic and tiers) has
// nothing left to consume (tiered.Inspector's Lag), stops the consumers
// with SIGTERM, and reads the whole dead-letter topic with a group of its
// own.
//
// # What it reports
//
// Judged (any non-zero fails the drill, exit status 1): lost messages (no
// success where the plan succeeds, no dead letter where it dead-letters),
// wrong dead letters, successes of messages planned to dead-letter, early
// deliveries (a tier attempt that started before the due time it carried,
// or sooner than the tier's delay after the earliest journaled failure of
// the attempt before, which does not trust the library's stamps), tier
// attempts with no failure before them, and a drain that does not end
// within -drain-timeout.
//
// Counted: duplicate handlings (a handling of a message's attempt after its
// first), each put down to the first fault under way between the first
// handling and it (the one that kept its offset or ack from the broker),
// or to the fault behind a duplicate of the attempt before (a second
// copy), so per consumer kill and per broker restart; duplicate successes;
// duplicate dead-letter records; time to drain after the last fault; tier
// lateness. The report is Markdown, as RELIABILITY.md records it, with the
// command that reproduces the run (same seed).
package main

import "os"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "consume" {
		os.Exit(consumeMain(os.Args[2:]))
	}
	os.Exit(runMain(os.Args[1:]))
}
