#!/usr/bin/env bash
# Tests of the web client and its JavaScript library (tests/web):
#   unit.test.mjs    the library against a scripted fake server
#   server.test.mjs  the library against the real server (resume, epochs, queue)
#   e2e.test.mjs     the page in Chromium (playwright-core) against the real server
#   tls.test.mjs     the page over https:// (--tls-cert) in Chromium: it picks wss:// and chats
#   deflate.test.mjs Chromium's permessage-deflate against the server's client_no_context_takeover
# Installs what is missing: Debian's chromium, and the npm packages (npm ci).
# CORECHAT_BIN overrides the server binary (default: target/debug/corechat,
# built here with cargo build). WEB_TESTS="unit server" runs a subset (not
# under CI=true, which always runs them all).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"

log() { printf '==> %s\n' "$*" >&2; }

if ! command -v node >/dev/null 2>&1; then
  log "node is missing: installing nodejs and npm"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "node $node_major is too old: the web tests need node 20 or later" >&2
  exit 1
fi

if [ ! -x /usr/bin/chromium ]; then
  log "installing chromium (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [ -z "${CORECHAT_BIN:-}" ]; then
  log "cargo build"
  cargo build --quiet --bin corechat
  target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
  case "$target_dir" in /*) ;; *) target_dir=$ROOT/$target_dir ;; esac
  export CORECHAT_BIN="$target_dir/debug/corechat"
fi

cd tests/web
# npm ci when node_modules is missing or older than the lock file
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

mkdir -p "$ROOT/target/e2e"
files=()
[ "${CI:-}" = true ] && unset WEB_TESTS
for t in ${WEB_TESTS:-unit server e2e tls deflate}; do files+=("$t.test.mjs"); done

log "node --test ${files[*]}"
# one file at a time: the machine is small and the e2e test starts a browser
exec node --test --test-concurrency=1 --test-timeout=300000 "${files[@]}"
