#!/usr/bin/env bash
# Run real Apache Kafka on 127.0.0.1 for tests, drills and CI: one node
# (KRaft, broker and controller in one JVM), or a cluster of N such nodes
# (KAFKA_NODES=3). Needs java (17+) and mvn; the jars come from Maven Central
# via scripts/kafka/pom.xml into the default ~/.m2.
#
#   export KAFKA_BROKERS=$(scripts/kafka.sh start)   # prints 127.0.0.1:PORT only
#   go test ./...
#   scripts/kafka.sh stop
#
#   export KAFKA_BROKERS=$(KAFKA_NODES=3 scripts/kafka.sh start)   # h:p1,h:p2,h:p3
#   scripts/kafka.sh kill 2      # kill -9 node 2; its data stays
#   scripts/kafka.sh resume 2    # node 2 again, same data dir and port
#   scripts/kafka.sh stop        # every node; data deleted
#
# Subcommands:
#   start      Start the broker(s) and print the bootstrap list (one line on
#              stdout: host:port,host:port,...; diagnostics go to stderr). If
#              the same state dir runs a broker (cluster) of the same size that
#              answers, it is REUSED: the list is printed again and nothing is
#              restarted (topics and data are kept). `restart` gives a fresh,
#              empty one.
#   stop       TERM every node at once (KILL after 20 s) and delete the data.
#              Idempotent: exits 0 when nothing runs.
#   restart    stop, then start (always empty).
#   status     Print the bootstrap list and exit 0 if every node runs and
#              answers, else exit 1. One line per node on stderr.
#   kill [N]   kill -9 node N (default 1, the only node of a single broker),
#              as a crash would: its data dir, config and port are kept.
#   resume [N] Start node N again on its data dir, config and port, after a
#              kill (without N: every node that is down), and wait until it
#              is ready. Does nothing to a node that runs.
#   pid [N]    Print the pid of node N (default 1) if it runs, else exit 1.
#   classpath  Print the broker classpath (resolving it if needed).
#
# Environment:
#   KAFKA_STATE_DIR      state dir (default /tmp/retry-kafka-broker): the
#                        cached classpath, and per node its config, data and
#                        logs. Use one per person and per purpose.
#   KAFKA_NODES          nodes that `start` runs (default 1). Each is broker
#                        and controller; the controllers form the KRaft quorum.
#                        Other subcommands read the size from the state dir.
#   KAFKA_START_TIMEOUT  seconds to wait for readiness (default 90)
#   KAFKA_HEAP_OPTS      JVM heap flags (default "-Xms128m -Xmx512m" for one
#                        node, "-Xms64m -Xmx256m" per node of a cluster)
#   KAFKA_LOG_LEVEL      root log level of the broker log (default WARN)
#
# Files in the state dir: classpath.txt (+ classpath.key, the pom's checksum:
# the cache is rebuilt when scripts/kafka/pom.xml changes or a jar is gone),
# mvn.log, nodes (the cluster size), bootstrap, and per node in the node
# dir (the state dir itself for one node, node-N/ for a cluster):
# server.properties, log4j2.properties, port, broker.pid, data/ (removed by
# stop), logs/server.log (log4j) and logs/broker.out (JVM stdout/stderr).
#
# A cluster's nodes are node.id 1..N. Broker settings are Kafka's defaults
# where they matter to the library: default.replication.factor=N (at most 3),
# min.insync.replicas=1 (the library's Prepare sets it per topic for the
# topics it creates); internal topics (consumer offsets, transactions) get
# replication factor min(N,3) and min.insync.replicas 2 when N >= 3.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POM="$SCRIPT_DIR/kafka/pom.xml"
STATE_DIR=${KAFKA_STATE_DIR:-/tmp/retry-kafka-broker}
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
LOG_LEVEL=${KAFKA_LOG_LEVEL:-WARN}

CP_FILE="$STATE_DIR/classpath.txt"
CP_KEY_FILE="$STATE_DIR/classpath.key"
NODES_FILE="$STATE_DIR/nodes"
ADDR_FILE="$STATE_DIR/bootstrap"
READY_LINE="Kafka Server started"

log() { echo "kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# Short-lived tool JVMs (StorageTool): C1 only starts fastest.
TOOL_OPTS=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto)

