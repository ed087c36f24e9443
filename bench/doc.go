// Package bench measures what retry-kafka costs, per backend (in-memory,
// Kafka on the embedded kfake broker or KAFKA_BROKERS, Redis on a real
// redis-server or REDIS_ADDR), always against plain Watermill on the same
// broker in the same run: the same handler on a plain message.Router with a
// plain subscriber from the same backend.
//
// The benchmarks live in the package's tests and use fixed message counts,
// so one iteration is the whole measurement:
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/
//
// scripts/bench.sh runs that and prints every figure as one table (see
// BENCHMARKS.md at the repository root, and bench/cmd/benchtable).
package bench
