#!/usr/bin/env bash
# NHS England's MESH sandbox (mesh-sandbox) for the MESH route's tests and
# the mixed-region demo. The tests and `hub demo --mesh-practices` start
# their own sandbox from this venv on a free loopback port (see
# shared/sim/src/mesh.rs); this script installs it and makes test certificates.
#
#   infra/mesh.sh install    create the venv with mesh-sandbox
#   infra/mesh.sh certs DIR  a test CA, server and client certificate (openssl)
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

# A test CA, a server certificate for 127.0.0.1 and a client certificate
# (P-256, two days), for the sandbox's client TLS test.
certs() {
    local dir=$1
    mkdir -p "$dir"
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout ca.key -out ca.pem -days 2 -subj "/CN=Hub test MESH CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >server.ext
    printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' >client.ext
    for who in server client; do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$who.key" -out "$who.csr" -subj "/CN=$who" 2>/dev/null
        openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
            -out "$who.pem" -days 2 -extfile "$who.ext" 2>/dev/null
    done
}

case ${1:-} in
    install) install ;;
    certs)
        [[ -n ${2:-} ]] || { echo "usage: $0 certs DIR" >&2; exit 2; }
        certs "$2"
        ;;
    *)
        echo "usage: $0 install | certs DIR" >&2
        exit 2
        ;;
esac