# JVM flags of a broker node, small and quick to start on a 2-core machine.
jvm_opts() {
  local heap=${KAFKA_HEAP_OPTS:-}
  if [[ -z $heap ]]; then
    if (($1 > 1)); then heap="-Xms64m -Xmx256m"; else heap="-Xms128m -Xmx512m"; fi
  fi
  # shellcheck disable=SC2206
  JVM_OPTS=($heap -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError
    -Xshare:auto -Djava.awt.headless=true -Dfile.encoding=UTF-8)
}

# Cluster size recorded by start (1 when nothing was started).
recorded_nodes() {
  local n
  n=$(cat "$NODES_FILE" 2>/dev/null || true)
  [[ $n =~ ^[1-9][0-9]*$ ]] && echo "$n" || echo 1
}

# Directory of node $1 in a cluster of $2 nodes: the state dir itself for a
# single node (the layout single-node state dirs always had), else node-N/.
node_dir() {
  if (($2 == 1)); then echo "$STATE_DIR"; else echo "$STATE_DIR/node-$1"; fi
}

checksum() { cksum < "$1" | awk '{print $1"-"$2}'; }

# Resolve (once) and print the classpath. Cached under the state dir, keyed by
# the pom's checksum; re-resolved if any cached jar disappeared from ~/.m2.
classpath() {
  mkdir -p "$STATE_DIR"
  local key cp jar ok=1
  key=$(checksum "$POM")
  if [[ -s $CP_FILE && -f $CP_KEY_FILE && $(cat "$CP_KEY_FILE") == "$key" ]]; then
    cp=$(cat "$CP_FILE")
    local IFS=:
    for jar in $cp; do [[ -f $jar ]] || { ok=0; break; }; done
    if ((ok)); then printf '%s\n' "$cp"; return 0; fi
  fi
  command -v mvn >/dev/null || die "mvn not found (needed once to fetch the Kafka jars)"
  log "resolving Kafka classpath with Maven (first run only)..."
  local tmp="$CP_FILE.tmp.$$" mvn_log="$STATE_DIR/mvn.log"
  if ! mvn -q -B -f "$POM" dependency:build-classpath -Dmdep.outputFile="$tmp" >"$mvn_log" 2>&1; then
    cat "$mvn_log" >&2
    rm -f "$tmp"
    die "mvn dependency:build-classpath failed"
  fi
  [[ -s $tmp ]] || die "mvn wrote an empty classpath"
  mv -f "$tmp" "$CP_FILE"
  printf '%s\n' "$key" > "$CP_KEY_FILE"
  cat "$CP_FILE"
}

# True if pid is a live (non-zombie) process. A broker that died while this
# script (its parent) still runs stays a zombie, which kill -0 calls alive.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
  [[ $st != Z ]]
}

