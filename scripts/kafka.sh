#!/usr/bin/env bash
# Run a real single-node Apache Kafka broker (KRaft, broker+controller in one
# JVM) on 127.0.0.1 for tests and CI. Needs java (17+) and mvn; the jars come
# from Maven Central via scripts/kafka/pom.xml into the default ~/.m2.
#
#   export KAFKA_BROKERS=$(scripts/kafka.sh start)   # prints 127.0.0.1:PORT only
#   go test ./...
#   scripts/kafka.sh stop
#
# Subcommands:
#   start    Start the broker and print its bootstrap address (one line on
#            stdout; all diagnostics go to stderr). If a broker started from the
#            same state dir is still running and answering, it is REUSED: its
#            address is printed again and nothing is restarted (topics and data
#            from earlier runs are kept). Use `restart` for a fresh, empty broker.
#   stop     TERM the broker (KILL after 20 s) and delete its data dir.
#            Idempotent: exits 0 when nothing runs.
#   restart  stop, then start (always an empty broker).
#   status   Print the bootstrap address and exit 0 if running, else exit 1.
#   classpath  Print the broker classpath (resolving it if needed).
#
# Environment:
#   KAFKA_STATE_DIR      state dir (default /tmp/retry-kafka-broker): holds
#                        the cached classpath, server.properties, data/, logs/
#   KAFKA_START_TIMEOUT  seconds to wait for readiness (default 90)
#   KAFKA_HEAP_OPTS      JVM heap flags (default "-Xms128m -Xmx512m")
#   KAFKA_LOG_LEVEL      root log level of the broker log (default WARN)
#
# Files in the state dir: classpath.txt (+ classpath.key, the pom's checksum:
# the cache is rebuilt when scripts/kafka/pom.xml changes or a jar is gone),
# mvn.log, server.properties, log4j2.properties, broker.pid, bootstrap, data/ (removed
# by stop), logs/server.log (log4j) and logs/broker.out (JVM stdout/stderr).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
POM="$SCRIPT_DIR/kafka/pom.xml"
STATE_DIR=${KAFKA_STATE_DIR:-/tmp/retry-kafka-broker}
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
HEAP_OPTS=${KAFKA_HEAP_OPTS:-"-Xms128m -Xmx512m"}
LOG_LEVEL=${KAFKA_LOG_LEVEL:-WARN}

CP_FILE="$STATE_DIR/classpath.txt"
CP_KEY_FILE="$STATE_DIR/classpath.key"
PID_FILE="$STATE_DIR/broker.pid"
ADDR_FILE="$STATE_DIR/bootstrap"
PROPS="$STATE_DIR/server.properties"
LOG4J="$STATE_DIR/log4j2.properties"
DATA_DIR="$STATE_DIR/data"
LOG_DIR="$STATE_DIR/logs"
SERVER_LOG="$LOG_DIR/server.log"
BROKER_OUT="$LOG_DIR/broker.out"
READY_LINE="Kafka Server started"

log() { echo "kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# JVM flags for a small, quick-starting test broker on a 2-core machine.
# shellcheck disable=SC2206
JVM_OPTS=($HEAP_OPTS -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError
  -Xshare:auto -Djava.awt.headless=true -Dfile.encoding=UTF-8)
# Short-lived tool JVMs (StorageTool): C1 only starts fastest.
TOOL_OPTS=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto)

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

# Pid of our running broker, or nothing. Checks the process really is the
# kafka.Kafka JVM started with our server.properties (guards against pid reuse).
running_pid() {
  [[ -f $PID_FILE ]] || return 0
  local pid
  pid=$(cat "$PID_FILE" 2>/dev/null || true)
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  alive "$pid" || return 0
  if [[ -r /proc/$pid/cmdline ]]; then
    local cmd
    cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
    [[ $cmd == *kafka.Kafka*"$PROPS"* ]] || return 0
  fi
  echo "$pid"
}

