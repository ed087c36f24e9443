# Sourced by .ci/test, scripts/bench.sh and scripts/drill.sh: need_redis
# prints the path of a redis-server (6.2 or later) that has redis-cli beside
# it on PATH (the Redis Cluster tests join their nodes with it). If they are
# not installed, it installs them from the system's package manager when
# run as root (apt-get, dnf, yum, apk or zypper); otherwise, or if that
# fails, it says what to install on stderr and returns 1.
#
#   bin=$(need_redis "scripts/bench.sh") || exit 1

# The path of redis-server, if it and redis-cli are on PATH.
find_redis() { command -v redis-cli >/dev/null 2>&1 && command -v redis-server 2>/dev/null; }

# install_redis WHO: installs redis-server and redis-cli with the system's
# package manager.
install_redis() {
  local who=$1
  echo "$who: redis-server is not installed; installing it with the system's package manager"
  if command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  elif command -v dnf >/dev/null 2>&1; then
    dnf install -y -q redis
  elif command -v yum >/dev/null 2>&1; then
    yum install -y -q redis
  elif command -v apk >/dev/null 2>&1; then
    apk add --quiet redis
  elif command -v zypper >/dev/null 2>&1; then
    zypper --non-interactive --quiet install redis
  else
    echo "$who: no known package manager (apt-get, dnf, yum, apk, zypper): install redis-server 6.2 or later yourself"
    return 1
  fi || { echo "$who: installing redis-server failed"; return 1; }
}

# need_redis WHO: WHO names the script in its messages.
need_redis() {
  local who=$1 bin version major minor
  if ! bin=$(find_redis); then
    if [[ $(id -u) -ne 0 ]]; then
      cat >&2 <<MSG
$who: Redis needs a real redis-server (6.2 or later) and redis-cli
(the Redis Cluster tests start a cluster with them), and they are not both on
PATH. Install them, then run $who again:
    Debian/Ubuntu:  sudo apt-get install -y redis-server
    Fedora/RHEL:    sudo dnf install -y redis
    Alpine:         sudo apk add redis
    macOS:          brew install redis
(Run as root, $who installs them itself.) .ci/test and scripts/bench.sh
can use running servers instead: REDIS_ADDR=host:6379, and for .ci/test
REDIS_CLUSTER_ADDRS=h1:7000,h2:7001,h3:7002 too.
MSG
      return 1
    fi
    install_redis "$who" >&2 || return 1
    bin=$(find_redis) || {
      echo "$who: redis-server and redis-cli are installed but not both on PATH ($PATH): add their directory to PATH" >&2
      return 1
    }
  fi
  version=$("$bin" --version | grep -o 'v=[0-9.]*' | cut -c3-)
  IFS=. read -r major minor _ <<<"${version:-0.0}"
  if ((major < 6 || (major == 6 && minor < 2))); then
    echo "$who: $bin is Redis $version; 6.2 or later is needed" >&2
    return 1
  fi
  echo "$bin"
}
