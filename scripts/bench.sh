#!/usr/bin/env bash
# Criterion benchmarks: the hot path (balancer, headers, routing, an end-to-end keep-alive
# GET direct vs through doorman, measured in the same run) and auth (JWT verification per
# algorithm cold and cached, revocation checks against a warm view). Results land in
# target/criterion/ and target/bench-*.txt. The NGINX/HAProxy side-by-side harness is a
# separate issue.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
  else
    echo "redis-server is required: sudo apt-get install -y redis-server" >&2
    exit 1
  fi
fi
# Quiet the access log: benchmarks measure the proxy, not the terminal.
export RUST_LOG=warn
mkdir -p target
cargo bench --bench hot_path --bench auth --bench idempotency -- "$@" 2>&1 | tee target/bench-all.txt
