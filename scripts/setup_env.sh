#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtual environment in .venv with smallbatch and its
# test tools, and Fashion-MNIST from Debian's package when it is not already on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import smallbatch, pytest, smallbatch_bcn" 2>/dev/null; then
  # quiet: setuptools' "Editable installation" notice is a warning of the build backend
  export PYTHONWARNINGS=ignore
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[test]"
  # the example norm plugin (docs/plugins.md): its tests and a grid test use it
  .venv/bin/pip install --quiet --no-build-isolation --no-deps -e ./examples/smallbatch-bcn
  unset PYTHONWARNINGS
fi
# Real data offline: Debian's dataset-fashion-mnist (the data module also finds ../shared/data).
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
    || echo "note: could not install dataset-fashion-mnist; looking for Fashion-MNIST elsewhere"
fi
