"""A NaN evaluation is never an accuracy (issue 35, item 1): a fit whose evaluation gives NaN
logits ends diverged, saying where; a final evaluation mode that does has no accuracy in that
mode, and the report counts the run as diverged there (the other modes' tables keep it)."""

import pytest
from conftest import tiny_fit_args

from smallbatch.analysis.report import main as report_main
from smallbatch.results import read_result
from smallbatch.run.cell import lightning_main


@pytest.mark.slow
def test_nan_in_the_fits_own_evaluation_marks_the_run_diverged(fashion_dir, tmp_path, capsys):
    run = tmp_path / "run"
    lightning_main(tiny_fit_args(fashion_dir, run, "--model.norm", "sb_test_helpers.NanInEvalNorm"))
    result = read_result(run)
    assert result["status"] == "diverged"
    assert result["error"] == (
        "evaluation after epoch 1 (running statistics, mode ema): 128 of 128 samples gave "
        "non-finite outputs"
    )
    assert result["final_val_acc"] is None and result["val_acc_history"] == []
    assert "non-finite outputs: run diverged" in capsys.readouterr().out
    assert report_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| NanInEvalNorm | diverged | 0 |" in out  # counted, never a number


@pytest.mark.slow
def test_nan_in_one_final_evaluation_mode_leaves_the_others(fashion_dir, tmp_path, capsys):
    run = tmp_path / "run"
    norm = "sb_test_helpers.NanPopulationNorm"
    lightning_main(tiny_fit_args(fashion_dir, run, "--model.norm", norm,
                                 "--model.precise_images", "64"))  # fmt: skip
    result = read_result(run)
    assert result["status"] == "finished" and 0 <= result["final_val_acc"] <= 1
    # every mode that hands the layer statistics got NaN ones; the fit's own (ema) stands
    assert result["eval_acc"]["ema"] == result["final_val_acc"]
    assert all(result["eval_acc"][m] is None for m in ("precise", "precise_pooled", "batch"))
    assert result["eval_errors"]["precise"] == (
        "final evaluation, mode precise: 128 of 128 samples gave non-finite outputs"
    )
    capsys.readouterr()
    assert report_main([str(tmp_path), "--eval", "precise"]) == 0
    assert "| NanPopulationNorm | diverged | 0 |" in capsys.readouterr().out
    assert report_main([str(tmp_path)]) == 0  # the ema table: the run's accuracy
    assert (
        f"| NanPopulationNorm | {100 * result['final_val_acc']:.2f} | 1 |"
        in capsys.readouterr().out
    )