# Pid of the running broker of node dir $1, or nothing. Checks the process
# really is the kafka.Kafka JVM started with that node's server.properties
# (guards against pid reuse).
running_pid() {
  local dir=$1 pid
  [[ -f $dir/broker.pid ]] || return 0
  pid=$(cat "$dir/broker.pid" 2>/dev/null || true)
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  alive "$pid" || return 0
  if [[ -r /proc/$pid/cmdline ]]; then
    local cmd
    cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
    [[ $cmd == *kafka.Kafka*"$dir/server.properties"* ]] || return 0
  fi
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Print $1 distinct free TCP ports on 127.0.0.1.
free_ports() {
  if command -v python3 >/dev/null; then
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
    return
  fi
  local ports=() p
  while ((${#ports[@]} < $1)); do
    p=$((20000 + RANDOM % 40000))
    [[ " ${ports[*]-} " == *" $p "* ]] && continue
    port_open "$p" || ports+=("$p")
  done
  echo "${ports[*]}"
}

# A random cluster id exactly as `kafka-storage.sh random-uuid`
# (kafka.tools.StorageTool random-uuid -> Uuid.randomUuid()) makes it: 16 random
# bytes, base64url without padding, never starting with '-'. Done in bash to
# save a JVM start (~0.5-1 s); StorageTool format validates it. Falls back to
# the tool class if base64/urandom are unavailable.
random_cluster_id() {
  local id
  if command -v base64 >/dev/null && [[ -r /dev/urandom ]]; then
    while :; do
      id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
      [[ ${#id} -eq 22 && $id != -* && $id != AAAAAAAAAAAAAAAAAAAAA[AQ] ]] && break
    done
    echo "$id"
  else
    java "${TOOL_OPTS[@]}" -cp "$1" kafka.tools.StorageTool random-uuid
  fi
}

# write_config DIR ID NODES PORT CPORT VOTERS
write_config() {
  local dir=$1 id=$2 nodes=$3 port=$4 cport=$5 voters=$6
  local rf=$((nodes < 3 ? nodes : 3)) isr=1
  if ((nodes >= 3)); then isr=2; fi
  cat > "$dir/server.properties" <<EOF
# Written by scripts/kafka.sh: node $id of a $nodes-node KRaft test cluster
# (broker and controller in one JVM). Do not edit.
node.id=$id
process.roles=broker,controller
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$dir/data
metadata.log.dir=$dir/data

# Replication: internal topics on min($nodes,3) nodes; user topics default to
# as many replicas, and to Kafka's own min.insync.replicas (the library sets
# it on the topics it creates).
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
default.replication.factor=$rf
min.insync.replicas=1

# Small and fast for tests.
auto.create.topics.enable=true
num.partitions=1
group.initial.rebalance.delay.ms=0
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.num.partitions=1
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
num.replica.fetchers=1
background.threads=2
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=2097152
log.segment.bytes=16777216
log.retention.hours=24
delete.topic.enable=true
EOF
  cat > "$dir/log4j2.properties" <<EOF
# Written by scripts/kafka.sh.
status = warn
name = kafka-test-broker-$id
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $dir/logs/server.log
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = $LOG_LEVEL
rootLogger.appenderRef.file.ref = FILE
# Readiness: the "Kafka Server started" line is logged here at INFO.
logger.raftserver.name = kafka.server.KafkaRaftServer
logger.raftserver.level = INFO
EOF
  echo "$port" > "$dir/port"
}

show_logs() {
  local dir=$1 f
  for f in "$dir/logs/server.log" "$dir/logs/broker.out"; do
    [[ -s $f ]] || continue
    log "---- last 50 lines of $f ----"
    tail -n 50 "$f" >&2
  done
}

# any_alive PID...: true while one of them runs.
any_alive() {
  local pid
  for pid in "$@"; do alive "$pid" && return 0; done
  return 1
}

# kill_broker PID...: TERM them all at once, then KILL whichever still runs
# after 20 s. All at once, because a node of a cluster stopped alone after
# the others shuts down waiting for a controller quorum that is gone, and
# so ignored TERM for the whole 20 s at every multi-node stop.
kill_broker() {
  local pid i
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for ((i = 0; i < 200; i++)); do # 20 s
    any_alive "$@" || return 0
    sleep 0.1
  done
  for pid in "$@"; do
    alive "$pid" || continue
    log "broker pid $pid ignored TERM for 20 s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  done
  for ((i = 0; i < 50; i++)); do
    any_alive "$@" || return 0
    sleep 0.1
  done
}

# Launch the JVM of node dir $1 (config written, storage formatted) in the
# background; sets LAUNCHED_PID and READY_FROM (the byte of server.log from
# which the readiness line counts, so a resumed node's old lines do not).
launch() {
  local dir=$1 cp=$2
  mkdir -p "$dir/logs"
  touch "$dir/logs/server.log" "$dir/logs/broker.out"
  READY_FROM=$(($(stat -c %s "$dir/logs/server.log") + 1))
  # All fds redirected (stdin too, and the lock fd 9 closed) so that
  # $(kafka.sh start) returns as soon as this script exits; setsid keeps the
  # broker out of the caller's process group (no SIGINT/SIGHUP from the shell).
  setsid nohup java "${JVM_OPTS[@]}" \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -Dkafka.logs.dir="$dir/logs" \
    -cp "$cp" kafka.Kafka "$dir/server.properties" \
    </dev/null >>"$dir/logs/broker.out" 2>&1 9>&- &
  LAUNCHED_PID=$!
  echo "$LAUNCHED_PID" > "$dir/broker.pid"
}

# wait_ready "dir pid from" ...: wait until each node logged readiness after
# its offset and answers on its port. On failure: logs shown, the given pids
# killed, exit 1.
wait_ready() {
  local deadline=$((SECONDS + START_TIMEOUT)) spec dir pid from pending
  while :; do
    pending=0
    for spec in "$@"; do
      read -r dir pid from <<<"$spec"
      if ! alive "$pid"; then
        show_logs "$dir"
        abort_launch "$@"
        die "broker of $dir exited during startup"
      fi
      if tail -c +"$from" "$dir/logs/server.log" 2>/dev/null | grep -q "$READY_LINE" &&
        port_open "$(cat "$dir/port")"; then
        continue
      fi
      pending=1
    done
    ((pending)) || return 0
    if ((SECONDS >= deadline)); then
      for spec in "$@"; do read -r dir _ _ <<<"$spec"; show_logs "$dir"; done
      abort_launch "$@"
      die "not ready after ${START_TIMEOUT}s"
    fi
    sleep 0.1
  done
}

abort_launch() {
  local spec dir pid pids=()
  for spec in "$@"; do
    read -r _ pid _ <<<"$spec"
    pids+=("$pid")
  done
  kill_broker "${pids[@]}"
  for spec in "$@"; do
    read -r dir _ _ <<<"$spec"
    rm -f "$dir/broker.pid"
  done
}

bootstrap_list() {
  local n=$1 i list=""
  for ((i = 1; i <= n; i++)); do
    list+="${list:+,}127.0.0.1:$(cat "$(node_dir "$i" "$n")/port")"
  done
  echo "$list"
}

do_stop() {
  local n i dir pid pids=()
  n=$(recorded_nodes)
  for ((i = 1; i <= n; i++)); do
    pid=$(running_pid "$(node_dir "$i" "$n")")
    if [[ -n $pid ]]; then
      log "stopping node $i (pid $pid)"
      pids+=("$pid")
    fi
  done
  ((${#pids[@]} == 0)) || kill_broker "${pids[@]}"
  for ((i = 1; i <= n; i++)); do
    dir=$(node_dir "$i" "$n")
    rm -rf "$dir/data"
    rm -f "$dir/broker.pid" "$dir/port"
    if ((n > 1)); then rm -rf "$dir"; fi
  done
  rm -f "$ADDR_FILE" "$NODES_FILE"
}

# Exit 0 if every node of the recorded cluster runs and answers.
all_up() {
  local n=$1 i dir pid
  [[ -s $ADDR_FILE ]] || return 1
  for ((i = 1; i <= n; i++)); do
    dir=$(node_dir "$i" "$n")
    pid=$(running_pid "$dir")
    [[ -n $pid && -s $dir/port ]] && port_open "$(cat "$dir/port")" || return 1
  done
}

do_status() {
  local n i dir pid up=1
  n=$(recorded_nodes)
  for ((i = 1; i <= n; i++)); do
    dir=$(node_dir "$i" "$n")
    pid=$(running_pid "$dir")
    if [[ -n $pid && -s $dir/port ]] && port_open "$(cat "$dir/port")"; then
      log "node $i: running, pid $pid, 127.0.0.1:$(cat "$dir/port"), logs in $dir/logs"
    else
      log "node $i: not running"
      up=0
    fi
  done
  if ((up)) && [[ -s $ADDR_FILE ]]; then
    cat "$ADDR_FILE"
    return 0
  fi
  return 1
}

do_start() {
  command -v java >/dev/null || die "java not found"
  local want=${KAFKA_NODES:-1}
  [[ $want =~ ^[1-9][0-9]*$ ]] || die "KAFKA_NODES=$want is not a positive integer"
  if [[ -s $NODES_FILE && $(recorded_nodes) == "$want" ]] && all_up "$want"; then
    log "reusing running broker(s) of $STATE_DIR; use 'restart' for fresh ones"
    cat "$ADDR_FILE"
    return 0
  fi
  do_stop

  local cp t0 cluster_id i dir voters="" ports specs=()
  t0=$SECONDS
  cp=$(classpath)
  jvm_opts "$want"
  read -r -a ports < <(free_ports $((2 * want)))
  ((${#ports[@]} == 2 * want)) || die "could not find free ports"
  for ((i = 1; i <= want; i++)); do
    voters+="${voters:+,}$i@127.0.0.1:${ports[2 * i - 1]}"
  done
  mkdir -p "$STATE_DIR"
  echo "$want" > "$NODES_FILE"
  cluster_id=$(random_cluster_id "$cp")
  for ((i = 1; i <= want; i++)); do
    dir=$(node_dir "$i" "$want")
    mkdir -p "$dir/data" "$dir/logs"
    : > "$dir/logs/server.log"
    : > "$dir/logs/broker.out"
    write_config "$dir" "$i" "$want" "${ports[2 * i - 2]}" "${ports[2 * i - 1]}" "$voters"
    if ! java "${TOOL_OPTS[@]}" -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$cp" \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" >>"$dir/logs/broker.out" 2>&1; then
      show_logs "$dir"
      die "StorageTool format failed for node $i"
    fi
  done

  # Interrupted while waiting: do not leave half-started brokers behind.
  trap 'abort_launch "${specs[@]}"; exit 130' INT TERM HUP
  for ((i = 1; i <= want; i++)); do
    dir=$(node_dir "$i" "$want")
    launch "$dir" "$cp"
    specs+=("$dir $LAUNCHED_PID $READY_FROM")
    log "started node $i pid $LAUNCHED_PID on 127.0.0.1:$(cat "$dir/port")"
  done
  wait_ready "${specs[@]}"
  trap - INT TERM HUP
  bootstrap_list "$want" > "$ADDR_FILE"
  log "ready in $((SECONDS - t0))s: $(cat "$ADDR_FILE") (state: $STATE_DIR)"
  cat "$ADDR_FILE"
}

node_arg() {
  local n=$1 i=${2:-1}
  [[ $i =~ ^[1-9][0-9]*$ ]] && ((i <= n)) || die "no node $i (the cluster of $STATE_DIR has $n)"
  echo "$i"
}

do_kill() {
  local n i dir pid
  n=$(recorded_nodes)
  i=$(node_arg "$n" "${1:-}")
  dir=$(node_dir "$i" "$n")
  pid=$(running_pid "$dir")
  [[ -n $pid ]] || die "node $i is not running"
  kill -KILL "$pid"
  local k
  for ((k = 0; k < 100; k++)); do alive "$pid" || break; sleep 0.1; done
  log "killed node $i (pid $pid) with SIGKILL; its data is kept: 'resume $i' starts it again"
}

do_resume() {
  local n i dir pid cp specs=() which=()
  n=$(recorded_nodes)
  [[ -s $ADDR_FILE ]] || die "nothing to resume in $STATE_DIR: run start first"
  if [[ -n ${1:-} ]]; then which=("$(node_arg "$n" "$1")"); else for ((i = 1; i <= n; i++)); do which+=("$i"); done; fi
  cp=$(classpath)
  jvm_opts "$n"
  trap 'abort_launch "${specs[@]}"; exit 130' INT TERM HUP
  for i in "${which[@]}"; do
    dir=$(node_dir "$i" "$n")
    [[ -s $dir/server.properties && -d $dir/data ]] || die "node $i has no config or data in $dir"
    pid=$(running_pid "$dir")
    if [[ -n $pid ]]; then
      log "node $i already runs (pid $pid)"
      continue
    fi
    launch "$dir" "$cp"
    specs+=("$dir $LAUNCHED_PID $READY_FROM")
    log "resumed node $i pid $LAUNCHED_PID on 127.0.0.1:$(cat "$dir/port") with its data"
  done
  ((${#specs[@]} == 0)) || wait_ready "${specs[@]}"
  trap - INT TERM HUP
  cat "$ADDR_FILE"
}

do_pid() {
  local n i pid
  n=$(recorded_nodes)
  i=$(node_arg "$n" "${1:-}")
  pid=$(running_pid "$(node_dir "$i" "$n")")
  [[ -n $pid ]] || exit 1
  echo "$pid"
}

# Serialize concurrent invocations on the same state dir (fd 9; not passed on
# to the broker JVM).
lock() {
  mkdir -p "$STATE_DIR"
  if command -v flock >/dev/null; then
    exec 9>"$STATE_DIR/lock"
    flock -w 120 9 || die "could not lock $STATE_DIR/lock"
  fi
}

case "${1:-}" in
  start) lock; do_start ;;
  stop) lock; do_stop ;;
  restart) lock; do_stop; do_start ;;
  status) do_status ;;
  kill) lock; do_kill "${2:-}" ;;
  resume) lock; do_resume "${2:-}" ;;
  pid) do_pid "${2:-}" ;;
  classpath) lock; classpath ;;
  *)
    echo "usage: $0 start|stop|restart|status|kill [N]|resume [N]|pid [N]|classpath" >&2
    exit 2
    ;;
esac
