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
# the phase timings beside the report, with what they ran on and from which commit
.venv/bin/python - "$setup" "$grid" "$report" <<'PY'
import glob, json, subprocess, sys
from smallbatch.results import write_json_atomic
from smallbatch.run.result_writer import machine, utc_now
setup, grid, report = map(int, sys.argv[1:4])
commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                        text=True).stdout.strip() or None
# the precision the cells resolved `auto` to on this machine (each result.json records its own)
cells = [json.load(open(f)) for f in glob.glob("runs/grid/quickstart/cells/*/result.json")]
precision = sorted({str(c.get("precision")) for c in cells})
write_json_atomic("runs/grid/quickstart/report/timings.json", {
    "command": "bash scripts/quickstart.sh", "commit": commit, "ended_utc": utc_now(),
    "setup_s": setup, "grid_s": grid, "report_s": report, "precision": precision,
    "machine": machine()})
print(f"timings: runs/grid/quickstart/report/timings.json (precision {', '.join(precision)})")
PY
