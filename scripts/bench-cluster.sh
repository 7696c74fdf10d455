#!/usr/bin/env bash
# Cluster benchmark (docs/BENCH.md, "Several nodes"): corechat nodes joined
# by one private redis-server, driven by the load generator.
#
#   scripts/bench-cluster.sh [big] [spread] [redis]    # default: all three
#
#   big     one room of 30,000 members over 2 nodes (15,000 each: more than
#           one process may hold here), RATE_BIG msg/s published on node 1
#   spread  1,000 members at RATE_SPREAD msg/s: one node without Redis, one
#           cluster node, and two cluster nodes (500 members each)
#   redis   publishes/s one Redis takes: `loadgen acks` closed loop (C
#           connections, W publishes in flight each) on 1 and on 2 nodes
#
# Deliveries/s come from the nodes' own counters (corechat_deliveries_total)
# sampled over the measurement window; latency, loss and seq gaps from the
# load generators (one per node: a process holds at most 20,000 sockets; the
# second one only listens, so its loss is its seq gaps, and they start
# together so that their windows line up). Redis CPU per
# publish is Redis's used_cpu_user+sys over the window divided by the
# messages numbered in it (the rooms' seq keys).
#
# Everything shares this machine's cores: say so next to the numbers.
# Environment: OUT_DIR (default /tmp/corechat-bench-cluster), NO_BUILD=1,
# SERVER_BIN, LOADGEN_BIN, REDIS_FSYNC (everysec), RATE_BIG (20),
# RATE_SPREAD (2000), DURATION (15), ACK_CONNS (200), ACK_WINDOW (8).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT_DIR:-/tmp/corechat-bench-cluster}
SERVER_BIN=${SERVER_BIN:-target/release/corechat}
LOADGEN_BIN=${LOADGEN_BIN:-target/release/loadgen}
REDIS_FSYNC=${REDIS_FSYNC:-everysec}
RATE_BIG=${RATE_BIG:-20}
RATE_SPREAD=${RATE_SPREAD:-2000}
DURATION=${DURATION:-15}
ACK_CONNS=${ACK_CONNS:-200}
ACK_WINDOW=${ACK_WINDOW:-8}
SECRET=bench-cluster-secret
REDIS_PORT=${REDIS_PORT:-6399}
BASE_PORT=${BASE_PORT:-9101}
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(big spread redis)

if [ -z "${NO_BUILD:-}" ]; then cargo build --release -p corechat -p loadgen; fi
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
mkdir -p "$OUT_DIR"

PIDS=()
stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT INT TERM

rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

start_redis() {
  rm -rf "$OUT_DIR/redis" && mkdir -p "$OUT_DIR/redis"
  ( exec redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes \
      --appendfsync "$REDIS_FSYNC" --dir "$OUT_DIR/redis" >"$OUT_DIR/redis.log" 2>&1 ) &
  PIDS+=($!)
  for _ in $(seq 100); do rcli ping 2>/dev/null | grep -q PONG && return; sleep 0.1; done
  echo "redis did not start" >&2; exit 1
}

# start_node K [cluster=1]: node K on BASE_PORT+K-1, one shard.
start_node() {
  local k=$1 cluster=${2:-1} port=$((BASE_PORT + $1 - 1))
  local args=(serve --listen "127.0.0.1:$port" --shards 1 --jwt-secret "$SECRET"
    --data-dir "$OUT_DIR/node$k" --store memory --rate-per-sec 1000000 --burst 1000000
    --max-conns-per-ip 100000 --max-upgrades-per-ip-per-sec 100000)
  [ "$cluster" = 1 ] && args+=(--redis "redis://127.0.0.1:$REDIS_PORT" --node-id "node$k")
  rm -rf "$OUT_DIR/node$k"
  ( exec "$SERVER_BIN" "${args[@]}" >"$OUT_DIR/node$k.log" 2>&1 ) &
  PIDS+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "node$k not ready (see $OUT_DIR/node$k.log)" >&2; exit 1
}

deliveries() { # sum of corechat_deliveries_total over nodes 1..$1
  local k sum=0 v
  for k in $(seq 1 "$1"); do
    v=$(curl -fs "http://127.0.0.1:$((BASE_PORT + k - 1))/metrics" |
      awk '/^corechat_deliveries_total/ {s += $2} END {printf "%d", s}')
    sum=$((sum + v))
  done
  echo "$sum"
}
redis_cpu() { rcli info cpu | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.3f", s}'; }
numbered() { # messages numbered so far, all rooms
  local keys
  keys=$(rcli --scan --pattern 'cc:*:seq' | tr '\n' ' ')
  [ -z "$keys" ] && { echo 0; return; }
  # shellcheck disable=SC2086
  rcli mget $keys | awk '{s += $1} END {printf "%d", s}'
}

# loadgen NAME NODE ARGS...: runs in the background, output in $OUT_DIR/NAME.txt
loadgen_bg() {
  local name=$1 k=$2; shift 2
  "$LOADGEN_BIN" "$@" --url "ws://127.0.0.1:$((BASE_PORT + k - 1))/ws" --jwt-secret "$SECRET" \
    --no-progress --out "$OUT_DIR/$name" >"$OUT_DIR/$name.txt" 2>&1 &
  LG_PID=$!
}
wait_connected() { # wait until loadgen output $1 says it connected
  for _ in $(seq 1200); do grep -q '^connected' "$OUT_DIR/$1.txt" 2>/dev/null && return; sleep 0.1; done
  echo "$1 never connected" >&2; cat "$OUT_DIR/$1.txt" >&2; exit 1
}

# window NODES SECONDS: samples counters around a measurement window.
window() {
  local n=$1 secs=$2 d0 d1 c0 c1 m0 m1 t0 t1
  d0=$(deliveries "$n"); c0=$(redis_cpu 2>/dev/null || echo 0); m0=$(numbered 2>/dev/null || echo 0)
  t0=$(date +%s.%N)
  sleep "$secs"
  d1=$(deliveries "$n"); c1=$(redis_cpu 2>/dev/null || echo 0); m1=$(numbered 2>/dev/null || echo 0)
  t1=$(date +%s.%N)
  awk -v d="$((d1 - d0))" -v c="$(echo "$c1 - $c0" | bc)" -v m="$((m1 - m0))" -v t="$(echo "$t1 - $t0" | bc)" \
    'BEGIN { printf "deliveries/s %.0f", d / t;
             if (m > 0) printf "  published/s %.0f  redis CPU per publish %.1f us", m / t, c * 1e6 / m;
             printf "\n" }'
}

