#!/usr/bin/env bash
# The one test command: installs what the tests need when it is missing, then
# runs formatting and lint checks, every Rust test, the Autobahn conformance
# cases against `corechat echo`, and the web client's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '\n== %s\n' "$*"; }

log "documentation links (scripts/check-docs.sh)"
scripts/check-docs.sh

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

log "installing test dependencies (only what is missing)"
command -v redis-server >/dev/null || apt_install redis-server
if [ ! -x .venv/bin/kosoku ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q kosoku
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo test"
# loadgen's end-to-end tests drive the real server: hand them the binary the
# workspace build makes, so they do not run a nested cargo build themselves.
cargo build --bin corechat
export CORECHAT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/corechat"
cargo test --workspace

log "Autobahn (kosoku) against corechat echo, sections 1-10"
cargo build --bin corechat
out=$(mktemp -d)
target/debug/corechat echo --listen 127.0.0.1:0 --shards 2 --no-pin > "$out/echo.out" 2>&1 &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  addr=$(grep -o '127\.0\.0\.1:[0-9]*' "$out/echo.out" | head -1 || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "echo server did not start"; cat "$out/echo.out"; exit 1; }
.venv/bin/kosoku -m fuzzingclient "$addr" -x '12.*' -x '13.*' -p 4 -o "$out/autobahn" | tail -3
kill "$echo_pid" 2>/dev/null || true
trap - EXIT

if [ -x scripts/test-web.sh ]; then
  log "web client tests (Node + headless Chromium)"
  scripts/test-web.sh
fi

log "all tests passed"
