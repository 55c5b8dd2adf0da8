"""Progress without a terminal: a cell's log and the grid's output say where training is."""

import pytest
from grid_files import grid_proc, write_grid

from smallbatch.run.progress import duration


@pytest.mark.slow
def test_a_grid_piped_to_a_file_prints_each_cells_progress_with_an_eta(tmp_path, fashion_dir):
    # 64 images at batch 8: 8 steps, a line every 5 % of them (every step)
    path = write_grid(tmp_path, fashion_dir, axes={"model.norm": ["bn"], "data.batch_size": [8]})
    proc = grid_proc(path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    (cell,) = (tmp_path / "runs" / "g" / "cells").iterdir()
    log = (cell / "stdout.log").read_text()
    assert "progress: step 8/8 (100%) epoch 1/1 loss " in log, log[-2000:]
    assert "ETA 0s" in log and "progress: step 4/8 (50%)" in log
    echoed = [line for line in out.splitlines() if f"[grid] {cell.name} progress: step" in line]
    assert len(echoed) >= 8, out[-2000:]  # every line the cell wrote, in the grid's output
    assert out.index("[grid] start") < out.index(echoed[0]) < out.index("[grid] finish")


def test_durations_read_at_a_glance():
    assert [duration(s) for s in (0, 42.4, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]


@pytest.mark.slow
def test_dry_run_estimates_each_cell_and_the_grid_from_timed_steps(tmp_path, fashion_dir):
    axes = {"model.norm": ["bn", "gn"], "data.batch_size": [8], "seed_everything": [0, 1]}
    path = write_grid(tmp_path, fashion_dir, axes=axes)
    proc = grid_proc(path, "--dry-run")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    lines = [line for line in out.splitlines() if "steps x" in line]
    assert len(lines) == 4 and all(": 8 steps x " in line for line in lines), out  # 64/8 x 1
    assert "from 5 timed steps of each distinct cell (2):" in out  # seeds cost the same
    assert "images evaluated (32-true)" in out or "images evaluated (bf16-mixed)" in out
    assert "estimate: 4 cells to run, 32 steps," in out and "1 at once: about" in out
    assert not list((tmp_path / "runs").rglob("result.json"))  # nothing ran
    proc = grid_proc(path, "--dry-run", "--no-estimate")
    out, _ = proc.communicate(timeout=600)
    assert "estimate:" not in out and "estimate on" not in out


def test_a_cluster_grid_states_its_step_time_and_the_dry_run_prints_gpu_hours(
    tmp_path, fashion_dir
):
    """executor.step_time_s (per batch size): each cell's steps are counted per rank over the
    job's 2 nodes x 4 GPUs (built on this CPU, where no GPU is), then steps x stated time x 8
    GPUs. 640 images / 8 ranks = 80 a rank: 10 steps of 8, 5 of 16, for 100 epochs."""
    from smallbatch.grid import load_grid
    from smallbatch.grid.estimate import estimate_lines
    from smallbatch.grid.spec import GridSpecError

    executor = {"kind": "slurm", "nodes": 2, "gpus_per_node": 4, "cpus_per_task": 1,
                "step_time_s": {8: 0.5, 16: 0.25}}  # fmt: skip
    args = {"trainer.accelerator": "gpu", "trainer.devices": 4, "trainer.num_nodes": 2,
            "trainer.strategy": "ddp", "trainer.max_epochs": 100,
            "data.train_subset": 640}  # fmt: skip
    axes = {"model.norm": ["bn"], "data.batch_size": [8, 16], "seed_everything": [0, 1]}
    spec = load_grid(write_grid(tmp_path, fashion_dir, axes=axes, args=args, executor=executor))
    lines = estimate_lines(spec, list(spec.cells()), parallel=2)
    assert lines[0].startswith("estimate from the stated step time") and "8 GPUs a cell" in lines[0]
    per_cell = [line for line in lines if "steps x" in line]
    assert sum(": 1,000 steps x 0.5 s = 8m20s, 1.1 GPU-hours" in line for line in per_cell) == 2
    assert sum(": 500 steps x 0.25 s = 2m05s, 0.3 GPU-hours" in line for line in per_cell) == 2
    # 2 x (500 s + 125 s) x 8 GPUs = 2.8 GPU-hours; 2 cells at once: 625 s of wall clock
    assert lines[-1] == ("estimate: 4 cells to run, 3,000 steps, 2.8 GPU-hours; 2 at once "
                         "(16 GPUs): about 10m25s")  # fmt: skip
    executor["step_time_s"] = {8: 0.5}
    spec = load_grid(write_grid(tmp_path, fashion_dir, axes=axes, args=args, executor=executor))
    with pytest.raises(GridSpecError, match="states no time for data.batch_size 16"):
        estimate_lines(spec, list(spec.cells()), parallel=2)
