#!/usr/bin/env bash
# NHS England's MESH sandbox (mesh-sandbox) for the MESH route's tests and
# the mixed-region demo. The tests and `hub demo --mesh-practices` start
# their own sandbox from this venv on a free loopback port (see
# shared/sim/src/mesh.rs); this script only installs it.
#
#   infra/mesh.sh install    create the venv with mesh-sandbox
#
# HUB_MESH_VENV   the venv (default: <repo>/.venv-mesh)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${HUB_MESH_VENV:-$repo/.venv-mesh}

# The version the tests were written against.
MESH_SANDBOX_VERSION=1.0.137

installed() {
    [[ -x $venv/bin/uvicorn ]] && "$venv/bin/python" -c "import mesh_sandbox.api" 2>/dev/null
}

install() {
    installed && return
    # Test processes may ask at the same time: one installs, the rest wait.
    mkdir -p "$(dirname "$venv")"
    exec 9>"$venv.lock"
    flock 9
    if ! installed; then
        echo "creating $venv (mesh-sandbox $MESH_SANDBOX_VERSION)" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "mesh-sandbox==$MESH_SANDBOX_VERSION" >&2
    fi
    flock -u 9
}

case ${1:-} in
    install) install ;;
    *)
        echo "usage: $0 install" >&2
        exit 2
        ;;
esac
