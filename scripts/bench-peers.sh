#!/usr/bin/env bash
# Run the BENCHMARKS.md scenarios against the peer servers (bench/peers) and corechat in
# one run, and write a side-by-side markdown table to bench-results/peers-<date>.md.
#
# Usage: scripts/bench-peers.sh [SCENARIO...]   SCENARIO: s1 ramp s2 s3 s4 s5 s6 (default: all)
#
# Every server is pinned to CPU 1 and the load generator to CPU 0; each server is started
# fresh for each scenario. The peers are copied to a work directory and set up as their
# README says (npm ci; uws: ./fix-glibc.sh; rust-axum: cargo build --release).
#
# Environment:
#   PEERS="corechat node-ws uws rust-axum rust-axum-smallbuf socketio"   servers to run
#   PEERS_SRC=bench/peers         where the peers' sources are (read-only is fine)
#   PEERS_WORK=/tmp/corechat-peers   work copy (reused if already set up; REFRESH=1 recopies)
#   QUICK=1                       short durations
#   SOURCE_IPS=127.0.0.2-127.0.0.250  loopback source addresses for the load generator
#   CORECHAT_EXTRA=... LOADGEN_EXTRA=...  extra flags; NO_BUILD=1 skips cargo build
#   SERVER_BIN=... LOADGEN_BIN=...   binaries (default: target/release/{corechat,loadgen})
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PEERS=${PEERS:-corechat node-ws uws rust-axum rust-axum-smallbuf socketio}
PEERS_SRC=${PEERS_SRC:-$ROOT/bench/peers}
WORK=${PEERS_WORK:-/tmp/corechat-peers}
QUICK=${QUICK:-0}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.250}
SECRET=${BENCH_JWT_SECRET:-corechat-bench-secret}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER_BIN=${SERVER_BIN:-$TARGET_DIR/release/corechat}
LG=${LOADGEN_BIN:-$TARGET_DIR/release/loadgen}

ALL=(s1 ramp s2 s3 s4 s5 s6)
if [ $# -gt 0 ]; then SCENARIOS=("$@"); else SCENARIOS=("${ALL[@]}"); fi
for s in "${SCENARIOS[@]}"; do
  case "$s" in s1|ramp|s2|s3|s4|s5|s6) ;; -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown scenario '$s' (want: ${ALL[*]})" >&2; exit 2 ;; esac
done

if [ "${NO_BUILD:-0}" != 1 ]; then
  echo "== building (release): corechat and loadgen" >&2
  cargo build --release -p corechat -p loadgen >&2
fi
[ -x "$LG" ] || { echo "missing $LG" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- peer setup
setup_peers() {
  if [ "${REFRESH:-0}" = 1 ] || [ ! -f "$WORK/.setup-done" ]; then
    [ -d "$PEERS_SRC" ] || { echo "peers not found at $PEERS_SRC (set PEERS_SRC)" >&2; exit 1; }
    rm -rf "$WORK"
    mkdir -p "$WORK"
    cp -r "$PEERS_SRC"/. "$WORK"/
    chmod -R u+w "$WORK"
    for p in $PEERS; do
      case "$p" in
        node-ws|socketio) (cd "$WORK/$p" && npm ci --no-audit --no-fund >&2) ;;
        uws) (cd "$WORK/uws" && npm ci --no-audit --no-fund >&2 && ./fix-glibc.sh >&2) ;;
        rust-axum|rust-axum-smallbuf)
          [ -x "$WORK/rust-axum/target/release/rust-axum-chat" ] ||
            (cd "$WORK/rust-axum" && CARGO_TARGET_DIR="$WORK/rust-axum/target" cargo build --release >&2) ;;
      esac
    done
    touch "$WORK/.setup-done"
  fi
}
setup_peers

# ---------------------------------------------------------------- servers
SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}
trap stop_server EXIT INT TERM

port_of() {
  case "$1" in corechat) echo 9100 ;; node-ws) echo 9101 ;; uws) echo 9102 ;;
    rust-axum|rust-axum-smallbuf) echo 9103 ;; socketio) echo 9104 ;; esac
}
target_of() {
  case "$1" in rust-axum-smallbuf) echo rust-axum ;; *) echo "$1" ;; esac
}

