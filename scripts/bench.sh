#!/usr/bin/env bash
# Runs the retry-kafka benchmarks (./bench/) and prints every figure as
# Markdown tables, with the machine they ran on and the targets met.
#
#   scripts/bench.sh                      # all backends: mem, kafka (embedded kfake), redis
#   BENCH_BACKENDS=kafka scripts/bench.sh # some of them
#   KAFKA_BROKERS=127.0.0.1:9092 REDIS_ADDR=127.0.0.1:6379 scripts/bench.sh
#
# Extra arguments go to `go test` (e.g. -bench Throughput). The raw
# benchmark output is kept in $BENCH_OUT (default: a temporary file).
set -uo pipefail
cd "$(dirname "$0")/.."

# The Redis figures start a redis-server of their own unless REDIS_ADDR
# names one: install it first if it is missing (as .ci/test does). Without
# it, the benchmarks that need no Redis (BENCH=Middleware) still run.
if [[ -z ${REDIS_ADDR:-} && ,${BENCH_BACKENDS:-redis}, == *,redis,* ]]; then
  source scripts/need-redis.sh
  need_redis scripts/bench.sh >/dev/null ||
    echo "scripts/bench.sh: going on without redis-server: the Redis figures will fail" >&2
fi

raw=${BENCH_OUT:-$(mktemp -t retry-kafka-bench.XXXXXX)}
dirty=""
git diff --quiet HEAD -- 2>/dev/null || dirty=" (plus uncommitted changes)"

echo "## Run"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)${dirty}"
echo "- $(go version)"
echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); nproc: $(nproc)"
echo "- Kafka: ${KAFKA_BROKERS:-embedded kfake (in-process; a child process for the memory figure)}"
echo "- Redis: ${REDIS_ADDR:-a redis-server $(redis-server --version 2>/dev/null | grep -o 'v=[0-9.]*' | cut -c3-) started for the run}"
echo "- load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

start=$(date +%s)
status=0
go test -run '^$' -bench "${BENCH:-.}" -benchtime 1x -timeout 20m ./bench/ "$@" >"$raw" 2>&1 || status=$?
echo "- load average after: $(cut -d' ' -f1-3 /proc/loadavg); benchmarks took $(($(date +%s) - start))s"

go run ./bench/cmd/benchtable <"$raw" || status=$?
echo
echo "Raw output (with per-round figures): $raw"
exit "$status"
