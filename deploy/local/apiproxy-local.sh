#!/usr/bin/env bash
# The docker-compose.yml topology as plain processes, for a machine without
# Docker: one redis-server (password, append-only file), one control plane
# (after `apiproxy-controlplane init`), two data planes in Redis mode that
# push their stats to it. Everything listens on 127.0.0.1 only.
#
#   cargo build --release -p apiproxy-dataplane -p apiproxy-controlplane
#   deploy/local/apiproxy-local.sh start     # start all, wait until ready
#   deploy/local/apiproxy-local.sh status    # pid, address, readiness of each
#   deploy/local/apiproxy-local.sh stop      # SIGTERM by pid, wait, clean exit
#
# Logs, pid files, the Redis data and the generated secrets (secrets.env,
# mode 0600) are kept in the run directory; endpoints.env there lists the
# addresses. A second `start` reuses the secrets and the Redis data.
#
# Settings (environment):
#   LOCAL_RUN_DIR        run directory              [deploy/local/run]
#   LOCAL_BIN_DIR        where the two binaries are [target/release if built, else target/debug]
#   LOCAL_REDIS_SERVER   redis-server command       [redis-server]
#   LOCAL_REDIS_PORT     Redis port                 [a free port]
#   LOCAL_ADMIN_PORT     control plane port         [8001]
#   LOCAL_PROXY_PORTS    data-plane proxy ports, one per data plane   ["8000 8002"]
#   LOCAL_METRICS_PORTS  their metrics ports, as many                 ["9000 9002"]
#   LOCAL_START_TIMEOUT  seconds each process may take to get ready   [20]
#   LOCAL_STOP_TIMEOUT   seconds each process may take to exit after SIGTERM [40]
# A port of 0 takes a free one; the real address is read from the log.
# ADMIN_TOKEN, API_PROXY_NODE_TOKEN and LOCAL_REDIS_PASSWORD are generated
# unless set. Every other API_PROXY_* variable set in the environment
# (API_PROXY_TARGET_POLICY, API_PROXY_DRAIN_TIMEOUT, ...) reaches the
# processes as it is.
#
# Exit status: 0 done (status: everything running and ready), 1 failure,
# 2 usage, 3 (status only) something is not running or not ready.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