# start_peer NAME LOG: starts it pinned to CPU 1, sets SERVER_PID and SERVER_DESC
start_peer() {
  local name=$1 log=$2 port data
  port=$(port_of "$name")
  case "$name" in
    corechat)
      data=$(mktemp -d /tmp/corechat-bench-data.XXXXXX)
      local args=(serve --listen "127.0.0.1:$port" --shards 1 --store memory --data-dir "$data"
        --jwt-secret "$SECRET" --rate-per-sec 1000000 --burst 1000000)
      # shellcheck disable=SC2206
      [ -n "${CORECHAT_EXTRA:-}" ] && args+=($CORECHAT_EXTRA)
      taskset -c 1 "$SERVER_BIN" "${args[@]}" >"$log" 2>&1 &
      SERVER_DESC="taskset -c 1 corechat ${args[*]}"
      SERVER_DESC=${SERVER_DESC//$SECRET/***} ;;
    node-ws|socketio)
      (cd "$WORK" && PORT=$port exec taskset -c 1 node "$name/server.js") >"$log" 2>&1 &
      SERVER_DESC="PORT=$port taskset -c 1 node $name/server.js" ;;
    uws)
      local pre=""
      [ -f "$WORK/uws/build/libisoc23.so" ] && pre="$WORK/uws/build/libisoc23.so"
      (cd "$WORK" && PORT=$port LD_PRELOAD=$pre exec taskset -c 1 node uws/server.js) >"$log" 2>&1 &
      SERVER_DESC="PORT=$port LD_PRELOAD=$pre taskset -c 1 node uws/server.js" ;;
    rust-axum)
      (cd "$WORK" && PORT=$port exec taskset -c 1 rust-axum/target/release/rust-axum-chat) >"$log" 2>&1 &
      SERVER_DESC="PORT=$port taskset -c 1 rust-axum-chat" ;;
    rust-axum-smallbuf)
      (cd "$WORK" && PORT=$port WS_READ_BUF=4096 WS_WRITE_BUF=4096 exec taskset -c 1 rust-axum/target/release/rust-axum-chat) >"$log" 2>&1 &
      SERVER_DESC="PORT=$port WS_READ_BUF=4096 WS_WRITE_BUF=4096 taskset -c 1 rust-axum-chat" ;;
    *) echo "unknown peer $name" >&2; exit 2 ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "$name did not start, see $log" >&2
  tail -20 "$log" >&2
  return 1
}

scn_cmd() {
  case "$1" in
    s1) echo "fanout s1-fanout" ;; ramp) echo "ramp s1-ramp" ;; s2) echo "rooms s2-rooms" ;;
    s3) echo "idle s3-idle" ;; s4) echo "bigroom s4-bigroom" ;; s5) echo "connect s5-connect" ;;
    s6) echo "rtt s6-rtt" ;;
  esac
}
scn_quick() {
  [ "$QUICK" = 1 ] || return 0
  case "$1" in
    s1|s2|s4) echo "--duration 5 --warmup 1" ;; ramp) echo "--step-secs 3 --warmup 1" ;;
    s3) echo "--hold 2" ;; s6) echo "--duration 3" ;;
  esac
}

# Seconds too: back-to-back rounds (a loop of three runs) must not overwrite each other.
STAMP=$(date +%Y-%m-%d-%H%M%S)
OUT=$ROOT/bench-results/peers-$STAMP
mkdir -p "$OUT"
RAN=()
for s in "${SCENARIOS[@]}"; do
  for p in $PEERS; do
    read -r cmd dirname <<<"$(scn_cmd "$s")"
    dir=$OUT/$p/$dirname
    mkdir -p "$dir"
    if ! start_peer "$p" "$dir/server.log"; then stop_server; continue; fi
    echo "== $s ($cmd) against $p -> $dir" >&2
    auth=()
    [ "$p" = corechat ] && auth=(--jwt-secret "$SECRET")
    # shellcheck disable=SC2046,SC2086
    taskset -c 0 "$LG" "$cmd" --url "ws://127.0.0.1:$(port_of "$p")/ws" --target "$(target_of "$p")" \
      "${auth[@]}" --source-ips "$SOURCE_IPS" --server-pid "$SERVER_PID" \
      --server-flags "$SERVER_DESC" --out "$dir" $(scn_quick "$s") ${LOADGEN_EXTRA:-} \
      2> >(tee "$dir/loadgen.stderr" >&2) | tee "$dir/loadgen.txt" || echo "!! $s against $p failed" >&2
    stop_server
    [ -f "$dir/summary.json" ] && RAN+=("$dir")
  done
done

MD=$ROOT/bench-results/peers-$STAMP.md
{
  echo "# corechat and peers, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo '-')"
  echo "- host: $(nproc --all) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r)"
  echo "- servers pinned to CPU 1 (\`taskset -c 1\`), load generator to CPU 0; fresh server per scenario"
  echo "- scenarios: ${SCENARIOS[*]}$( [ "$QUICK" = 1 ] && echo ' (QUICK=1: short durations)')"
  echo "- raw results: bench-results/peers-$STAMP/<server>/<scenario>/"
  echo "- load generator: \`scripts/bench-peers.sh ${*}\`; a row marked \"loadgen saturated\" is bounded by the load generator"
  echo
  "$LG" table --markdown "${RAN[@]}"
} >"$MD"
"$LG" table "${RAN[@]}"
echo "wrote $MD" >&2
