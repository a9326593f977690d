#!/usr/bin/env bash
# Fuzzes the staff API from openapi.yaml with schemathesis against
# `hub local serve`: no 5xx, and every response as described.
#
# The server runs with --insecure-test-identity (TEST ONLY: it trusts the
# x-hub-test-identity header instead of a SigV4 signature), so the checks
# about authentication are left out here; hub/tests/staff_cli.rs covers
# unsigned, forged, expired and unknown-key requests against the real
# SigV4 verification. Schema-valid requests the hub refuses on business
# rules (a deadline in the past, an empty reason) are not failures either.
#
#   FUZZ_EXAMPLES=300 ./infra/fuzz.sh     # test cases per operation (default)
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${FUZZ_EXAMPLES:-300}"
venv=.venv
if [ ! -x "$venv/bin/st" ]; then
  echo "installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5"
fi

cargo build --quiet -p hub
hub="${CARGO_TARGET_DIR:-target}/debug/hub"
work="$(mktemp -d)"
"$hub" local serve --port 0 --practices 3 --patients 600 --seed 17 \
  --insecure-test-identity >"$work/serve.log" 2>"$work/serve.err" &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

url=""
for _ in $(seq 1 300); do
  url="$(sed -n 's/^hub local serve: listening on \(http:[^ ]*\)$/\1/p' "$work/serve.log")"
  [ -n "$url" ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    cat "$work/serve.err" >&2
    echo "hub local serve did not start" >&2
    exit 1
  fi
  sleep 0.2
done
[ -n "$url" ] || { echo "hub local serve did not print its URL" >&2; exit 1; }
echo "fuzzing $url with schemathesis ($examples examples per operation)"

"$venv/bin/st" run openapi.yaml \
  --url "$url" \
  -H "x-hub-test-identity: arn:aws:iam::000000000000:user/fuzzer" \
  --generation-with-security-parameters false \
  --checks all \
  --exclude-checks ignored_auth,missing_required_header,positive_data_acceptance \
  --max-examples "$examples" \
  --request-timeout 30 \
  --seed 2026 \
  --generation-database none \
  --no-color \
  --report junit --report-dir "$work/report"

if grep -q "panicked" "$work/serve.err"; then
  echo "hub local serve panicked during the fuzz run:" >&2
  grep -A3 "panicked" "$work/serve.err" >&2
  exit 1
fi
