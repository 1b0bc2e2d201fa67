#!/usr/bin/env bash
# Fuzz smoke: build every target in fuzz/ and run each over its checked-in seed corpus and
# reproducers, then a few seconds of fuzzing. Exits non-zero on any crash, timeout or OOM.
# Long campaigns: docs/fuzzing.md. FUZZ_SMOKE_SECONDS sets the seconds per target (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

# cargo-fuzz needs nightly flags (-Z sanitizer, -C passes=sancov-module); stable accepts
# them with RUSTC_BOOTSTRAP. No sanitizer: doorman forbids unsafe code, and it builds and
# runs faster.
export RUSTC_BOOTSTRAP=1
echo "-- building the fuzz targets"
cargo fuzz build -O --sanitizer none

# A name the config target makes up must not wait on DNS.
export RES_OPTIONS="timeout:1 attempts:1"
triple=$(rustc -vV | sed -n 's/^host: //p')
bin=fuzz/target/$triple/release
seconds=${FUZZ_SMOKE_SECONDS:-5}
for t in $(cargo fuzz list); do
  echo "-- $t: seeds, reproducers, then ${seconds}s"
  # New inputs go to the first directory, which is ignored by git: the seeds stay as checked in.
  mkdir -p "fuzz/corpus-run/$t" "fuzz/artifacts/$t"
  dirs=("fuzz/corpus-run/$t" "fuzz/corpus/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  log="fuzz/artifacts/$t/smoke.log"
  status=0
  "$bin/$t" -max_total_time="$seconds" -rss_limit_mb=2048 \
    -malloc_limit_mb=2048 -timeout=10 -dict=fuzz/dict/http.dict \
    -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 "${dirs[@]}" >"$log" 2>&1 \
    || status=$?
  grep -E '^#[0-9]+ +(INITED|DONE)|stat::number_of_executed_units|stat::average_exec_per_sec' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "fuzz target $t failed (exit $status): reproducer in fuzz/artifacts/$t/, log $log" >&2
    exit 1
  fi
done
echo "-- fuzz smoke passed"
