#!/usr/bin/env bash
# Fault drills (tests/drill) in the forms that CI runs and RELIABILITY.md
# records: consumers killed with SIGKILL, brokers killed and restarted on
# their data, on real Apache Kafka (scripts/kafka.sh) and a real
# redis-server. Prints Markdown: the machine, then one block per run.
#
#   scripts/drill.sh short     # CI: per broker, 2,000 messages, 5 consumer kills and 1 broker restart
#   scripts/drill.sh full      # RELIABILITY.md: per broker, 10,000 messages with 50 consumer kills,
#                              # then 10,000 messages with 2 broker restarts
#   scripts/drill.sh cluster   # a 3-node Kafka cluster: 10,000 messages, 2 kills of the node leading
#                              # the main topic, 10 consumer kills, 3 consumer processes
#
# Environment:
#   DRILL_BROKERS    brokers to drill (default "kafka redis"; cluster: kafka only).
#                    The brokers' runs go side by side, each broker's runs one after
#                    the other.
#   KAFKA_STATE_DIR  scripts/kafka.sh state dir of the drill's broker (default
#                    /tmp/retry-kafka-drill; cluster: /tmp/retry-kafka-drill-cluster).
#                    A broker already running there is reused and left running.
#   DRILL_OUT        directory for each run's report, JSON, journals and logs
#                    (default: temporary; kept)
# Extra arguments go to every run (e.g. -seed 42, -params max_idle_time=10s).
#
# Exit status 1 if any run lost a message, dead-lettered one wrongly,
# delivered one early or did not drain; duplicates are reported, not judged.
set -uo pipefail
cd "$(dirname "$0")/.."

form=${1:-}
shift || true
case "$form" in
  short | full) brokers=${DRILL_BROKERS:-kafka redis} ;;
  cluster) brokers=kafka ;;
  *)
    echo "usage: $0 short|full|cluster [drill flags]" >&2
    exit 2
    ;;
esac

# The Redis drill starts and restarts a redis-server of its own: install it
# first if it is missing (as .ci/test does).
if [[ " $brokers " == *" redis "* ]]; then
  source scripts/need-redis.sh
  need_redis scripts/drill.sh >/dev/null || exit 1
fi

out=${DRILL_OUT:-$(mktemp -d -t retry-kafka-drill-out.XXXXXX)}
mkdir -p "$out"
bin="$out/drill"
go build -o "$bin" ./tests/drill || exit 1

# runs_for BROKER: the drill runs of the form, one per line.
runs_for() {
  case "$form" in
    short) echo "-broker $1 -messages 2000 -kills 5 -broker-restarts 1 -fault-every 6s" ;;
    full)
      echo "-broker $1 -messages 10000 -kills 50 -broker-restarts 0 -fault-every 10s"
      echo "-broker $1 -messages 10000 -kills 0 -broker-restarts 2 -window 120s"
      ;;
    cluster) echo "-broker kafka -kafka-nodes 3 -consumers 3 -messages 10000 -kills 10 -broker-restarts 2 -fault-every 10s" ;;
  esac
}

# chain BROKER: the broker's runs one after the other; status 1 if one failed.
chain() {
  local broker=$1 i=0 status=0 args state
  state=${KAFKA_STATE_DIR:-/tmp/retry-kafka-drill}
  [[ $form == cluster ]] && state=${KAFKA_STATE_DIR:-/tmp/retry-kafka-drill-cluster}
  while read -r args; do
    i=$((i + 1))
    # shellcheck disable=SC2086
    "$bin" $args -kafka-state-dir "$state" -json "$out/$broker-$i.json" -work-dir "$out/$broker-$i" "${extra[@]}" \
      >"$out/$broker-$i.md" 2>"$out/$broker-$i.log" || status=1
  done < <(runs_for "$broker")
  return $status
}

extra=("$@")
echo "## Drill run ($form)"
echo
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
dirty=""
git diff --quiet HEAD -- 2>/dev/null || dirty=" (plus uncommitted changes)"
echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)${dirty}"
echo "- $(go version)"
echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); nproc: $(nproc); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- command: scripts/drill.sh $form${extra[*]:+ ${extra[*]}}"
start=$SECONDS

pids=()
for broker in $brokers; do
  chain "$broker" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
echo "- took $((SECONDS - start))s; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
for f in "$out"/*.md; do
  [[ -e $f ]] || continue
  cat "$f"
  echo
done
for f in "$out"/*.log; do
  if grep -q "drill: " "$f"; then
    echo "errors in $f:"
    grep "drill: " "$f" | tail -5
  fi
done
echo "Output, JSON and logs: $out"
exit $status