RUN_DIR=${LOCAL_RUN_DIR:-$here/run}
[[ $RUN_DIR == /* ]] || RUN_DIR=$PWD/$RUN_DIR
REDIS_SERVER=${LOCAL_REDIS_SERVER:-redis-server}
ADMIN_PORT=${LOCAL_ADMIN_PORT:-8001}
read -r -a PROXY_PORTS <<<"${LOCAL_PROXY_PORTS:-8000 8002}"
read -r -a METRICS_PORTS <<<"${LOCAL_METRICS_PORTS:-9000 9002}"
START_TIMEOUT=${LOCAL_START_TIMEOUT:-20}
STOP_TIMEOUT=${LOCAL_STOP_TIMEOUT:-40}

if [[ -n ${LOCAL_BIN_DIR:-} ]]; then
  BIN_DIR=$LOCAL_BIN_DIR
elif [[ -x $repo/target/release/apiproxy-dataplane && -x $repo/target/release/apiproxy-controlplane ]]; then
  BIN_DIR=$repo/target/release
else
  BIN_DIR=$repo/target/debug
fi
[[ $BIN_DIR == /* ]] || BIN_DIR=$PWD/$BIN_DIR

say() { printf '%s\n' "$*"; }
die() { printf 'apiproxy-local: %s\n' "$*" >&2; exit 1; }

# --- processes --------------------------------------------------------------

# Data planes first (they drain), then the control plane, then Redis.
components() {
  local n
  for ((n = ${#PROXY_PORTS[@]}; n >= 1; n--)); do echo "dataplane-$n"; done
  echo controlplane
  echo redis
}

# The program a component's pid must still be running: a pid file never
# makes us signal an unrelated process that reused the pid.
program_of() {
  case $1 in
    redis) basename "$REDIS_SERVER" ;;
    controlplane) echo apiproxy-controlplane ;;
    dataplane-*) echo apiproxy-dataplane ;;
  esac
}

pid_of() { if [[ -f $RUN_DIR/$1.pid ]]; then cat "$RUN_DIR/$1.pid"; fi; }

# Alive and not a zombie (an exited process nobody has reaped yet).
alive() {
  local pid=$1 state
  [[ -n $pid ]] || return 1
  if [[ -r /proc/$pid/stat ]]; then
    state=$(sed 's/^.*) \(.\).*/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
  else
    kill -0 "$pid" 2>/dev/null
  fi
}

# The pid still runs the component's program (where /proc can tell).
is_ours() {
  local pid=$1 program=$2
  [[ -r /proc/$pid/cmdline ]] || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$program"
}

# Runs a component in the background: `launch NAME COMMAND...`.
launch() {
  local name=$1
  shift
  local log=$RUN_DIR/$name.log
  [[ -f $log ]] && mv -f "$log" "$log.prev"
  nohup "$@" >"$log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}

# --- probes -----------------------------------------------------------------

# Status code of GET http://ADDR/PATH, 000 when nothing answers.
http_status() {
  local addr=$1 path=$2 line
  line=$(
    { exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}"; } 2>/dev/null || exit 1
    printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$addr" >&3
    IFS= read -r -t 3 line <&3 || exit 1
    printf '%s' "$line"
  ) 2>/dev/null || line=
  line=${line#HTTP/1.? }
  [[ $line =~ ^[0-9]{3} ]] && echo "${line:0:3}" || echo 000
}

# PING after AUTH, in RESP so any password works.
redis_ready() {
  local port=$1 password=$2 reply bytes
  bytes=$(LC_ALL=C && echo "${#password}")
  reply=$(
    { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || exit 1
    # shellcheck disable=SC2016 # RESP: "$4" is a length, not a variable
    printf '*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n' "$bytes" "$password" >&3
    IFS= read -r -t 3 _ <&3 || exit 1
    IFS= read -r -t 3 reply <&3 || exit 1
    printf '%s' "$reply"
  ) 2>/dev/null || reply=
  [[ $reply == +PONG* ]]
}

# The last address logged in FIELD (JSON or text log format).
logged_addr() {
  sed -n "s/.*$2[^0-9]*\([0-9.]*:[0-9][0-9]*\).*/\1/p" "$RUN_DIR/$1.log" 2>/dev/null | tail -n 1
}

# The component logged its FIELD address.
addr_logged() { [[ -n $(logged_addr "$1" "$2") ]]; }

# The address the component logged in FIELD answers 200 on /readyz.
ready_at() {
  local addr
  addr=$(logged_addr "$1" "$2")
  [[ -n $addr && $(http_status "$addr" /readyz) == 200 ]]
}

# Polls `check ARGS...` every 0.1 s for at most START_TIMEOUT seconds,
# failing early when the component's process has exited.
wait_for() {
  local name=$1 what=$2
  shift 2
  local deadline=$((SECONDS + START_TIMEOUT))
  until "$@"; do
    if ! alive "$(pid_of "$name")"; then
      fail_start "$name exited before $what"
    fi
    if ((SECONDS >= deadline)); then
      fail_start "$name: no $what within ${START_TIMEOUT}s"
    fi
    sleep 0.1
  done
}

fail_start() {
  local name=${1%% *}
  printf 'apiproxy-local: %s; last lines of %s:\n' "$1" "$RUN_DIR/$name.log" >&2
  tail -n 20 "$RUN_DIR/$name.log" >&2 2>/dev/null || true
  printf 'apiproxy-local: stopping what was started\n' >&2
  stop_all >&2 || true
  exit 1
}

# --- secrets ----------------------------------------------------------------

random_hex() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }

load_secrets() {
  local file=$RUN_DIR/secrets.env saved_admin='' saved_node='' saved_redis=
  if [[ -f $file ]]; then
    saved_admin=$(sed -n 's/^ADMIN_TOKEN=//p' "$file")
    saved_node=$(sed -n 's/^API_PROXY_NODE_TOKEN=//p' "$file")
    saved_redis=$(sed -n 's/^LOCAL_REDIS_PASSWORD=//p' "$file")
  fi
  ADMIN_TOKEN=${ADMIN_TOKEN:-${saved_admin:-$(random_hex)}}
  NODE_TOKEN=${API_PROXY_NODE_TOKEN:-${saved_node:-$(random_hex)}}
  REDIS_PASSWORD=${LOCAL_REDIS_PASSWORD:-${saved_redis:-$(random_hex)}}
  (
    umask 077
    printf 'ADMIN_TOKEN=%s\nAPI_PROXY_NODE_TOKEN=%s\nLOCAL_REDIS_PASSWORD=%s\n' \
      "$ADMIN_TOKEN" "$NODE_TOKEN" "$REDIS_PASSWORD" >"$file"
  )
}

# --- start ------------------------------------------------------------------

free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "no free port found for Redis"
}

start_redis() {
  local port=${LOCAL_REDIS_PORT:-} tries=1
  [[ -z $port ]] && tries=5
  mkdir -p "$RUN_DIR/redis"
  for ((try = 1; try <= tries; try++)); do
    [[ -n ${LOCAL_REDIS_PORT:-} ]] || port=$(free_port)
    # The password goes in a 0600 file, not on the command line.
    (
      umask 077
      cat >"$RUN_DIR/redis.conf" <<EOF
bind 127.0.0.1
port $port
requirepass $REDIS_PASSWORD
appendonly yes
appendfsync everysec
dir $RUN_DIR/redis
daemonize no
EOF
    )
    launch redis "$REDIS_SERVER" "$RUN_DIR/redis.conf"
    local deadline=$((SECONDS + START_TIMEOUT))
    while alive "$(pid_of redis)" && ((SECONDS < deadline)); do
      if redis_ready "$port" "$REDIS_PASSWORD"; then
        REDIS_PORT=$port
        return
      fi
      sleep 0.1
    done
    alive "$(pid_of redis)" && fail_start "redis: not answering PING within ${START_TIMEOUT}s"
  done
  fail_start "redis exited (port ${port} taken?)"
}

start_all() {
  local name pid n
  for name in $(components); do
    pid=$(pid_of "$name")
    if alive "$pid" && is_ours "$pid" "$(program_of "$name")"; then
      die "already running ($name, pid $pid): use '$0 stop' first"
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
  ((${#PROXY_PORTS[@]} == ${#METRICS_PORTS[@]})) ||
    die "LOCAL_PROXY_PORTS and LOCAL_METRICS_PORTS must list as many ports"
  for bin in apiproxy-controlplane apiproxy-dataplane; do
    [[ -x $BIN_DIR/$bin ]] || die "$BIN_DIR/$bin not found: cargo build --release -p apiproxy-dataplane -p apiproxy-controlplane (or set LOCAL_BIN_DIR)"
  done
  command -v "$REDIS_SERVER" >/dev/null || die "$REDIS_SERVER not found (apt-get install redis-server, or set LOCAL_REDIS_SERVER)"

  mkdir -p "$RUN_DIR"
  load_secrets
  # Redis mode only; the listeners are set below.
  unset API_PROXY_MAPPINGS_FILE PORT API_PROXY_LISTEN API_PROXY_METRICS_LISTEN API_PROXY_ADMIN_LISTEN
  cd "$RUN_DIR" # the binaries read a .env from their working directory: none here

  start_redis
  local redis_url="redis://:$REDIS_PASSWORD@127.0.0.1:$REDIS_PORT/0"
  say "redis         pid $(pid_of redis)  127.0.0.1:$REDIS_PORT"

  # The default mappings, into an empty hash only.
  if ! API_PROXY_REDIS_URL=$redis_url "$BIN_DIR/apiproxy-controlplane" init \
    >"$RUN_DIR/controlplane-init.log" 2>&1 </dev/null; then
    tail -n 20 "$RUN_DIR/controlplane-init.log" >&2
    fail_start "controlplane init failed"
  fi

  launch controlplane env \
    ADMIN_TOKEN="$ADMIN_TOKEN" API_PROXY_NODE_TOKEN="$NODE_TOKEN" \
    API_PROXY_REDIS_URL="$redis_url" API_PROXY_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
    "$BIN_DIR/apiproxy-controlplane"
  wait_for controlplane "listening address in its log" addr_logged controlplane admin_addr
  wait_for controlplane "200 on /readyz" ready_at controlplane admin_addr
  local cp_addr
  cp_addr=$(logged_addr controlplane admin_addr)
  say "controlplane  pid $(pid_of controlplane)  http://$cp_addr  (console /admin, token in $RUN_DIR/secrets.env)"

  local endpoints="CONTROLPLANE_URL=http://$cp_addr"$'\n'"REDIS_ADDR=127.0.0.1:$REDIS_PORT"$'\n'
  for ((n = 1; n <= ${#PROXY_PORTS[@]}; n++)); do
    name=dataplane-$n
    launch "$name" env -u ADMIN_TOKEN \
      API_PROXY_REDIS_URL="$redis_url" \
      API_PROXY_LISTEN="127.0.0.1:${PROXY_PORTS[n - 1]}" \
      API_PROXY_METRICS_LISTEN="127.0.0.1:${METRICS_PORTS[n - 1]}" \
      API_PROXY_CONTROLPLANE_URL="http://$cp_addr" API_PROXY_NODE_TOKEN="$NODE_TOKEN" \
      API_PROXY_NODE_ID="$name" API_PROXY_SNAPSHOT_CACHE="$RUN_DIR/$name.snapshot" \
      "$BIN_DIR/apiproxy-dataplane"
  done
  for ((n = 1; n <= ${#PROXY_PORTS[@]}; n++)); do
    name=dataplane-$n
    wait_for "$name" "listening addresses in its log" addr_logged "$name" metrics_addr
    wait_for "$name" "200 on /readyz" ready_at "$name" metrics_addr
    local proxy metrics
    proxy=$(logged_addr "$name" proxy_addr)
    metrics=$(logged_addr "$name" metrics_addr)
    say "$name   pid $(pid_of "$name")  proxy http://$proxy  metrics http://$metrics"
    endpoints+="DATAPLANE_${n}_URL=http://$proxy"$'\n'"DATAPLANE_${n}_METRICS_URL=http://$metrics"$'\n'
  done
  printf '%s' "$endpoints" >"$RUN_DIR/endpoints.env"
  say "ready; addresses in $RUN_DIR/endpoints.env"
}

# --- stop -------------------------------------------------------------------

# SIGTERM to each running component's pid (data planes together, so their
# drains overlap), then wait; SIGKILL only past LOCAL_STOP_TIMEOUT, which
# makes the stop fail.
stop_all() {
  local name pid clean=0 group
  local -a dataplanes=() rest=()
  for name in $(components); do
    case $name in dataplane-*) dataplanes+=("$name") ;; *) rest+=("$name") ;; esac
  done
  for group in "${dataplanes[*]}" "${rest[@]}"; do
    local -a waiting=()
    for name in $group; do
      pid=$(pid_of "$name")
      if ! alive "$pid"; then
        rm -f "$RUN_DIR/$name.pid"
        continue
      fi
      if ! is_ours "$pid" "$(program_of "$name")"; then
        say "$name: pid $pid is no longer $(program_of "$name"); not signalled"
        rm -f "$RUN_DIR/$name.pid"
        continue
      fi
      kill -TERM "$pid" 2>/dev/null || true
      waiting+=("$name")
    done
    local deadline=$((SECONDS + STOP_TIMEOUT))
    for name in "${waiting[@]}"; do
      pid=$(pid_of "$name")
      while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
      if alive "$pid"; then
        say "$name: pid $pid still running ${STOP_TIMEOUT}s after SIGTERM; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        clean=1
      else
        say "$name: stopped (pid $pid)"
      fi
      rm -f "$RUN_DIR/$name.pid"
    done
  done
  rm -f "$RUN_DIR/endpoints.env"
  return $clean
}

# --- status -----------------------------------------------------------------

status_all() {
  local name pid addr code rc=0 n
  for name in redis controlplane $(for ((n = 1; n <= ${#PROXY_PORTS[@]}; n++)); do echo "dataplane-$n"; done); do
    pid=$(pid_of "$name")
    if [[ -z $pid ]]; then
      say "$name: not running"
      rc=3
      continue
    fi
    if ! alive "$pid" || ! is_ours "$pid" "$(program_of "$name")"; then
      say "$name: not running (stale pid file, pid $pid)"
      rc=3
      continue
    fi
    case $name in
      redis) say "$name: running, pid $pid, $(sed -n 's/^port //p' "$RUN_DIR/redis.conf" | sed 's/^/127.0.0.1:/')" ;;
      controlplane)
        addr=$(logged_addr controlplane admin_addr)
        code=$(http_status "$addr" /readyz)
        say "$name: running, pid $pid, http://$addr, /readyz $code"
        [[ $code == 200 ]] || rc=3
        ;;
      dataplane-*)
        addr=$(logged_addr "$name" metrics_addr)
        code=$(http_status "$addr" /readyz)
        say "$name: running, pid $pid, proxy http://$(logged_addr "$name" proxy_addr), metrics http://$addr, /readyz $code"
        [[ $code == 200 ]] || rc=3
        ;;
    esac
  done
  return $rc
}

case ${1:-} in
  start) start_all ;;
  stop)
    if stop_all; then say "stopped"; else die "stopped, but not cleanly"; fi
    ;;
  status)
    rc=0
    status_all || rc=$?
    exit $rc
    ;;
  *)
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
    exit 2
    ;;
esac
