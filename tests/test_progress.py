"""Progress without a terminal: a cell's log and the grid's output say where training is."""

from test_grid import grid_proc, write_grid

from smallbatch.run.progress import duration


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
