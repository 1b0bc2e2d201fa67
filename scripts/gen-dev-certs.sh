#!/usr/bin/env bash
# Create a development CA and a localhost certificate for config/proxy.toml.
# These are throwaway dev credentials, generated locally and never committed (.gitignore).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=config/certs
mkdir -p "$dir"
if [ -s "$dir/dev.crt" ] && [ -s "$dir/dev.key" ] && [ "${1:-}" != "--force" ]; then
  echo "dev certificate already present in $dir (use --force to regenerate)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=doorman dev CA" -keyout "$tmp/ca.key" -out "$dir/dev-ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout "$tmp/dev.key" -out "$tmp/dev.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' > "$tmp/ext"
openssl x509 -req -in "$tmp/dev.csr" -CA "$dir/dev-ca.pem" -CAkey "$tmp/ca.key" -CAserial "$tmp/ca.srl" -CAcreateserial \
  -days 825 -extfile "$tmp/ext" -out "$tmp/leaf.crt" 2>/dev/null
cat "$tmp/leaf.crt" "$dir/dev-ca.pem" > "$dir/dev.crt"
install -m 600 "$tmp/dev.key" "$dir/dev.key"
echo "wrote $dir/dev.crt, $dir/dev.key and $dir/dev-ca.pem (trust it with curl --cacert $dir/dev-ca.pem)"
