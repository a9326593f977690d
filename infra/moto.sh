#!/usr/bin/env bash
# A local AWS API emulator (moto) for the AWS wire tests.
#
#   infra/moto.sh install    create the Python venv with moto[server] and cfn-lint
#   infra/moto.sh start      start moto on 127.0.0.1 and a free port; print its endpoint
#   infra/moto.sh endpoint   print the endpoint of the running emulator
#   infra/moto.sh stop       stop it
#
# Then: HUB_MOTO_ENDPOINT=$(infra/moto.sh start) cargo test -p hub-tests --features aws --test aws_wire --test aws_contract
#
# HUB_VENV        the venv (default: <repo>/.venv-aws)
# HUB_MOTO_PORT   a fixed port instead of a free one
# HUB_MOTO_STATE  where the pid, port and log files go (default: ${TMPDIR:-/tmp}/hub-moto-<uid>)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HUB_VENV:-$repo/.venv-aws}
state=${HUB_MOTO_STATE:-${TMPDIR:-/tmp}/hub-moto-$(id -u)}
pidfile=$state/moto.pid
portfile=$state/moto.port
logfile=$state/moto.log

# Versions the wire tests were written against.
MOTO_VERSION=5.2.5
CFN_LINT_VERSION=1.58.0
# The SAM transform for the deployed-stack test (infra/deployed_stack.py).
SAM_TRANSLATOR_VERSION=1.110.0

installed() {
    [[ -x $venv/bin/moto_server && -x $venv/bin/cfn-lint ]] &&
        "$venv/bin/python" -c "import samtranslator" 2>/dev/null
}

install() {
    installed && return
    # Test processes may ask at the same time: one installs, the rest wait.
    mkdir -p "$(dirname "$venv")"
    exec 9>"$venv.lock"
    flock 9
    if ! installed; then
        echo "creating $venv (moto $MOTO_VERSION, cfn-lint $CFN_LINT_VERSION, aws-sam-translator $SAM_TRANSLATOR_VERSION)" >&2
        [[ -x $venv/bin/pip ]] || python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "moto[server]==$MOTO_VERSION" "cfn-lint==$CFN_LINT_VERSION" \
            "aws-sam-translator==$SAM_TRANSLATOR_VERSION" >&2
    fi
    flock -u 9
}

running() {
    [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

endpoint() {
    echo "http://127.0.0.1:$(cat "$portfile")"
}

start() {
    if running; then
        endpoint
        return
    fi
    install
    mkdir -p "$state"
    local port=${HUB_MOTO_PORT:-}
    if [[ -z $port ]]; then
        port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    fi
    nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 &
    echo $! >"$pidfile"
    echo "$port" >"$portfile"
    # Ready when it answers; give up after ~30 s.
    for _ in $(seq 1 150); do
        if "$venv/bin/python" -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
            endpoint
            return
        fi
        if ! running; then
            echo "moto exited; see $logfile" >&2
            exit 1
        fi
        sleep 0.2
    done
    echo "moto did not answer on port $port; see $logfile" >&2
    stop
    exit 1
}

stop() {
    if running; then
        local pid
        pid=$(cat "$pidfile")
        kill "$pid"
        # Wait for it to exit (it takes a few seconds to shut down).
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$pidfile" "$portfile"
}

case ${1:-} in
    install) install ;;
    start) start ;;
    endpoint)
        if running; then endpoint; else echo "moto is not running" >&2; exit 1; fi
        ;;
    stop) stop ;;
    *)
        echo "usage: $0 install|start|endpoint|stop" >&2
        exit 2
        ;;
esac
