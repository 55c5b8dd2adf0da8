#!/bin/bash
# Emit a grid's cell list and submit it as a plain SLURM array (no submitit needed):
#   bash jobs/submit_grid.sh configs/grid/cifar10_resnet18.yaml [extra sbatch args]
set -euo pipefail
GRID=${1:?usage: submit_grid.sh GRID_FILE [sbatch args]}
shift
OUT=$(smallbatch grid --config "$GRID" --emit)
echo "$OUT"
CELLS=$(echo "$OUT" | sed -n 's/^wrote [0-9]* cell commands to //p')
N=$(wc -l < "$CELLS")
[ "$N" -gt 0 ] || { echo "nothing to run"; exit 0; }
sbatch --array=0-$((N - 1)) "$@" "$(dirname "$0")/array.sbatch" "$CELLS"
