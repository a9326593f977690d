#!/usr/bin/env bash
# Builds the ten Lambda functions with `sam build`, on a machine that has
# only Python 3, a Rust toolchain (rustup) and this repository: the AWS SAM
# CLI and Cargo Lambda come from the Python package index into a venv, and
# Cargo Lambda's package brings Zig, which cross-compiles for arm64
# (aarch64-unknown-linux-gnu, as template.yaml asks). No Docker.
#
#   infra/sam-build.sh            install (first time), then sam build; prints
#                                 the time taken and each function's binary size
#   infra/sam-build.sh --dry-run  print what it would run, change nothing
#   infra/sam-build.sh --help
#
# HUB_SAM_VENV  the venv (default: <repo>/.venv-sam)
# Extra arguments after `--` go to `sam build` (e.g. -- --cached).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HUB_SAM_VENV:-$repo/.venv-sam}

# Versions this script was written against. The rust-cargolambda build
# method left SAM CLI's beta features in late 2025: no --beta-features flag.
SAM_CLI_VERSION=1.170.0
CARGO_LAMBDA_VERSION=1.9.2
TARGET=aarch64-unknown-linux-gnu

dry_run=false
sam_args=()
while (($#)); do
    case $1 in
        --dry-run) dry_run=true ;;
        -h | --help)
            sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        --)
            shift
            sam_args=("$@")
            break
            ;;
        *)
            echo "unknown argument: $1 (see --help)" >&2
            exit 2
            ;;
    esac
    shift
done

run() {
    if $dry_run; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

installed() {
    [[ -x $venv/bin/sam && -x $venv/bin/cargo-lambda ]] &&
        "$venv/bin/python" -c "import ziglang" 2>/dev/null
}

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (rustup) first" >&2
    exit 1
fi

if ! installed; then
    echo "installing SAM CLI $SAM_CLI_VERSION and Cargo Lambda $CARGO_LAMBDA_VERSION into $venv" >&2
    run python3 -m venv "$venv"
    run "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "aws-sam-cli==$SAM_CLI_VERSION" "cargo-lambda==$CARGO_LAMBDA_VERSION"
fi

# The arm64 standard library, if rustup manages the toolchain.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$TARGET"; then
    run rustup target add "$TARGET"
fi

# sam finds cargo-lambda, and cargo-lambda finds Zig (`python -m ziglang`),
# through the venv first on PATH.
export PATH="$venv/bin:$PATH"
# One core is plenty on a shared machine; override to go faster.
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}
export SAM_CLI_TELEMETRY=0

cd "$repo"
run sam validate --lint --template template.yaml
start=$(date +%s)
run sam build --template template.yaml "${sam_args[@]}"
end=$(date +%s)

if $dry_run; then
    exit 0
fi
echo "sam build took $((end - start)) s"
echo "binary sizes (bytes):"
for bootstrap in .aws-sam/build/*/bootstrap; do
    printf '  %-28s %s\n' "$(basename "$(dirname "$bootstrap")")" "$(stat -c %s "$bootstrap")"
done
