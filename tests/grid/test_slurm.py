"""The SLURM paths on a real one-node SLURM (scripts/slurm_single_node.sh): submitit's SLURM
executor with a cell that reaches its time limit, is requeued and resumes from its checkpoint;
`jobs/array.sbatch` under real `sbatch`. Skipped, with the reason, where SLURM cannot be
started (not root, not installed); `.ci/run` installs it and sets SMALLBATCH_REQUIRE_SLURM=1,
which turns those skips into failures."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from conftest import HELPERS, ROOT, wait_for

from smallbatch.grid import load_grid, run_grid
from smallbatch.grid.store import ResultsStore
from smallbatch.results import read_result

SCRIPT = ROOT / "scripts" / "slurm_single_node.sh"


def _unavailable(reason: str):
    if os.environ.get("SMALLBATCH_REQUIRE_SLURM") == "1":
        pytest.fail(f"SMALLBATCH_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a one-node cluster started for these tests, stopped after them."""
    missing = [p for p in ("slurmctld", "slurmd", "munged", "sbatch") if not shutil.which(p)]
    if missing:
        _unavailable(
            f"SLURM is not installed ({', '.join(missing)} missing; as root: bash "
            "scripts/slurm_single_node.sh install)"
        )
    if os.geteuid() != 0:
        _unavailable("starting SLURM's daemons needs root")
    folder = tmp_path_factory.mktemp("slurm")
    done = subprocess.run(
        ["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], timeout=60)
        _unavailable(f"a one-node SLURM did not start: {done.stderr.strip()[-500:]}")
    yield str(folder / "slurm.conf")
    subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], timeout=60)


@pytest.fixture
def slurm_env(slurm, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm)
    monkeypatch.setenv("PYTHONPATH", str(HELPERS))  # jobs inherit the environment (sbatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return slurm


def _grid(tmp_path, fashion_dir, name, executor, slow_s=0.0, epochs=12, batch_sizes=(16,)):
    slow = {"class_path": "sb_test_helpers.SlowFirstAttempt", "init_args": {"seconds": slow_s}}
    spec = {
        "name": name,
        "base_config": str(ROOT / "configs" / "quickstart.yaml"),
        "axes": {"model.norm": ["brn"], "data.batch_size": list(batch_sizes)},
        "args": {
            "model.backbone": "resnet8",
            "trainer.max_epochs": epochs,
            "trainer.logger": False,
            "trainer.enable_model_summary": False,
            "trainer.callbacks": [slow],
            "data.train_subset": 128,
            "data.val_subset": 64,
            "data.data_dir": fashion_dir,
        },
        "executor": executor,
        "run_root": str(tmp_path / "runs"),
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.slow
def test_cell_that_hits_its_time_limit_is_requeued_and_resumes_to_the_same_result(
    slurm_env, tmp_path, fashion_dir
):
    """A BRN cell (its r/d ramp is step-dependent state) runs under submitit's SLURM executor
    and is slowed down in its first attempt only. Once it has written its first checkpoint, its
    job's time limit is cut to one minute: SLURM sends the warning signal, submitit requeues
    the job, and the rerun resumes from last.ckpt. The result equals an uninterrupted local run
    of the same cell bit for bit, and polling without accounting printed no sacct warning."""
    reference = load_grid(
        _grid(tmp_path / "ref", fashion_dir, "ref", {"kind": "local", "max_parallel": 1})
    )
    assert run_grid(reference) == 0
    (expected,) = [read_result(p.parent) for p in reference.run_dir.glob("cells/*/result.json")]

    executor = {
        "kind": "slurm",
        "slurm_partition": "debug",
        "gpus_per_node": 0,
        "cpus_per_task": 1,
        "timeout_min": 10,
        "signal_delay_s": 40,
        "retries": 0,
    }
    path = _grid(tmp_path, fashion_dir, "sl", executor, slow_s=0.5)
    spec = load_grid(path)
    env = {**os.environ, "CI": "1"}
    cmd = [sys.executable, "-m", "smallbatch.cli", "grid", "--config", str(path)]
    started = time.time()
    grid = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        cell_dir = wait_for(
            lambda: next(iter(spec.run_dir.glob("cells/*/checkpoints/last.ckpt")), None),
            180,
            "the cell's first checkpoint",
        ).parent.parent
        job = wait_for(
            lambda: subprocess.run(
                ["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True
            ).stdout.split(),
            30,
            "the job in squeue",
        )[0]
        subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=1"], check=True)
        out, err = grid.communicate(timeout=300)
    finally:
        if grid.poll() is None:
            grid.kill()
            subprocess.run(["scancel", "-u", "root"], check=False)
    elapsed = time.time() - started
    assert grid.returncode == 0, out + err
    assert "Bypassing sacct error" not in out + err
    logs = "".join(p.read_text() for p in spec.run_dir.glob("submitit/*/*_log.*"))
    assert "Requeued job" in logs, logs[-3000:]
    assert f"resuming from {cell_dir / 'checkpoints' / 'last.ckpt'}" in logs
    result = read_result(cell_dir)
    assert result["status"] == "finished"
    assert result["global_step"] == expected["global_step"] == 12 * 8
    assert result["val_acc_history"] == expected["val_acc_history"]  # bit-exact on CPU
    assert result["final_val_acc"] == expected["final_val_acc"]
    print(f"requeue test: {elapsed:.0f} s on SLURM")


@pytest.mark.slow
def test_array_sbatch_runs_emitted_cells_under_real_sbatch(slurm_env, tmp_path, fashion_dir):
    """`jobs/submit_grid.sh` (`grid --emit`, then `sbatch --array jobs/array.sbatch cells.txt`
    with the grid file's resources): each array task runs its cell through srun, and the grid
    then counts them as done."""
    executor = {"kind": "slurm", "gpus_per_node": 0, "cpus_per_task": 1, "timeout_min": 10}
    path = _grid(tmp_path, fashion_dir, "arr", executor, epochs=1, batch_sizes=(8, 16))
    spec = load_grid(path)
    out = tmp_path / "slurm-%A_%a.out"
    done = subprocess.run(
        ["bash", str(ROOT / "jobs" / "submit_grid.sh"), str(path), "--wait", f"--output={out}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "SMALLBATCH": f"{sys.executable} -m smallbatch.cli"},
    )
    assert "sbatch args: --nodes=1 --ntasks-per-node=1 --gres=none --cpus-per-task=1" in done.stdout
    assert len((spec.run_dir / "cells.txt").read_text().splitlines()) == 2
    logs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert done.returncode == 0, done.stderr + logs[-3000:]
    results = [json.loads(p.read_text()) for p in spec.run_dir.glob("cells/*/result.json")]
    assert sorted(r["batch_size"] for r in results) == [8, 16]
    assert all(r["status"] == "finished" for r in results)
    assert {s.status for s in ResultsStore(spec).states()} == {"done"}
