"""A shrunk segmentation grid (issue 34): a backbone pretrained by a classification fit, frozen
under two head norms, and a from-scratch row, under the fixed total batch; a frozen backbone
with a GN head is batch-free (one cell), one with a BN head splits into ghost batches; the
report and its attribution read the grid's mIoU, and refuse a folder that mixes it with the
classification run's accuracy."""

import pytest
import yaml
from conftest import ROOT, tiny_fit_args
from grid_files import cell_results

from smallbatch.analysis.report import main as report_main
from smallbatch.grid import load_grid, run_grid
from smallbatch.grid.spec import cell_norms, model_takes_ghost_batches
from smallbatch.run.cell import lightning_main

SHRUNK = {
    "trainer.max_epochs": 1, "trainer.logger": False, "trainer.enable_model_summary": False,
    "data.canvas": 56, "data.scale": [1.0, 1.5], "data.train_scenes": 48,
    "data.test_scenes": 16, "model.precise_images": 16,
}  # fmt: skip


def test_a_frozen_backbone_takes_ghost_batches_only_through_its_head():
    frozen_gn = {"model.norm": "frozen_bn", "model.head_norm": "gn"}
    assert cell_norms(frozen_gn) == [("frozen_bn", None), ("gn", None)]
    assert model_takes_ghost_batches(cell_norms(frozen_gn)) is False
    assert model_takes_ghost_batches(cell_norms({**frozen_gn, "model.head_norm": "cbn"}))
    assert model_takes_ghost_batches(cell_norms({"model.norm": "bn"}))


@pytest.mark.slow
def test_a_shrunk_segmentation_grid_runs_and_reports_miou(tmp_path, fashion_dir, capsys):
    pretrained = tmp_path / "pretrained" / "resnet8-bn"
    lightning_main(tiny_fit_args(fashion_dir, pretrained))
    spec = {
        "name": "seg",
        "base_config": str(ROOT / "configs" / "seg_fashion.yaml"),
        "fixed_total_batch": 4,
        "axes": {
            "model.norm": ["frozen_bn", "bn"],
            "model.head_norm": ["bn", "gn"],
            "model.norm_batch": [4, 2],
            "seed_everything": [0],
        },  # fmt: skip
        "exclude": [{"model.norm": "bn", "model.head_norm": "gn"}],
        "overrides": [
            {
                "when": {"model.norm": "frozen_bn"},
                "set": {"model.backbone_weights": str(pretrained / "checkpoints" / "last.ckpt")},
            }
        ],
        "args": {**SHRUNK, "data.data_dir": fashion_dir},
        "executor": {"kind": "local", "max_parallel": 2, "threads_per_job": 1, "retries": 0},
        "run_root": str(tmp_path / "runs"),
    }
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    grid = load_grid(path)
    assert run_grid(grid) == 0
    results = cell_results(grid.run_dir)
    assert len(results) == 5  # frozen+BN at b 4, 2; frozen+GN once; scratch BN at b 4, 2
    assert all(r["status"] == "finished" and r["metric"] == "miou" for r in results.values())
    free = [r for r in results.values() if r["batch_free"]]
    assert len(free) == 1 and free[0]["norm"] == "frozen_bn+gn"  # the run names both norms
    capsys.readouterr()
    assert report_main([str(grid.run_dir), "--attribution"]) == 0
    out = capsys.readouterr().out
    assert "mIoU (%), final evaluation (`final_val_miou`)" in out
    assert "| ema mIoU | drop |" in out
    assert "| frozen_bn+gn (batch-free: the same at every b) |" in out
    with pytest.raises(SystemExit):  # the pretraining run (accuracy) beside the grid (mIoU)
        report_main([str(tmp_path)])
    assert "different metrics (acc, miou)" in capsys.readouterr().err
