#!/usr/bin/env bash
# permessage-deflate on vs off, with the same client: the load generator always offers it
# (--deflate); the server runs with --compression=off (offer declined) or on (default).
# Rounds alternate off/on (ABAB) and each figure is reported per round, then as the median.
#
#   S1 saturation: `loadgen ramp` (1 room, CONNS members, BODY-byte bodies), the highest
#                  step with loss < 0.1% and p99 < 100 ms, in deliveries/s
#   bytes/delivery: server bytes written (corechat_bytes_out_total) over its deliveries
#                  (corechat_deliveries_total), from /metrics, over 5 s in the middle of a
#                  `loadgen fanout` at RATE msg/s (well under saturation: every frame is written;
#                  the joins' and the departures' presence frames fall outside)
#   server CPU:    the server's CPU % during that fanout (as the load generator reports it)
#   idle KiB/conn: `loadgen idle` (IDLE_CONNS connections, joined, then held): server RSS
#                  growth per connection
#
# Server pinned to CPU 1 with --shards 1, load generator to CPU 0 (as scripts/bench.sh pass 1).
# Environment: ROUNDS=2 CONNS=1000 BODY=512 RATE=20 RATES=50,100,200,400,800,1600,3200 STEP_SECS=3
#              IDLE_CONNS=5000 PORT=8090 OUT_DIR=bench-results/compression NO_BUILD=1
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-1000}
BODY=${BODY:-512}
RATE=${RATE:-20}
RATES=${RATES:-50,100,200,400,800,1600,3200}
STEP_SECS=${STEP_SECS:-3}
IDLE_CONNS=${IDLE_CONNS:-5000}
PORT=${PORT:-8090}
SECRET=corechat-bench-secret
SOURCE_IPS=${SOURCE_IPS:-127.0.0.2-127.0.0.250}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER_BIN=$TARGET_DIR/release/corechat
LG=$TARGET_DIR/release/loadgen
OUT=${OUT_DIR:-$ROOT/bench-results/compression}
mkdir -p "$OUT"
if [ "${NO_BUILD:-0}" != 1 ]; then cargo build --release -p corechat -p loadgen >&2; fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}
trap stop_server EXIT INT TERM

start_server() { # MODE(on|off) LOG
  local data
  data=$(mktemp -d /tmp/corechat-bench-data.XXXXXX)
  taskset -c 1 "$SERVER_BIN" serve --listen "127.0.0.1:$PORT" --shards 1 --store memory \
    --data-dir "$data" --jwt-secret "$SECRET" --rate-per-sec 1000000 --burst 1000000 \
    --compression="$1" >"$2" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server did not start: $2" >&2
  exit 1
}

metric() { # NAME: summed over shards
  curl -s "http://127.0.0.1:$PORT/metrics" | awk -v n="$1" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%d", s}'
}
snapshot() { curl -s "http://127.0.0.1:$PORT/metrics"; }
pick() { # TEXT NAME: one metric of a snapshot, summed over shards
  awk -v n="$2" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%d", s}' <<<"$1"
}

lg() { # SUBCOMMAND DIR ARGS...
  local cmd=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  taskset -c 0 "$LG" "$cmd" --url "ws://127.0.0.1:$PORT/ws" --target corechat --jwt-secret "$SECRET" \
    --source-ips "$SOURCE_IPS" --server-pid "$SERVER_PID" --deflate --no-progress --out "$dir" "$@" \
    >"$dir/loadgen.txt" 2>"$dir/loadgen.stderr" || echo "!! $cmd failed, see $dir" >&2
}

median() { sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

: >"$OUT/rounds.tsv"
for round in $(seq "$ROUNDS"); do
  for mode in off on; do
    dir=$OUT/r$round-$mode
    start_server "$mode" "$dir.fanout.server.log"
    lg fanout "$dir/fanout" --conns "$CONNS" --rooms 1 --body "$BODY" --rate "$RATE" \
      --duration 8 --warmup 3 &
    lg_pid=$!
    # Start counting once every connection has joined (publishing starts then) and the
    # joins' presence frames are out.
    for _ in $(seq 600); do
      [ "$(metric corechat_publishes_total)" -gt 0 ] && break
      sleep 0.1
    done
    sleep 2.5
    s0=$(snapshot)
    b0=$(pick "$s0" corechat_bytes_out_total)
    d0=$(pick "$s0" corechat_deliveries_total)
    # Read the end point while the fanout still publishes (it does for warm-up + duration,
    # 11 s): once the load generator leaves, every departure queues `user_left` to each
    # remaining member, which counts as a delivery but is never written (the member is
    # leaving too), and a read taken after that divided the bytes by twice the deliveries.
    sleep 5
    s1=$(snapshot)
    b1=$(pick "$s1" corechat_bytes_out_total)
    d1=$(pick "$s1" corechat_deliveries_total)
    # If members had started leaving by then (a slow host stretches /metrics reads and
    # bunches publishes), the window holds departures and is no measure.
    open1=$(pick "$s1" corechat_connections_open)
    wait "$lg_pid" || true
    zipped=$(metric corechat_frames_compressed_total)
    stop_server
    bpd=$(awk -v b=$((b1 - b0)) -v d=$((d1 - d0)) 'BEGIN {printf "%.1f", d ? b / d : 0}')
    if [ "$open1" -lt "$CONNS" ]; then
      echo "   $mode round $round: the fanout ended inside the bytes window ($open1 of $CONNS connections open): bytes/delivery not measured" >&2
      bpd=nan
    fi
    cpu=$(python3 -c '
import json, sys
def find(v):
    if isinstance(v, dict):
        if v.get("server_cpu_pct") is not None:
            return v["server_cpu_pct"]
        for x in v.values():
            r = find(x)
            if r is not None:
                return r
    return None
print(find(json.load(open(sys.argv[1]))["figures"]))' "$dir/fanout/summary.json" 2>/dev/null || echo nan)

    start_server "$mode" "$dir.ramp.server.log"
    lg ramp "$dir/ramp" --conns "$CONNS" --rooms 1 --body "$BODY" --rates "$RATES" \
      --step-secs "$STEP_SECS" --warmup 1
    stop_server
    sat=$(grep 'saturation' "$dir/ramp/loadgen.txt" | tail -1 || true)
    sat_dps=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['figures']['saturation_deliveries_per_sec'] or 0)" "$dir/ramp/summary.json" 2>/dev/null || echo 0)

    start_server "$mode" "$dir.idle.server.log"
    lg idle "$dir/idle" --conns "$IDLE_CONNS" --rooms 100 --hold 2
    stop_server
    kib=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['figures']['kib_per_conn'])" "$dir/idle/summary.json" 2>/dev/null || echo nan)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$mode" "$sat_dps" "$bpd" "$kib" "$cpu" "$zipped" | tee -a "$OUT/rounds.tsv"
    echo "   $mode round $round: $sat" >&2
  done
done

echo
echo "rounds (round, compression, S1 saturation deliveries/s, bytes/delivery, idle KiB/conn, server CPU % at $RATE msg/s, compressions): $OUT/rounds.tsv"
echo "compression  S1-saturation(deliveries/s)  bytes/delivery  idle-KiB/conn  server-CPU%@${RATE}msg/s  (medians of $ROUNDS rounds)"
for mode in off on; do
  s=$(awk -v m=$mode '$2 == m {print $3}' "$OUT/rounds.tsv" | median)
  b=$(awk -v m=$mode '$2 == m {print $4}' "$OUT/rounds.tsv" | median)
  k=$(awk -v m=$mode '$2 == m {print $5}' "$OUT/rounds.tsv" | median)
  c=$(awk -v m=$mode '$2 == m {print $6}' "$OUT/rounds.tsv" | median)
  printf '%-12s %28s %15s %14s %22s\n' "$mode" "$s" "$b" "$k" "$c"
done | tee "$OUT/summary.txt"
