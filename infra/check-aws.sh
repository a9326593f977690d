#!/usr/bin/env bash
# Everything AWS-side CI checks: the SAM template lints clean, and the AWS
# adapters pass their wire tests on an emulator built from that template.
#
#   bash infra/check-aws.sh
#
# Installs the venv on first use (infra/moto.sh install); reuses a running
# emulator given by HUB_MOTO_ENDPOINT, else starts one and stops it after.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export HUB_VENV=${HUB_VENV:-$repo/.venv-aws}

infra/moto.sh install
echo "cfn-lint template.yaml"
"$HUB_VENV/bin/cfn-lint" template.yaml
# SAM's own check too, where infra/sam-build.sh has installed the SAM CLI.
if [[ -x $repo/.venv-sam/bin/sam ]]; then
    echo "sam validate --lint"
    SAM_CLI_TELEMETRY=0 "$repo/.venv-sam/bin/sam" validate --lint --template template.yaml
fi

if [[ -z ${HUB_MOTO_ENDPOINT:-} ]]; then
    HUB_MOTO_ENDPOINT=$(infra/moto.sh start)
    export HUB_MOTO_ENDPOINT
    trap 'infra/moto.sh stop' EXIT
fi
echo "AWS wire tests against $HUB_MOTO_ENDPOINT"
cargo test -p hub-tests --features aws --test aws_wire --test aws_contract \
    --test aws_retry --test alarm_metrics
