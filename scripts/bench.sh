#!/usr/bin/env bash
# Benchmark corechat with the bundled load generator (the scenarios of BENCHMARKS.md).
#
# Usage: scripts/bench.sh [SCENARIO...]      SCENARIO: s1 ramp s2 s3 s4 s5 s6 (default: all)
#
#   s1 = fanout (S1)      ramp = fanout stepping the rate (S1 saturation)
#   s2 = rooms (S2)       s3 = idle (S3)        s4 = bigroom (S4)
#   s5 = connect (S5)     s6 = rtt (S6)
#
# Each scenario gets a fresh server. Pass 1: server pinned to CPU 1 with --shards 1, load
# generator pinned to CPU 0 (one-core figures, comparable with the peers). Pass 2 (SHARDS2=1,
# the default): the server with --shards 2 and no taskset. Results go to
# bench-results/<git-sha>/<scenario>/ (pass 2: bench-results/<git-sha>/shards2/<scenario>/), with
# summary.json, *.hgrm, an interval log, the server log and the load generator's output; a
# summary table goes to bench-results/<git-sha>/summary.md, and each scenario is compared with
# the previous run directory if there is one.
#
# Environment:
#   QUICK=1            short durations (5 s measurements, 3 s ramp steps)
#   SHARDS2=0          skip the --shards 2 pass
#   PORT=8080          server port
#   SOURCE_IPS=...     loopback source addresses for the load generator
#                      (default 127.0.0.2-127.0.0.250: keeps every address under corechat's
#                      per-IP caps and the ephemeral port range out of the way)
#   TLS=1              serve https:// and wss:// (a throw-away self-signed certificate made with
#                      openssl) and have the load generator speak wss:// (--tls-ca)
#   CORECHAT_EXTRA=... extra server flags (appended)
#   LOADGEN_EXTRA=...  extra load generator flags (appended to every scenario)
#   NO_BUILD=1         do not run cargo build
#   COMPARE_PREVIOUS=0 do not compare with the previous run directory
#   OUT_DIR=...        where results go (default: bench-results/<git-sha>)
#   SERVER_BIN=... LOADGEN_BIN=...   binaries to use (default: target/release/{corechat,loadgen})
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PORT=${PORT:-8080}
QUICK=${QUICK:-0}
SHARDS2=${SHARDS2:-1}
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.250}
SECRET=${BENCH_JWT_SECRET:-corechat-bench-secret}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER_BIN=${SERVER_BIN:-$TARGET_DIR/release/corechat}
LG=${LOADGEN_BIN:-$TARGET_DIR/release/loadgen}

ALL=(s1 ramp s2 s3 s4 s5 s6)
if [ $# -gt 0 ]; then SCENARIOS=("$@"); else SCENARIOS=("${ALL[@]}"); fi
for s in "${SCENARIOS[@]}"; do
  case "$s" in s1|ramp|s2|s3|s4|s5|s6) ;; -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown scenario '$s' (want: ${ALL[*]})" >&2; exit 2 ;; esac
done

if [ "${NO_BUILD:-0}" != 1 ]; then
  echo "== building (release): corechat and loadgen" >&2
  cargo build --release -p corechat -p loadgen >&2
fi
[ -x "$SERVER_BIN" ] || { echo "missing $SERVER_BIN" >&2; exit 1; }
[ -x "$LG" ] || { echo "missing $LG" >&2; exit 1; }

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NCPU=$(nproc --all 2>/dev/null || nproc)
if [ "$NCPU" -lt 2 ]; then echo "warning: fewer than 2 CPUs: pinning is meaningless" >&2; fi

if SHA=$(git rev-parse --short=12 HEAD 2>/dev/null); then
  if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then SHA="$SHA-dirty"; fi
else
  SHA="nogit-$(date +%Y%m%d-%H%M%S)"
fi
TLS=${TLS:-0}
SCHEME=ws
TLS_SERVER=() TLS_LOADGEN=()
if [ "$TLS" = 1 ]; then
  command -v openssl >/dev/null || { echo "TLS=1 needs openssl to make a test certificate" >&2; exit 1; }
  TLS_DIR=$(mktemp -d /tmp/corechat-bench-tls.XXXXXX)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
    -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" 2>/dev/null
  SCHEME=wss
  TLS_SERVER=(--tls-cert "$TLS_DIR/cert.pem" --tls-key "$TLS_DIR/key.pem")
  TLS_LOADGEN=(--tls-ca "$TLS_DIR/cert.pem")
