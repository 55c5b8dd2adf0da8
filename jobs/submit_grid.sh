#!/bin/bash
# Emit a grid's cell list and submit it as a plain SLURM array (no submitit needed):
#   bash jobs/submit_grid.sh configs/grid/cifar10_resnet18.yaml [extra sbatch args]
# The job's resources (nodes, tasks and GPUs per node, CPUs, time, memory, partition) come from
# the grid file's executor keys, as `smallbatch grid --emit` prints them; extra args go after
# them and win. The checkout's .venv/bin/smallbatch is used when there is one
# (SMALLBATCH=... chooses another).
set -euo pipefail
GRID=${1:?usage: submit_grid.sh GRID_FILE [sbatch args]}
shift
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -z "${SMALLBATCH:-}" ]; then
  SMALLBATCH=smallbatch
  [ -x "$HERE/../.venv/bin/smallbatch" ] && SMALLBATCH="$HERE/../.venv/bin/smallbatch"
fi
OUT=$($SMALLBATCH grid --config "$GRID" --emit)  # unquoted: a command with arguments
echo "$OUT"
CELLS=$(echo "$OUT" | sed -n 's/^wrote [0-9]* cell commands to //p')
N=$(wc -l < "$CELLS")
[ "$N" -gt 0 ] || { echo "nothing to run"; exit 0; }
read -r -a RESOURCES <<< "$(echo "$OUT" | sed -n 's/^sbatch args: //p')"
sbatch --array=0-$((N - 1)) "${RESOURCES[@]}" "$@" "$HERE/array.sbatch" "$CELLS"
