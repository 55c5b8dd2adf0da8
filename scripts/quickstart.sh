#!/usr/bin/env bash
# The main job on a fresh machine: set up, run the quickstart grid (BN, BRN, GN, LN at
# normalization batch 32, 4, 1 under a fixed total batch of 32, one epoch of full Fashion-MNIST,
# offline, CPU is fine), then print the table with a one-line reading and write the plot.
# Re-running resumes: finished cells are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/setup_env.sh
setup=$((SECONDS - start))
export WANDB_MODE=${WANDB_MODE:-offline}
.venv/bin/smallbatch grid --config configs/grid/quickstart.yaml "$@"
grid=$((SECONDS - start - setup))
.venv/bin/smallbatch report runs/grid/quickstart
report=$((SECONDS - start - setup - grid))
echo "wall time: set-up ${setup}s, grid ${grid}s, report ${report}s"
