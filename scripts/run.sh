#!/usr/bin/env bash
# Set up (idempotent) and run the main job: an emulated 25 km decoy-BB84 metro link in real time,
# each 10 s block sampled, estimated with the finite-key analysis and printed. Ctrl-C stops it.
# Extra arguments go to `qkdops emulate` (e.g. --protocol tf --preset snspd --distance-km 300).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/qkdops emulate --protocol bb84-decoy --preset lim2014 --distance-km 25 \
    --block-pulses 1e10 --blocks 0 --realtime "$@"
