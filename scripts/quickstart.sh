#!/usr/bin/env bash
# The main job on a fresh machine: set up, run the quickstart grid on real Fashion-MNIST
# (offline, CPU is fine), then print the norm x batch-size table and write the plot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export WANDB_MODE=${WANDB_MODE:-offline}
.venv/bin/smallbatch fit --config configs/quickstart.yaml "$@"
