#!/usr/bin/env bash
# The failover soak (issue 23): three doorman instances on a Redis Cluster (3 masters + 3
# replicas), then on Sentinel (1 master, 1 replica, 3 sentinels), all on 127.0.0.1; masters
# killed, restarted and (cluster) resharded under JWT, revocation and keyed-POST traffic.
#   scripts/soak.sh [--seconds N] [--only cluster|sentinel]     (default 60 s per setup)
# Figures: stdout and target/soak/report.md. Exits non-zero if a revoked token passed after
# a durable acknowledgement or an idempotency key reached a replica twice outside a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "soak: $tool is required (apt-get install redis-server)" >&2; exit 1; }
done
RUST_LOG=${RUST_LOG:-warn} cargo bench --bench soak -- "$@"