fi
RESULTS=$ROOT/bench-results
OUT=${OUT_DIR:-$RESULTS/$SHA}
mkdir -p "$OUT"
# the most recent earlier run (for `loadgen compare`)
# shellcheck disable=SC2012
PREV=$(ls -1dt "$RESULTS"/*/ 2>/dev/null | sed 's:/$::' | grep -v -x -F "$OUT" | grep -v '/peers-' | head -1 || true)

# scenario id -> "subcommand dir-name" and its duration flags
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

wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# start_server LOG PINNED(0|1) SHARDS
start_server() {
  local log=$1 pinned=$2 shards=$3 data
  data=$(mktemp -d /tmp/corechat-bench-data.XXXXXX)
  # single publishers send up to 12,800 msg/s in the ramp: lift the per-connection rate limit;
  # the per-IP caps stay at their defaults (the load generator spreads over SOURCE_IPS)
  SERVER_ARGS=(serve --listen "127.0.0.1:$PORT" --shards "$shards" --store memory --data-dir "$data"
    --jwt-secret "$SECRET" --rate-per-sec 1000000 --burst 1000000 "${TLS_SERVER[@]}")
  # shellcheck disable=SC2206
  [ -n "${CORECHAT_EXTRA:-}" ] && SERVER_ARGS+=($CORECHAT_EXTRA)
  if [ "$pinned" = 1 ]; then
    taskset -c 1 "$SERVER_BIN" "${SERVER_ARGS[@]}" >"$log" 2>&1 &
  else
    "$SERVER_BIN" "${SERVER_ARGS[@]}" >"$log" 2>&1 &
  fi
  SERVER_PID=$!
  if ! wait_port; then echo "server did not start, see $log" >&2; tail -20 "$log" >&2; exit 1; fi
  SERVER_DESC="corechat ${SERVER_ARGS[*]}"
  if [ "$pinned" = 1 ]; then SERVER_DESC="taskset -c 1 $SERVER_DESC"; fi
  SERVER_DESC=${SERVER_DESC//$SECRET/***}
}

# run_one PASS-DIR PINNED SHARDS SCENARIO
run_one() {
  local base=$1 pinned=$2 shards=$3 s=$4 cmd dir
  read -r cmd dir <<<"$(scn_cmd "$s")"
  dir=$base/$dir
  mkdir -p "$dir"
  start_server "$dir/server.log" "$pinned" "$shards"
  echo "== $s ($cmd) shards=$shards -> $dir" >&2
  # shellcheck disable=SC2046,SC2086
  taskset -c 0 "$LG" "$cmd" --url "$SCHEME://127.0.0.1:$PORT/ws" "${TLS_LOADGEN[@]}" --target corechat \
    --jwt-secret "$SECRET" --source-ips "$SOURCE_IPS" --server-pid "$SERVER_PID" \
    --server-flags "$SERVER_DESC" --out "$dir" $(scn_quick "$s") ${LOADGEN_EXTRA:-} \
    2> >(tee "$dir/loadgen.stderr" >&2) | tee "$dir/loadgen.txt" || echo "!! $s failed (see $dir)" >&2
  stop_server
  RAN+=("$dir")
}

RAN=()
for s in "${SCENARIOS[@]}"; do run_one "$OUT" 1 1 "$s"; done
if [ "$SHARDS2" = 1 ]; then
  for s in "${SCENARIOS[@]}"; do run_one "$OUT/shards2" 0 2 "$s"; done
fi

echo
"$LG" table "${RAN[@]}" | tee "$OUT/summary.txt"
"$LG" table --markdown "${RAN[@]}" >"$OUT/summary.md"
echo "results: $OUT (summary.md)"

if [ -n "$PREV" ] && [ "${COMPARE_PREVIOUS:-1}" = 1 ]; then
  echo
  echo "== compared with the previous run $PREV"
  for d in "${RAN[@]}"; do
    rel=${d#"$OUT"/}
    if [ -f "$PREV/$rel/summary.json" ]; then
      echo "---- $rel"
      "$LG" compare "$PREV/$rel" "$d" || true
    fi
  done | tee "$OUT/compare-previous.txt"
fi