figures() { grep -E '^(bigroom|acks|loss|connected)' "$OUT_DIR/$1.txt" | sed "s/^/  $1: /"; }

big() {
  echo "== big: 30,000 members over 2 nodes, $RATE_BIG msg/s"
  start_redis; start_node 1; start_node 2
  # Both load generators start together; their windows line up within
  # their connect times' difference.
  loadgen_bg big-node1 1 bigroom --conns 15000 --rate "$RATE_BIG" --warmup 3 --duration "$DURATION" \
    --connect-timeout 60
  local publisher=$LG_PID
  loadgen_bg big-node2 2 bigroom --conns 15000 --rate 0 --warmup 3 --duration "$DURATION" \
    --connect-timeout 60
  local listener=$LG_PID
  wait_connected big-node1; wait_connected big-node2
  sleep 3
  window 2 "$DURATION" | sed 's/^/  both nodes: /'
  wait "$publisher" || true; wait "$listener" || true
  figures big-node1; figures big-node2
  stop_all
}

spread() {
  echo "== spread: 1,000 members, $RATE_SPREAD msg/s"
  start_node 1 0
  loadgen_bg spread-standalone 1 bigroom --conns 1000 --rate "$RATE_SPREAD" --warmup 3 --duration "$DURATION"
  wait_connected spread-standalone; sleep 3
  window 1 "$DURATION" | sed 's/^/  1 node, no Redis: /'
  wait "$LG_PID" || true; figures spread-standalone; stop_all

  start_redis; start_node 1
  loadgen_bg spread-1node 1 bigroom --conns 1000 --rate "$RATE_SPREAD" --warmup 3 --duration "$DURATION"
  wait_connected spread-1node; sleep 3
  window 1 "$DURATION" | sed 's/^/  1 cluster node: /'
  wait "$LG_PID" || true; figures spread-1node; stop_all

  start_redis; start_node 1; start_node 2
  loadgen_bg spread-2nodes-a 1 bigroom --conns 500 --rate "$RATE_SPREAD" --warmup 3 --duration "$DURATION"
  local publisher=$LG_PID
  loadgen_bg spread-2nodes-b 2 bigroom --conns 500 --rate 0 --warmup 3 --duration "$DURATION"
  local listener=$LG_PID
  wait_connected spread-2nodes-a; wait_connected spread-2nodes-b; sleep 3
  window 2 "$DURATION" | sed 's/^/  2 cluster nodes: /'
  wait "$publisher" || true; wait "$listener" || true
  figures spread-2nodes-a; figures spread-2nodes-b; stop_all
}

redis_rate() {
  echo "== redis: publishes/s through one Redis (acks, $ACK_CONNS conns x $ACK_WINDOW in flight, 100 rooms)"
  start_redis; start_node 1
  loadgen_bg acks-1node 1 acks --conns "$ACK_CONNS" --rooms 100 --window "$ACK_WINDOW" --warmup 3 --duration "$DURATION"
  wait_connected acks-1node; sleep 3
  window 1 "$DURATION" | sed 's/^/  1 node: /'
  wait "$LG_PID" || true; figures acks-1node; stop_all

  start_redis; start_node 1; start_node 2
  loadgen_bg acks-2nodes-a 1 acks --conns $((ACK_CONNS / 2)) --rooms 100 --window "$ACK_WINDOW" --warmup 3 --duration "$DURATION"
  local a=$LG_PID
  loadgen_bg acks-2nodes-b 2 acks --conns $((ACK_CONNS / 2)) --rooms 100 --window "$ACK_WINDOW" --warmup 3 --duration "$DURATION"
  local b=$LG_PID
  wait_connected acks-2nodes-a; wait_connected acks-2nodes-b; sleep 3
  window 2 "$DURATION" | sed 's/^/  2 nodes: /'
  wait "$a" || true; wait "$b" || true
  figures acks-2nodes-a; figures acks-2nodes-b; stop_all
}

for s in "${SCENARIOS[@]}"; do
  case $s in
    big) big ;;
    spread) spread ;;
    redis) redis_rate ;;
    *) echo "unknown scenario $s (big, spread, redis)" >&2; exit 2 ;;
  esac
done
echo "results in $OUT_DIR"
