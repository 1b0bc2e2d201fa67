#!/usr/bin/env bash
# Benchmarks. Installs what it needs when missing (as root via apt-get; otherwise says what
# to install).
#   scripts/bench.sh micro [criterion args]  criterion micro-benchmarks: hot path, auth,
#                                            idempotency (target/criterion/, target/bench-all.txt)
#   scripts/bench.sh peers [peers.py args]   doorman vs NGINX vs HAProxy, CPU per request
#                                            (target/bench/report.md; see scripts/peers.py)
#   scripts/bench.sh instructions [args]     user-space instructions per request under
#                                            callgrind, optionally vs --baseline BINARY
#                                            (target/bench/instructions.md)
#   scripts/bench.sh                         both
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "missing: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

micro() {
  need redis-server:redis-server
  # Quiet the access log: benchmarks measure the proxy, not the terminal.
  RUST_LOG=warn cargo bench --bench hot_path --bench auth --bench idempotency -- "$@" 2>&1 |
    tee target/bench-all.txt
}

peers() {
  need nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client openssl:openssl \
    redis-server:redis-server redis-cli:redis-tools \
    taskset:util-linux python3:python3
  cargo build --release
  python3 scripts/peers.py "$@"
}

instructions() {
  need valgrind:valgrind h2load:nghttp2-client nginx:nginx redis-server:redis-server \
    openssl:openssl taskset:util-linux python3:python3
  cargo build --release
  python3 scripts/instructions.py "$@"
}

mkdir -p target
case "${1:-all}" in
  micro) shift; micro "$@" ;;
  peers) shift; peers "$@" ;;
  instructions) shift; instructions "$@" ;;
  all) micro; peers ;;
  *) echo "usage: scripts/bench.sh [micro|peers|instructions|all] [args]" >&2; exit 2 ;;
esac
