"""The report on segmentation results (issue 34): mIoU values under their own keys, rows that
say pretrained or from scratch, and an attribution measured from a chosen reference row."""

import json

import pytest

from smallbatch.analysis.report import main as report_main


def _write(run, folder, norm, b, seed, miou, weights=None, head=None):
    cell = run / "cells" / folder
    cell.mkdir(parents=True)
    modes = {"ema": miou, "precise": miou + 0.01, "precise_pooled": miou, "batch": miou + 0.02}
    result = {
        "status": "finished", "task": "segmentation", "metric": "miou",
        "norm": norm if head is None else f"{norm}+{head}", "batch_size": 8,
        "normalization_batch": b, "seed": seed, "final_val_miou": miou,
        "best_val_miou": miou, "median_last5_val_miou": miou, "val_miou_history": [miou],
        "eval_miou": modes,
        "setting": {"model.norm": norm, "model.head_norm": head, "model.norm_batch": b,
                    "model.backbone_weights": weights, "data.init_args.batch_size": 8},
    }  # fmt: skip
    (cell / "result.json").write_text(json.dumps(result))


@pytest.fixture
def seg_run(tmp_path):
    run = tmp_path / "seg"
    for seed in (0, 1):
        for b, drop in ((8, 0.0), (2, 0.05)):
            _write(run, f"bn-pt-{b}-{seed}", "bn", b, seed, 0.70 - drop + seed / 100, "w.ckpt")
            _write(run, f"bn-sc-{b}-{seed}", "bn", b, seed, 0.50 - drop + seed / 100)
            _write(run, f"fz-{b}-{seed}", "frozen_bn", b, seed, 0.60 - drop, "w.ckpt", "bn")
    return run


def test_rows_say_pretrained_or_from_scratch_and_the_caption_names_miou(seg_run, capsys):
    assert report_main([str(seg_run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mIoU (%), final evaluation (`final_val_miou`)")
    assert "| bn (pretrained) | 70.50 ± 6.35 (n=2) | 65.50 ± 6.35 (n=2) | 2 |" in out
    assert "| bn (from scratch) | 50.50" in out and "| frozen_bn+bn | 60.00" in out


def test_the_attribution_is_measured_from_the_reference_row(seg_run, capsys):
    assert report_main([str(seg_run), "--attribution", "--reference", "frozen_bn+bn"]) == 0
    out = capsys.readouterr().out
    assert "Drop from frozen_bn+bn at b = 8 (`ema`)" in out
    assert "| frozen_bn+bn | 2 | 55.00 ± 0.00 (n=2) | +5.00 ± 0.00 (n=2) | +1.00" in out
    with pytest.raises(SystemExit):
        report_main([str(seg_run), "--attribution", "--reference", "gn"])
    err = capsys.readouterr().err
    assert "--reference 'gn' is no row at b = 8" in err and "'frozen_bn+bn'" in err


def test_the_workspace_view_of_a_segmentation_grid_charts_miou():
    from smallbatch.analysis.dashboard import workspace_spec

    body = (
        workspace_spec("team", "proj", "seg", measure="miou")
        ._to_model()
        .model_dump(by_alias=True, exclude_none=True)
    )
    sections = body["spec"]["section"]["panelBankConfig"]["sections"]
    titles = [p["config"].get("chartTitle", "") for s in sections for p in s["panels"]]
    assert any(t.startswith("final 1 − mIoU (%) vs normalization batch") for t in titles)
    curves = [p["config"] for p in sections[1]["panels"] if "Line Plot" in p["viewType"]]
    assert {c["metrics"][0] for c in curves} == {"val/miou", "train/loss_step"}
