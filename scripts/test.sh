#!/usr/bin/env bash
# Set up (if needed) and run the test suite on CPU, W&B offline: all of it (what CI runs), or
# with --fast the fast lane (tests not marked slow: every module, a few minutes on 2 cores).
# Other arguments go to pytest (a subset: bash scripts/test.sh tests/norms -k brn).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export WANDB_MODE=offline CUDA_VISIBLE_DEVICES=""
args=()
for arg in "$@"; do
  if [ "$arg" = "--fast" ]; then args+=(-m "not slow"); else args+=("$arg"); fi
done
.venv/bin/ruff check smallbatch tests examples scripts
.venv/bin/ruff format --check smallbatch tests examples scripts
.venv/bin/python -m pytest "${args[@]}"
