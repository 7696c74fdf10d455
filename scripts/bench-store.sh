#!/usr/bin/env bash
# The durable store's cost, end to end: publishes/s and publish->ack latency
# (`loadgen acks`) into 1 room and into 1,000 rooms, with --durability sync
# and relaxed. Server pinned to CPU 1 (--shards 1), load generator to CPU 0,
# a fresh SQLite data dir per run (on the disk that holds $TMPDIR, /tmp by
# default: put it on the disk you care about).
#
# Two runs per case: closed loop (every connection publishes again as soon as
# it has its ack: the most acks/s), then open loop at RATE publishes/s (the
# ack latency of a store that is not saturated). 1 room: 10 publishers with
# 16 publishes in flight each (members get every message, so few members keep
# this about the store, not fan-out); 1,000 rooms: 1,000 publishers, one room
# each, one publish in flight.
#
# Usage: scripts/bench-store.sh            (RUNS=3 DURATION=5 RATE=2000)
# Prints a Markdown table of medians; raw results in bench-results/store-<sha>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
RATE=${RATE:-2000}
PORT=${PORT:-9310}
SECRET=corechat-bench-secret
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "${NO_BUILD:-0}" != 1 ]; then cargo build --release -p corechat -p loadgen >&2; fi
SERVER=$TARGET_DIR/release/corechat
LG=$TARGET_DIR/release/loadgen
SHA=$(git rev-parse --short=12 HEAD 2>/dev/null || echo nogit)
OUT=$ROOT/bench-results/store-$SHA
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

run_one() { # rooms durability run mode(max|rate)
  local rooms=$1 dur=$2 run=$3 mode=$4 data dir srv conns window rate
  if [ "$rooms" = 1 ]; then conns=10 window=16; else conns=$rooms window=1; fi
  if [ "$mode" = max ]; then rate=0; else rate=$RATE; fi
  data=$(mktemp -d)
  dir=$OUT/r$rooms-$dur-$mode-$run
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  taskset -c 1 "$SERVER" serve --shards 1 --no-pin --listen 127.0.0.1:$PORT --jwt-secret $SECRET \
    --store sqlite --data-dir "$data" --durability "$dur" \
    --rate-per-sec 1000000 --burst 1000000 >"$OUT/server-r$rooms-$dur-$run.log" 2>&1 &
  srv=$!
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
  taskset -c 0 "$LG" acks --url ws://127.0.0.1:$PORT/ws --jwt-secret $SECRET \
    --source-ips 127.0.0.2-127.0.0.250 \
    --conns "$conns" --rooms "$rooms" --window "$window" --rate "$rate" --duration "$DURATION" --warmup 1 \
    --server-pid $srv --no-progress --out "$dir" >"$dir.txt" 2>&1 || true
  kill $srv 2>/dev/null || true
  wait $srv 2>/dev/null || true
  rm -rf "$data"
}

echo "| rooms | durability | max acks/s (closed loop) | server CPU | ack p50 ms at $RATE/s | ack p99 ms at $RATE/s | errors |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for rooms in 1 1000; do
  for dur in sync relaxed; do
    for run in $(seq "$RUNS"); do run_one $rooms $dur "$run" max; run_one $rooms $dur "$run" rate; done
    python3 - "$OUT" "$rooms" "$dur" "$RUNS" <<'EOF'
import json, os, statistics, sys
out, rooms, dur, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def load(mode):
    figs = []
    for r in range(1, runs + 1):
        try:
            p = os.path.join(out, f"r{rooms}-{dur}-{mode}-{r}", "summary.json")
            figs.append(json.load(open(p))["figures"])
        except (OSError, KeyError, ValueError):
            pass
    return figs
mx, rt = load("max"), load("rate")
if not mx or not rt:
    print(f"| {rooms} | {dur} | run failed, see {out} | | | | |")
    sys.exit(0)
med = lambda figs, f: statistics.median(f(x) for x in figs)
errs = sum(x["errors"] for x in mx + rt)
print(f"| {rooms} | {dur} | {med(mx, lambda x: x['acks_per_sec']):,.0f} | {med(mx, lambda x: x['server_cpu_pct']):.0f}% "
      f"| {med(rt, lambda x: x['ack_ms']['p50']):.2f} | {med(rt, lambda x: x['ack_ms']['p99']):.2f} | {errs} |")
EOF
  done
done
