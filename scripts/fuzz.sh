#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (FUZZ_SECS, default
# 30 s each), starting from the committed seeds in fuzz/corpus/<target>/.
# New inputs libFuzzer finds go to a scratch corpus, not into the repository;
# a crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
#
#   scripts/fuzz.sh                    # all targets, 30 s each
#   FUZZ_SECS=300 scripts/fuzz.sh deflate http_request
#
# libFuzzer needs nightly compiler flags (-Zsanitizer); on a stable toolchain
# RUSTC_BOOTSTRAP=1 enables them. cargo-fuzz is installed on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

secs=${FUZZ_SECS:-30}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame_decoder deflate http_request client_request handshake)
fi

if ! command -v cargo-fuzz >/dev/null; then
  tools=${CARGO_FUZZ_ROOT:-$root/.tools}
  if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    echo "== installing cargo-fuzz into $tools"
    cargo install --quiet --locked cargo-fuzz --root "$tools"
  fi
  export PATH="$tools/bin:$PATH"
fi
export RUSTC_BOOTSTRAP=1

cd fuzz
echo "== building fuzz targets (release, sanitizer: address)"
cargo fuzz build -O

failed=()
for t in "${targets[@]}"; do
  scratch=$(mktemp -d)
  echo "== $t: ${secs}s from $(ls corpus/$t 2>/dev/null | wc -l) seeds"
  if ! cargo fuzz run -O "$t" "$scratch" "corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 \
      >"$scratch.log" 2>&1; then
    failed+=("$t")
    tail -40 "$scratch.log"
  else
    grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$scratch.log" | tail -2 || true
  fi
  rm -rf "$scratch"
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "== no crash in ${#targets[@]} targets (${secs}s each)"
