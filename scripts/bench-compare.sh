#!/usr/bin/env bash
# Build-against-build gate: benchmark a git ref (the base) against the working tree (new),
# alternating the two (base new, new base, ...) so drift on the host hits both sides alike, and print per
# scenario a table of medians (p50/p99/p99.9, saturation, handshakes/s, server CPU...) with
# the new/base ratio, the noise band and a verdict, plus an SVG overlay of the latency curves.
#
# Usage: scripts/bench-compare.sh BASE_REF [SCENARIO...]     (default scenarios: ramp s2)
#   SCENARIO: s1 ramp s2 s3 s4 s5 s6 (as scripts/bench.sh)
#
# The base is built from a temporary `git worktree` with its own CARGO_TARGET_DIR (kept in
# $COMPARE_CACHE, so a second comparison against the same commit does not rebuild); both
# servers are driven by the working tree's loadgen, so only the server differs.
#
# Environment:
#   ROUNDS=3           runs per side (alternating: base new, new base, base new, ...)
#   QUICK=1            short durations (the default here; QUICK=0 for the full ones)
#   OUT=...            results (default bench-results/compare-<base>-<new>-<date>/)
#   COMPARE_CACHE=...  base worktrees and builds (default $TMPDIR/corechat-bench-compare)
#   NO_BUILD=1         reuse the working tree's target/release binaries as they are
#   BASE_BIN=...       an already built server to use as the base (BASE_REF then only labels it;
#                      for A/B of a build option, e.g. the same commit with another allocator)
#   CORECHAT_EXTRA, LOADGEN_EXTRA, PORT, SOURCE_IPS: passed to scripts/bench.sh
#
# Verdict: a figure is "better"/"worse" when the two medians differ by more than the noise
# band, the larger relative spread ((max - min) / median) of either side's runs, at least 3%,
# and no run of one side overlaps the range of the other; otherwise "same (within noise)".
# Rounds alternate the order (base new, new base, ...). See docs/BENCH.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then sed -n '2,27p' "$0"; exit 2; fi
BASE_REF=$1; shift
if [ $# -gt 0 ]; then SCENARIOS=("$@"); else SCENARIOS=(ramp s2); fi
ROUNDS=${ROUNDS:-3}
export QUICK=${QUICK:-1}

BASE_SHA=$(git rev-parse --verify "$BASE_REF^{commit}")
BASE_SHORT=${BASE_SHA:0:12}
NEW_SHORT=$(git rev-parse --short=12 HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then NEW_SHORT="$NEW_SHORT-dirty"; fi
OUT=${OUT:-$ROOT/bench-results/compare-$BASE_SHORT-$NEW_SHORT-$(date +%Y%m%d-%H%M%S)}
CACHE=${COMPARE_CACHE:-${TMPDIR:-/tmp}/corechat-bench-compare}
BASE_TREE=$CACHE/$BASE_SHORT
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
mkdir -p "$OUT" "$CACHE"

# --- build both sides
if [ -n "${BASE_BIN:-}" ]; then
  echo "== base server: $BASE_BIN (labelled $BASE_REF)" >&2
else
  if [ ! -d "$BASE_TREE" ]; then
    echo "== git worktree for $BASE_REF ($BASE_SHORT) in $BASE_TREE" >&2
    git worktree add --detach "$BASE_TREE" "$BASE_SHA" >&2
  fi
  echo "== building the base server ($BASE_SHORT)" >&2
  (cd "$BASE_TREE" && CARGO_TARGET_DIR="$BASE_TREE/target" cargo build --release -p corechat >&2)
  BASE_BIN=$BASE_TREE/target/release/corechat
fi
if [ "${NO_BUILD:-0}" != 1 ]; then
  echo "== building the working tree (corechat, loadgen)" >&2
  cargo build --release -p corechat -p loadgen >&2
fi
NEW_BIN=$TARGET_DIR/release/corechat
LG=$TARGET_DIR/release/loadgen
for b in "$BASE_BIN" "$NEW_BIN" "$LG"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }; done

# --- alternate (ABBA...)
for r in $(seq "$ROUNDS"); do
  # counterbalanced (ABBA...): neither side always runs first in a round
  if [ $((r % 2)) = 1 ]; then order="base new"; else order="new base"; fi
  for side in $order; do
    if [ "$side" = base ]; then bin=$BASE_BIN; else bin=$NEW_BIN; fi
    echo "== round $r/$ROUNDS: $side ($bin)" >&2
    SERVER_BIN=$bin LOADGEN_BIN=$LG NO_BUILD=1 SHARDS2=0 COMPARE_PREVIOUS=0 \
      OUT_DIR="$OUT/$side/r$r" scripts/bench.sh "${SCENARIOS[@]}" >"$OUT/$side-r$r.log" 2>&1 \
      || echo "!! round $r $side failed, see $OUT/$side-r$r.log" >&2
  done
done

# --- tables and overlays, computed by loadgen
{
  echo "# $BASE_REF ($BASE_SHORT) vs working tree ($NEW_SHORT), $ROUNDS rounds alternating (base new, new base, ...), QUICK=$QUICK"
  echo
  echo "Host: $(nproc) CPUs, server on CPU 1, loadgen on CPU 0; $(date -u +%Y-%m-%dT%H:%MZ)."
  echo
  for s in "${SCENARIOS[@]}"; do
    case "$s" in s1) dir=s1-fanout ;; ramp) dir=s1-ramp ;; s2) dir=s2-rooms ;; s3) dir=s3-idle ;;
      s4) dir=s4-bigroom ;; s5) dir=s5-connect ;; s6) dir=s6-rtt ;; esac
    base_runs=(); new_runs=()
    for r in $(seq "$ROUNDS"); do
      [ -f "$OUT/base/r$r/$dir/summary.json" ] && base_runs+=("$OUT/base/r$r/$dir")
      [ -f "$OUT/new/r$r/$dir/summary.json" ] && new_runs+=("$OUT/new/r$r/$dir")
    done
    if [ ${#base_runs[@]} -eq 0 ] || [ ${#new_runs[@]} -eq 0 ]; then
      echo "### $dir: no complete runs"; echo; continue
    fi
    "$LG" compare --base "${base_runs[@]}" --new "${new_runs[@]}" --svg "$OUT/$dir.svg" \
      | sed "s:$OUT/::"
    echo
  done
} | tee "$OUT/compare.md"
echo "results: $OUT (compare.md, *.svg)" >&2
