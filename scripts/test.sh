#!/usr/bin/env bash
# The one test command: installs what the tests need, then format, lint and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The status page's browser test (tests/status_browser.rs) drives headless Chromium.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# tests/contrib.rs checks the files in contrib/ with the tools that read them: the systemd
# unit (systemd-analyze verify), the logrotate snippet (logrotate -d, in /usr/sbin) and the
# alert rules (promtool check rules / test rules).
PATH="$PATH:/usr/sbin:/sbin"
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v logrotate >/dev/null 2>&1 || need+=(logrotate)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing: ${need[*]}. Install them with:" >&2
    echo "  sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi
for c in redis-server openssl curl chromium systemd-analyze logrotate promtool; do
  command -v "$c" >/dev/null 2>&1 || { echo "still missing after install: $c" >&2; exit 1; }
done

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

bash scripts/gen-dev-certs.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test --all-targets"
cargo test --all-targets
echo "== fuzz smoke (scripts/fuzz-smoke.sh: every fuzz target builds, then seeds + 5s each)"
bash scripts/fuzz-smoke.sh
echo "== all tests passed"
