"""A grid cell over two SLURM nodes (issue 37): scripts/slurm_cluster.sh brings up two nodes on
this machine, configs/grid/multinode_smoke.yaml runs one cell as DDP over both (gloo, one CPU
process a node) through submitit, sbatch and srun; result.json records both ranks' nodes; the
cluster stops without leaving a daemon or its hosts lines. Skipped, with the reason, where
SLURM cannot be started; SMALLBATCH_REQUIRE_SLURM=1 (CI) turns the skip into a failure."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import HELPERS, ROOT

from smallbatch.grid import load_grid, run_grid
from smallbatch.results import read_result

SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"


def _unavailable(reason: str):
    if os.environ.get("SMALLBATCH_REQUIRE_SLURM") == "1":
        pytest.fail(f"SMALLBATCH_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.mark.slow
def test_a_cell_runs_over_two_slurm_nodes(tmp_path, fashion_dir, monkeypatch):
    missing = [p for p in ("slurmctld", "slurmd", "munged", "sbatch") if not shutil.which(p)]
    if missing:
        _unavailable(f"SLURM is not installed ({', '.join(missing)} missing)")
    if os.geteuid() != 0:
        _unavailable("starting SLURM's daemons needs root")
    folder = tmp_path / "cluster"
    start = subprocess.run(["bash", str(SCRIPT), "start", "--nodes", "2", str(folder)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    try:
        if start.returncode != 0:
            _unavailable(f"a two-node SLURM did not start: {start.stderr.strip()[-500:]}")
        assert "nodes: n1 n2" in start.stdout
        conf = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
        idle = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True,
                              text=True, env=conf)  # fmt: skip
        assert idle.stdout.split() == ["n1", "idle", "n2", "idle"]
        monkeypatch.setenv("SLURM_CONF", str(folder / "slurm.conf"))
        monkeypatch.setenv("PYTHONPATH", str(HELPERS))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        spec = yaml.safe_load((ROOT / "configs" / "grid" / "multinode_smoke.yaml").read_text())
        spec["base_config"] = str(ROOT / "configs" / "quickstart.yaml")
        spec["args"] = {**spec["args"], "data.data_dir": fashion_dir}
        spec["run_root"] = str(tmp_path / "runs")
        path = tmp_path / "multinode_smoke.yaml"
        path.write_text(yaml.safe_dump(spec))
        grid = load_grid(path)
        assert run_grid(grid) == 0
        (cell,) = grid.cells()
        result = read_result(grid.run_dir / "cells" / cell.folder)
        assert result["status"] == "finished" and result["num_nodes"] == 2
        assert result["world_size"] == 2 and result["rank_nodes"] == ["n1", "n2"]
        assert result["normalization_batch"] == 16 and result["devices"] == 1
        runs = list((grid.run_dir / "cells" / cell.folder / "wandb").glob("offline-run-*"))
        assert len(runs) == 1  # one W&B run for the cell, from rank 0
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], timeout=60)
    assert not any(_alive(p) for p in folder.glob("*.pid"))
    assert not _processes_of(folder / "slurm.conf")  # no job step left either
    assert str(folder) not in Path("/etc/hosts").read_text()


def _processes_of(conf: Path) -> list[int]:
    """Live processes started by the cluster of ``conf`` (SLURM_CONF in their environment),
    this test's own process aside."""
    mine, found = {os.getpid(), os.getppid()}, []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if f"SLURM_CONF={conf}".encode() in environ and state != "Z" and int(proc.name) not in mine:
            found.append(int(proc.name))
    return found
