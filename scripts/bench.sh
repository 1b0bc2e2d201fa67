#!/usr/bin/env bash
# Criterion micro-benchmarks of the hot path plus an end-to-end keep-alive GET, direct vs
# through doorman, measured in the same run. Results: target/criterion/ and the summary below.
# (The side-by-side harness against NGINX and HAProxy is a separate issue.)
set -euo pipefail
cd "$(dirname "$0")/.."
# Quiet the access log: benchmarks measure the proxy, not the terminal.
export RUST_LOG=warn
cargo bench --bench hot_path -- "$@" 2>&1 | tee target/bench-hot_path.txt
