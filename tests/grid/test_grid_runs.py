"""`smallbatch grid`: grids that run, locally and through submitit/SLURM arrays."""

import json
import os
import subprocess

import pytest
from conftest import ROOT
from grid_files import cell_results, write_grid

from smallbatch.grid import GridSpecError, load_grid, run_grid


@pytest.mark.slow
def test_two_by_two_grid_runs_to_completion_then_skips(tmp_path, fashion_dir, capsys):
    path = write_grid(tmp_path, fashion_dir)
    spec = load_grid(path)
    assert run_grid(spec) == 0
    results = cell_results(spec.run_dir)
    assert len(results) == 4 and all(r["status"] == "finished" for r in results.values())
    assert {(r["norm"], r["batch_size"]) for r in results.values()} == {
        ("bn", 4),
        ("bn", 8),
        ("gn", 4),
        ("gn", 8),
    }
    assert all(r["group"] == "g" for r in results.values())
    assert not list(spec.run_dir.glob("cells/*/running.json"))  # markers go with the attempts
    mtimes = {p: p.stat().st_mtime_ns for p in spec.run_dir.glob("cells/*/result.json")}
    assert run_grid(load_grid(path)) == 0  # idempotent: nothing re-runs
    assert mtimes == {p: p.stat().st_mtime_ns for p in spec.run_dir.glob("cells/*/result.json")}
    assert "4 done, 0 to run" in capsys.readouterr().out
    manifest = json.loads((spec.run_dir / "cells.json").read_text())
    assert len(manifest) == 4 and all("smallbatch.cli fit" in c["command"] for c in manifest)


def test_slurm_path_through_submitit_debug_executor(tmp_path, fashion_dir):
    path = write_grid(
        tmp_path,
        fashion_dir,
        axes={"model.norm": ["bn"], "data.batch_size": [4, 8]},
        executor={"kind": "slurm", "cluster": "debug", "timeout_min": 10, "gpus_per_node": 0},
    )
    spec = load_grid(path)
    assert run_grid(spec) == 0
    results = cell_results(spec.run_dir)
    assert sorted(r["batch_size"] for r in results.values()) == [4, 8]
    assert all(r["status"] == "finished" for r in results.values())


