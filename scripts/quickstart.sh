#!/usr/bin/env bash
# The main job on a fresh machine: set up, run the quickstart grid (5 norms x 3 per-device batch
# sizes on real Fashion-MNIST, offline, CPU is fine), then print the table and write the plot.
# Re-running resumes: finished cells are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export WANDB_MODE=${WANDB_MODE:-offline}
.venv/bin/smallbatch grid --config configs/grid/quickstart.yaml "$@"
.venv/bin/smallbatch report runs/grid/quickstart
