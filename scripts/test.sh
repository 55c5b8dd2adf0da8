#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on CPU, W&B offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export WANDB_MODE=offline CUDA_VISIBLE_DEVICES=""
.venv/bin/ruff check smallbatch tests examples scripts
.venv/bin/ruff format --check smallbatch tests examples scripts
.venv/bin/python -m pytest "$@"
