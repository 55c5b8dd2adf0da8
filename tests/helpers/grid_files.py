"""Grid files and grid processes for the grid tests (tests/grid/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

HELPERS = Path(__file__).resolve().parent
ROOT = HELPERS.parents[1]


TINY_ARGS = {
    "model.backbone": "resnet8",
    "trainer.max_epochs": 1,
    "trainer.logger": False,
    "trainer.enable_model_summary": False,
    "data.train_subset": 64,
    "data.val_subset": 32,
}


def write_grid(tmp_path, fashion_dir, name="g", axes=None, args=None, executor=None, **extra):
    spec = {
        "name": name,
        "base_config": str(ROOT / "configs" / "quickstart.yaml"),
        "axes": axes or {"model.norm": ["bn", "gn"], "data.batch_size": [4, 8]},
        "args": {**TINY_ARGS, "data.data_dir": fashion_dir, **(args or {})},
        "executor": executor or {"kind": "local", "max_parallel": 1, "retries": 1},
        "run_root": str(tmp_path / "runs"),
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def grid_proc(path, *flags):
    env = {**os.environ, "PYTHONPATH": str(HELPERS), "CI": "1"}
    cmd = [sys.executable, "-m", "smallbatch.cli", "grid", "--config", str(path), *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def cell_results(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("cells/*/result.json")}
