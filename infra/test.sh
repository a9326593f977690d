#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). Installs what the
# tests need, then runs formatting, lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

# An independent FHIR validator for the FHIR adapter's tests.
if ! python3 -c "import fhir.resources.R4B" >/dev/null 2>&1; then
  echo "installing fhir.resources"
  python3 -m pip install --quiet --disable-pip-version-check "fhir.resources==8.3.0"
fi
export HUB_REQUIRE_FHIR_VALIDATOR=1

# The AWS API emulator (moto) and cfn-lint, in .venv-aws; the wire tests
# start their own emulator from it.
./infra/moto.sh install
.venv-aws/bin/cfn-lint template.yaml

# NHS England's mesh-sandbox in .venv-mesh; the MESH tests start their own.
./infra/mesh.sh install

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo nextest run --workspace --all-features --no-fail-fast "$@"

# Fuzz the staff API from openapi.yaml against `hub local serve`
# (schemathesis in .venv; a minute or two).
./infra/fuzz.sh
