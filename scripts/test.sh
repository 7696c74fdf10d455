#!/usr/bin/env bash
# The one test command: installs what the tests need when it is missing, then
# runs formatting and lint checks, every Rust test, the Autobahn conformance
# cases against `corechat echo`, and the web client's tests (always; WEB_TESTS
# may narrow a developer's run, e.g. WEB_TESTS="unit", but not under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Each step says when it started (seconds into the run), so a slow CI run
# shows where its time went.
log() { printf '\n== %s (at %ds)\n' "$*" "$SECONDS"; }

# CI builds from scratch once: incremental compilation would only add work.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

log "documentation links (scripts/check-docs.sh)"
scripts/check-docs.sh

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

log "installing test dependencies (only what is missing)"
command -v redis-server >/dev/null || apt_install redis-server
# Pinned: the number of cases it runs (and so AUTOBAHN_CASES) is the version's.
KOSOKU_VERSION=0.1.0
AUTOBAHN_CASES=301
AUTOBAHN_DEFLATE_CASES=216
if [ ! -x .venv/bin/kosoku ] || ! .venv/bin/pip show kosoku 2>/dev/null | grep -qx "Version: $KOSOKU_VERSION"; then
  [ -x .venv/bin/pip ] || python3 -m venv .venv
  .venv/bin/pip install -q "kosoku==$KOSOKU_VERSION"
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo test"
# loadgen's end-to-end tests drive the real server: hand them the binary the
# workspace build makes, so they do not run a nested cargo build themselves.
cargo build --bin corechat
target_dir=${CARGO_TARGET_DIR:-$root/target}
case "$target_dir" in /*) ;; *) target_dir=$root/$target_dir ;; esac
export CORECHAT_BIN="$target_dir/debug/corechat"
cargo test --workspace

log "Autobahn (kosoku $KOSOKU_VERSION) against corechat echo, sections 1-10, 12 and 13"
out=$(mktemp -d)
# The same binary the other tests ran.
"$CORECHAT_BIN" echo --listen 127.0.0.1:0 --shards 2 --no-pin > "$out/echo.out" 2>&1 &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  addr=$(grep -o '127\.0\.0\.1:[0-9]*' "$out/echo.out" | head -1 || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { echo "echo server did not start"; cat "$out/echo.out"; exit 1; }
# Sections 12 and 13 (permessage-deflate) echo 1,000 messages of up to 128 KiB
# per case, under a per-case deadline: they run two at a time, so a busy
# machine does not push them past it.
autobahn() { # NAME EXPECTED PARALLELISM KOSOKU-ARGS...
  local name=$1 expected=$2 par=$3 status=0
  shift 3
  .venv/bin/kosoku -m fuzzingclient "$addr" "$@" -p "$par" -o "$out/$name" \
    >"$out/$name.out" 2>&1 || status=$?
  tail -3 "$out/$name.out"
  if [ "$status" != 0 ] || ! grep -qx "$expected cases passed" "$out/$name.out"; then
    echo "Autobahn $name: expected '$expected cases passed' (kosoku exit $status); full output: $out/$name.out" >&2
    kill "$echo_pid" 2>/dev/null || true
    exit 1
  fi
}
autobahn core "$AUTOBAHN_CASES" 4 -x '12.*' -x '13.*'
autobahn deflate "$AUTOBAHN_DEFLATE_CASES" 2 -i '12.*' -i '13.*'
kill "$echo_pid" 2>/dev/null || true
trap - EXIT

log "web client tests (Node + headless Chromium)"
if [ "${CI:-}" = true ]; then
  unset WEB_TESTS # CI runs every web test
fi
scripts/test-web.sh

log "README's commands on a fresh clone (scripts/fresh-clone-check.sh)"
# The dev profile and this target dir: only the workspace's crates are built
# again (the clone is another path). That build re-links target/debug/corechat
# from the clone, so build this tree's binary again afterwards (no compile).
FRESH_CLONE_PROFILE=dev scripts/fresh-clone-check.sh
cargo build --quiet --bin corechat

log "all tests passed"
