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
