#!/usr/bin/env bash
# Set up (idempotent) and run the main job in the foreground: the fleet of links.yaml (one link of
# each protocol), both exporters, the control API, a real Prometheus and a real Alertmanager.
# Ctrl-C stops everything. Extra arguments go to `qkdops up` (e.g. --config my-links.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/qkdops up "$@"