def test_emit_and_array_script_select_the_right_cell(tmp_path, fashion_dir, capsys):
    path = write_grid(tmp_path, fashion_dir)
    spec = load_grid(path)
    assert run_grid(spec, emit=True) == 0
    out = capsys.readouterr().out  # the job's resources from the grid file (issue 37)
    assert "sbatch args: --nodes=1 --ntasks-per-node=1 --gres=gpu:1 --cpus-per-task=8" in out
    lines = (spec.run_dir / "cells.txt").read_text().splitlines()
    assert len(lines) == 4 and all("smallbatch.cli fit" in line for line in lines)
    script = ROOT / "jobs" / "array.sbatch"
    env = {**os.environ, "SMALLBATCH_LAUNCH": "echo", "SLURM_ARRAY_TASK_ID": "2"}
    cells = str(spec.run_dir / "cells.txt")
    done = subprocess.run(["bash", str(script), cells], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip().splitlines()[-1]
    assert printed.split()[-1] == lines[2].split()[-1]  # the --group value ends each line
    assert lines[2].split("--run_dir ")[1].split()[0] in printed
    env["SLURM_ARRAY_TASK_ID"] = "9"
    done = subprocess.run(["bash", str(script), cells], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "no cell 9" in done.stderr


def test_grid_cell_with_the_example_plugin(tmp_path, fashion_dir):  # the fast lane's local grid
    from smallbatch.norms import available_norms

    if "bcn" not in available_norms():
        pytest.skip(
            "example plugin not installed (scripts/test.sh installs examples/smallbatch-bcn)"
        )
    path = write_grid(tmp_path, fashion_dir, axes={"model.norm": ["bcn"], "data.batch_size": [2]})
    spec = load_grid(path)
    assert run_grid(spec) == 0
    (result,) = cell_results(spec.run_dir).values()
    assert result["status"] == "finished" and result["norm"] == "bcn"


@pytest.mark.slow
def test_grid_sweeping_an_argument_outside_the_name_logs_unique_wandb_runs(tmp_path, fashion_dir):
    """Two cells that share norm, batch and seed and differ in norm_args: distinct W&B run
    names (label + digest), read back from the offline runs with the right config."""
    from smallbatch.run.wandb_offline import read_offline_run

    wandb_logger = {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {}}
    axes = {"model.norm": ["brn"], "model.norm_args": [{"momentum": 0.1}, {"momentum": 0.01}]}
    args = {"trainer.logger": wandb_logger, "data.batch_size": 8, "model.norm_batch": 4}
    path = write_grid(tmp_path, fashion_dir, axes=axes, args=args)
    spec = load_grid(path)
    assert run_grid(spec) == 0
    runs = [read_offline_run(f) for f in spec.run_dir.glob("cells/*/wandb/offline-run-*")]
    assert len(runs) == 2
    names = {r["name"] for r in runs}
    assert len(names) == 2 and all(n.startswith("brn-nb4-pb8-") for n in names)
    assert {r["config"]["norm_args"]["momentum"] for r in runs} == {0.1, 0.01}
    for r in runs:
        assert r["config"]["norm"] == "brn" and r["config"]["normalization_batch"] == 4
        assert r["group"] == "g" and not [k for k in r["config"] if k.startswith("cfg/")]


def test_fixed_total_batch_keeps_the_batch_and_collapses_batch_free_norms(tmp_path, fashion_dir):
    axes = {
        "model.norm": ["bn", "gn", "syncbn"],
        "model.norm_batch": [1, 4, 16],
        "seed_everything": [0],
    }
    spec = load_grid(write_grid(tmp_path, fashion_dir, axes=axes, fixed_total_batch=16))
    cells = {c.label: c.overrides for c in spec.cells()}
    assert sorted(cells) == ["bn-nb1-pb16-s0", "bn-nb16-s0", "bn-nb4-pb16-s0", "gn-nb16-s0",
                             "syncbn-nb16-s0"]  # fmt: skip
    assert all(o["data.batch_size"] == 16 for o in cells.values())
    assert cells["bn-nb4-pb16-s0"]["model.norm_batch"] == 4
    assert cells["gn-nb16-s0"]["model.norm_batch"] is None
    assert cells["syncbn-nb16-s0"]["model.norm_batch"] is None
    with pytest.raises(GridSpecError, match=r"\[3\] do not divide fixed_total_batch 16"):
        axes["model.norm_batch"] = [3, 4]
        load_grid(write_grid(tmp_path, fashion_dir, name="h", axes=axes, fixed_total_batch=16))


@pytest.mark.parametrize("protocol", [{"fixed_total_batch": 16}, {"ghost_devices": 4}])
def test_the_old_spelling_of_the_b_axis_still_runs_with_a_notice(
    tmp_path, fashion_dir, capsys, protocol
):
    """Grid files from before `model.norm_batch` named the b axis `data.batch_size`: the same
    cells (the same folders, so earlier results are found), and one line saying so."""
    axes = {"model.norm": ["bn", "gn"], "model.norm_batch": [2, 4]}
    new = load_grid(write_grid(tmp_path, fashion_dir, name="new", axes=axes, **protocol))
    assert "note:" not in capsys.readouterr().err
    old_axes = {"model.norm": ["bn", "gn"], "data.batch_size": [2, 4]}
    rule = [{"when": {"data.batch_size": 2}, "set": {"model.lr": 0.05}}]
    old = load_grid(write_grid(tmp_path, fashion_dir, name="old", axes=old_axes,
                               overrides=rule, **protocol))  # fmt: skip
    notice = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notice) == 1 and "axes.data.batch_size is read as axes.model.norm_batch" in notice[0]
    old_cells = {c.label: c.overrides for c in old.cells()}
    assert [c.label for c in new.cells()] == list(old_cells)
    assert {c.folder for c in new.cells()} != {c.folder for c in old.cells()}  # the override
    assert all(o.get("model.lr") == 0.05 for label, o in old_cells.items() if "-nb2" in label
               and label.startswith("bn"))  # fmt: skip


def test_emit_and_dry_run_resume_through_the_same_checkpoint_check(tmp_path, fashion_dir):
    """cells.txt never points at an unreadable last.ckpt: --emit sets it aside as the local
    executor would (dry-run only says so and moves nothing)."""
    path = write_grid(tmp_path, fashion_dir, axes={"model.norm": ["bn"], "data.batch_size": [4]})
    spec = load_grid(path)
    (cell,) = spec.cells()
    last = spec.run_dir / "cells" / cell.folder / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"not a checkpoint")
    assert run_grid(spec, dry_run=True) == 0
    assert last.exists()
    assert run_grid(spec, emit=True) == 0
    (line,) = (spec.run_dir / "cells.txt").read_text().splitlines()
    assert "--ckpt_path" not in line and not last.exists()
    assert len(list(last.parent.glob("unreadable-*-last.ckpt"))) == 1
