#!/usr/bin/env bash
# README's first steps, run on a fresh clone of the committed tree (what a
# new user gets: uncommitted files are not in it):
#   1. scripts/check-docs.sh in the clone (every link resolves inside it);
#   2. `cargo build --release`, then `cargo run --release` (README's
#      "Two commands"), in the clone's directory, data in the clone's ./data;
#   3. GET /health; a guest login (POST /api/guest) for two users; a chat
#      round trip between them through the clone's own web/corechat.js
#      (one publishes, the other receives the same seq);
#   4. README's admin token command (`corechat token --jwt-secret "$(cat
#      data/jwt-secret)" ... --admin`) and GET /api/admin/stats with it.
#
# Cost: the build shares this checkout's CARGO_TARGET_DIR (default
# ./target), so only the workspace's own crates are compiled again (the
# clone is another path); dependencies are reused. FRESH_CLONE_PROFILE=dev
# builds and runs without --release (what scripts/test.sh uses: it has just
# built the dev profile). The server listens on a free port
# (CORECHAT_LISTEN=127.0.0.1:0) instead of 8080, which may be taken; it is
# otherwise started exactly as README says. Needs git, curl and node 20+.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '==> %s\n' "$*" >&2; }
fail() {
  printf 'fresh-clone-check: FAILED: %s\n' "$*" >&2
  [ -f "${out:-/nonexistent}" ] && tail -20 "$out" >&2
  exit 1
}

profile=${FRESH_CLONE_PROFILE:-release}
case "$profile" in
  release) flag=(--release) ;;
  dev) flag=() ;;
  *) fail "FRESH_CLONE_PROFILE must be release or dev, not $profile" ;;
esac
bin_dir=$([ "$profile" = release ] && echo release || echo debug)
target_dir=${CARGO_TARGET_DIR:-$root/target}
case "$target_dir" in /*) ;; *) target_dir=$root/$target_dir ;; esac

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

log "git clone (committed files only) into $work"
git clone -q "$root" "$work/corechat"
cd "$work/corechat"

log "scripts/check-docs.sh in the clone"
scripts/check-docs.sh >/dev/null || fail "check-docs failed in the clone"

log "cargo build ${flag[*]} (shared target dir $target_dir)"
CARGO_TARGET_DIR=$target_dir cargo build --quiet "${flag[@]}"
bin=$target_dir/$bin_dir/corechat

log "cargo run ${flag[*]} (README's first command)"
out=$work/server.out
# `cargo run` execs the server: $! is the server's own pid.
( CARGO_TARGET_DIR=$target_dir CORECHAT_LISTEN=127.0.0.1:0 exec cargo run --quiet "${flag[@]}" ) >"$out" 2>&1 &
server_pid=$!
addr=
for _ in $(seq 300); do
  addr=$(grep -o 'listening on 127\.0\.0\.1:[0-9]*' "$out" | head -1 | sed 's/^listening on //' || true)
  [ -n "$addr" ] && break
  kill -0 "$server_pid" 2>/dev/null || fail "the server exited at start"
  sleep 0.1
done
[ -n "$addr" ] || fail "the server printed no address"
grep -q "development mode" "$out" || fail "no development-mode notice in the log"
base=http://$addr

log "GET /health"
health=$(curl -fsS "$base/health") || fail "/health did not answer 200"
case "$health" in *'"status":"ok"'*) ;; *) fail "/health said $health" ;; esac
[ -s data/jwt-secret ] || fail "the development secret is not in ./data/jwt-secret"

log "guest logins and a chat round trip through web/corechat.js"
guest() { curl -fsS -H 'content-type: application/json' -d "{\"name\":\"$1\"}" "$base/api/guest"; }
token_a=$(guest "Fresh Ada" | sed -E 's/.*"token":"([^"]+)".*/\1/') || fail "guest login refused"
token_b=$(guest "Fresh Bob" | sed -E 's/.*"token":"([^"]+)".*/\1/') || fail "guest login refused"
ws_flag=()
# node 20 has WebSocket behind a flag; node 22+ has it by default
[ "$(node -p 'typeof WebSocket')" = function ] || ws_flag=(--experimental-websocket)
node "${ws_flag[@]}" --no-warnings --input-type=module - "$addr" "$token_a" "$token_b" <<'EOF' || fail "chat round trip"
import { pathToFileURL } from "node:url";
const [addr, tokenA, tokenB] = process.argv.slice(2);
const { CoreChat } = await import(pathToFileURL(`${process.cwd()}/web/corechat.js`).href);
const url = `ws://${addr}/ws`;
const a = new CoreChat({ url, token: tokenA });
const b = new CoreChat({ url, token: tokenB });
const timer = setTimeout(() => {
  console.error("no round trip within 20 s");
  process.exit(1);
}, 20000);
await a.join("fresh-clone");
await b.join("fresh-clone");
const text = `hello ${Date.now()}`;
const got = new Promise((resolve) => b.on("message", (m) => m.body && m.body.text === text && resolve(m)));
const ack = await a.publish("fresh-clone", { text });
const msg = await got;
if (msg.seq !== ack.seq || msg.from !== a.user) {
  console.error(`mismatch: ack ${JSON.stringify(ack)}, message ${JSON.stringify(msg)}`);
  process.exit(1);
}
console.error(`round trip: seq ${msg.seq} from ${msg.from}`);
clearTimeout(timer);
a.close();
b.close();
EOF

log "README's admin token command, then GET /api/admin/stats"
admin=$("$bin" token --jwt-secret "$(cat data/jwt-secret)" --user ops --admin) || fail "corechat token --admin"
stats=$(curl -fsS -H "Authorization: Bearer $admin" "$base/api/admin/stats") || fail "/api/admin/stats refused the admin token"
case "$stats" in *'"store":{'*'"ready":true'*) ;; *) fail "stats: $stats" ;; esac
case "$stats" in *'"room":"fresh-clone"'*) ;; *) fail "stats do not list the room: $stats" ;; esac

echo "fresh-clone-check: a fresh clone builds, serves, logs guests in, chats and answers the admin API ($profile profile)"
