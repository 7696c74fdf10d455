#!/usr/bin/env bash
# A local cluster: one private redis-server plus N corechat nodes on
# consecutive ports, all on loopback (section 8 of docs/PROTOCOL.md).
#
#   scripts/cluster.sh start [N] [BASE_PORT]   # default 3 nodes from 9001
#   scripts/cluster.sh status
#   scripts/cluster.sh stop                    # SIGTERM by PID, SIGKILL after 15 s
#
# Environment:
#   BIN           the corechat binary   (default target/release/corechat)
#   STATE         pid file, logs, data  (default /tmp/corechat-cluster)
#   REDIS_PORT    the private Redis     (default 6390)
#   REDIS_FSYNC   appendfsync policy    (default everysec; `always` = no acked loss)
#   SHARDS        --shards per node     (default: corechat's own default)
#   CORECHAT_JWT_SECRET  shared by every node (a token minted for one is
#                 good on all); a random one is made and saved if unset.
#
# Nodes get `--redis redis://127.0.0.1:$REDIS_PORT --node-id nodeK`. Put
# tuning/haproxy.cfg in front of them for one address without sticky
# sessions. Only the PIDs written in $STATE/pids are ever signalled.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/corechat}
STATE=${STATE:-/tmp/corechat-cluster}
REDIS_PORT=${REDIS_PORT:-6390}
REDIS_FSYNC=${REDIS_FSYNC:-everysec}
PIDS="$STATE/pids"

die() { echo "cluster.sh: $*" >&2; exit 1; }

start() {
    local n=${1:-3} base=${2:-9001}
    [[ -e $PIDS ]] && die "already running ($PIDS exists); stop it first"
    command -v redis-server >/dev/null || die "redis-server is not installed"
    [[ -x $BIN ]] || die "$BIN not found: cargo build --release (or set BIN)"
    mkdir -p "$STATE/redis"
    local secret=${CORECHAT_JWT_SECRET:-}
    if [[ -z $secret ]]; then
        [[ -s $STATE/secret ]] || head -c 32 /dev/urandom | base64 | tr -d '\n' > "$STATE/secret"
        secret=$(cat "$STATE/secret")
    fi
    : > "$PIDS"

    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
        --appendonly yes --appendfsync "$REDIS_FSYNC" --dir "$STATE/redis" \
        > "$STATE/redis.log" 2>&1 &
    echo "redis $!" >> "$PIDS"
    for _ in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
        sleep 0.1
    done
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG || { stop; die "redis did not start"; }

    local k port pid
    for k in $(seq 1 "$n"); do
        port=$((base + k - 1))
        mkdir -p "$STATE/node$k"
        CORECHAT_JWT_SECRET="$secret" "$BIN" serve \
            --listen "127.0.0.1:$port" \
            --redis "redis://127.0.0.1:$REDIS_PORT" \
            --node-id "node$k" \
            --data-dir "$STATE/node$k" \
            --jwt-secret "$secret" \
            ${SHARDS:+--shards "$SHARDS"} \
            > "$STATE/node$k.log" 2>&1 &
        echo "node$k $!" >> "$PIDS"
        echo "node$k: ws://127.0.0.1:$port/ws (pid $!, log $STATE/node$k.log)"
    done
    # Wait for /ready on each node (the broker connected).
    for k in $(seq 1 "$n"); do
        port=$((base + k - 1))
        pid=$(awk -v n="node$k" '$1 == n {print $2}' "$PIDS")
        for _ in $(seq 100); do
            curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 \
            || echo "warning: node$k not ready (see $STATE/node$k.log)" >&2
    done
    echo "redis: redis://127.0.0.1:$REDIS_PORT (data in $STATE/redis); pids in $PIDS"
}

stop() {
    [[ -e $PIDS ]] || { echo "not running"; return 0; }
    local name pid
    # Nodes first (a clean stop removes their presence), Redis last.
    tac "$PIDS" | while read -r name pid; do
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid"
        for _ in $(seq 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$name (pid $pid) did not stop; SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "stopped $name (pid $pid)"
    done
    rm -f "$PIDS"
}

status() {
    [[ -e $PIDS ]] || { echo "not running"; return 0; }
    local name pid
    while read -r name pid; do
        if kill -0 "$pid" 2>/dev/null; then echo "$name pid $pid: up"; else echo "$name pid $pid: gone"; fi
    done < "$PIDS"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    status) status ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
esac