# True if pid is a live (non-zombie) process. A broker that died while this
# script (its parent) still runs stays a zombie, which kill -0 calls alive.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
  [[ $st != Z ]]
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Print two distinct free TCP ports on 127.0.0.1.
free_ports() {
  if command -v python3 >/dev/null; then
    python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
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
  while ((${#ports[@]} < 2)); do
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

write_config() {
  local port=$1 cport=$2
  cat > "$PROPS" <<EOF
# Written by scripts/kafka.sh: single-node KRaft test broker. Do not edit.
node.id=1
process.roles=broker,controller
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$DATA_DIR
metadata.log.dir=$DATA_DIR

# Single node: every internal topic with one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
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
background.threads=2
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=2097152
log.segment.bytes=16777216
log.retention.hours=24
delete.topic.enable=true
EOF
  cat > "$LOG4J" <<EOF
# Written by scripts/kafka.sh.
status = warn
name = kafka-test-broker
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $SERVER_LOG
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = $LOG_LEVEL
rootLogger.appenderRef.file.ref = FILE
# Readiness: the "Kafka Server started" line is logged here at INFO.
logger.raftserver.name = kafka.server.KafkaRaftServer
logger.raftserver.level = INFO
EOF
}

show_logs() {
  local f
  for f in "$SERVER_LOG" "$BROKER_OUT"; do
    [[ -s $f ]] || continue
    log "---- last 50 lines of $f ----"
    tail -n 50 "$f" >&2
  done
}

kill_broker() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 200; i++)); do # 20 s
    alive "$pid" || return 0
    sleep 0.1
  done
  log "broker pid $pid ignored TERM for 20 s, sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
}

do_stop() {
  local pid
  pid=$(running_pid)
  if [[ -n $pid ]]; then
    log "stopping broker (pid $pid)"
    kill_broker "$pid"
  fi
  rm -rf "$DATA_DIR"
  rm -f "$PID_FILE" "$ADDR_FILE"
}

do_status() {
  local pid
  pid=$(running_pid)
  if [[ -n $pid && -s $ADDR_FILE ]] && port_open "$(cut -d: -f2 < "$ADDR_FILE")"; then
    log "running: pid $pid, bootstrap $(cat "$ADDR_FILE"), logs in $LOG_DIR"
    cat "$ADDR_FILE"
    return 0
  fi
  log "not running"
  return 1
}

do_start() {
  command -v java >/dev/null || die "java not found"
  local pid
  pid=$(running_pid)
  if [[ -n $pid ]]; then
    if [[ -s $ADDR_FILE ]] && port_open "$(cut -d: -f2 < "$ADDR_FILE")"; then
      log "reusing running broker (pid $pid); use 'restart' for a fresh one"
      cat "$ADDR_FILE"
      return 0
    fi
    log "broker pid $pid is not answering, restarting it"
  fi
  do_stop

  local cp t0 port cport cluster_id
  t0=$SECONDS
  cp=$(classpath)
  read -r port cport < <(free_ports)
  [[ -n ${port:-} && -n ${cport:-} ]] || die "could not find free ports"

  mkdir -p "$DATA_DIR" "$LOG_DIR"
  : > "$SERVER_LOG"
  : > "$BROKER_OUT"
  write_config "$port" "$cport"

  cluster_id=$(random_cluster_id "$cp")
  if ! java "${TOOL_OPTS[@]}" -Dlog4j2.configurationFile="$LOG4J" -cp "$cp" \
      kafka.tools.StorageTool format -t "$cluster_id" -c "$PROPS" >>"$BROKER_OUT" 2>&1; then
    show_logs
    die "StorageTool format failed"
  fi

  # All fds redirected (stdin too, and any inherited lock fd 9 closed) so that
  # $(kafka.sh start) returns as soon as this script exits; setsid keeps the
  # broker out of the caller's process group (no SIGINT/SIGHUP from the shell).
  setsid nohup java "${JVM_OPTS[@]}" \
    -Dlog4j2.configurationFile="$LOG4J" -Dkafka.logs.dir="$LOG_DIR" \
    -cp "$cp" kafka.Kafka "$PROPS" \
    </dev/null >>"$BROKER_OUT" 2>&1 9>&- &
  pid=$!
  echo "$pid" > "$PID_FILE"
  log "started broker pid $pid on 127.0.0.1:$port (controller $cport), waiting for readiness"

  # Interrupted while waiting: do not leave a half-started broker behind.
  trap 'kill_broker "$pid"; rm -f "$PID_FILE"; exit 130' INT TERM HUP
  local deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! alive "$pid"; then
      show_logs
      rm -f "$PID_FILE"
      die "broker exited during startup"
    fi
    if grep -q "$READY_LINE" "$SERVER_LOG" 2>/dev/null && port_open "$port"; then
      break
    fi
    if ((SECONDS >= deadline)); then
      show_logs
      kill_broker "$pid"
      rm -f "$PID_FILE"
      die "broker not ready after ${START_TIMEOUT}s"
    fi
    sleep 0.1
  done
  trap - INT TERM HUP
  echo "127.0.0.1:$port" > "$ADDR_FILE"
  log "broker ready in $((SECONDS - t0))s: 127.0.0.1:$port (logs: $LOG_DIR)"
  cat "$ADDR_FILE"
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
  classpath) lock; classpath ;;
  *)
    echo "usage: $0 start|stop|restart|status|classpath" >&2
    exit 2
    ;;
esac
