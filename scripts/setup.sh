#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Debian's Prometheus and Alertmanager (the real servers of the
# local stack and of the end-to-end tests), VictoriaMetrics (the optional long-term store,
# `qkdops up --victoria-metrics`) and a Python venv with qkdops and its test dependencies.
# Used by scripts/run.sh and scripts/test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
    echo "setup: installing $* with apt" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
{ command -v prometheus-alertmanager || command -v alertmanager; } >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v victoria-metrics >/dev/null 2>&1 || missing+=(victoria-metrics)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)              # the SKIP tests' independent TLS-PSK client
# sslpsk3 (the SKIP key providers' TLS-PSK) builds from source against the system's OpenSSL
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install $(printf '%s\n' "${missing[@]}" | sort -u)
fi

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1 || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: Python >= 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    apt_install python3-dev   # sslpsk3 compiles against the interpreter's headers
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        apt_install python3-venv
        "$PYTHON" -m venv .venv
    fi
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

# For the tests only (scripts/test.sh sets QKDOPS_SETUP_TESTS=1): the schemas of every object in
# deploy/kubernetes/, compiled to validators that tests/test_kubernetes.py runs with node — prometheus-
# operator's CRDs (npm @kubernetes-models/prometheus-operator, MIT) and Kubernetes' own OpenAPI schemas
# for the core objects (npm kubernetes-models, MIT). Pinned; installed again when either is missing.
K8S_SCHEMAS=.venv/k8s-schemas
K8S_SCHEMAS_PACKAGES=(@kubernetes-models/prometheus-operator@6.0.0 kubernetes-models@5.1.0)
if [ "${QKDOPS_SETUP_TESTS:-}" = 1 ] && { [ ! -f "$K8S_SCHEMAS/node_modules/@kubernetes-models/prometheus-operator/package.json" ] \
        || [ ! -f "$K8S_SCHEMAS/node_modules/kubernetes-models/package.json" ]; }; then
    { command -v node && command -v npm; } >/dev/null 2>&1 || apt_install nodejs npm
    echo "setup: installing ${K8S_SCHEMAS_PACKAGES[*]} with npm (Kubernetes manifest schemas, tests only)" >&2
    npm install --silent --no-audit --no-fund --prefix "$K8S_SCHEMAS" "${K8S_SCHEMAS_PACKAGES[@]}" >/dev/null
fi
