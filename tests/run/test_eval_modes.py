"""Evaluation modes are one map: a new entry is computed by the final evaluation, recorded in
result.json and read by the report's --eval, --diff and --attribution (docs/grids.md)."""

import pytest
from conftest import tiny_fit_args

from smallbatch import eval_modes
from smallbatch.analysis.attribution import attribution_table
from smallbatch.analysis.report import main as report_main
from smallbatch.eval_modes import EVAL_MODES, EvalMode, FinalWeights
from smallbatch.results import read_result
from smallbatch.run.cell import lightning_main


def _batch_4x(final: FinalWeights) -> float:
    return final.with_batch_statistics(4 * final.normalization_batch)


def test_the_shipped_modes_and_the_attribution_chain():
    assert list(EVAL_MODES) == ["ema", "precise", "precise_pooled", "batch"]
    assert eval_modes.attribution_chain() == [
        ("ema", ""),
        ("precise", "estimate"),
        ("batch", "inconsistency"),
    ]
    assert list(eval_modes.computed_modes()) == ["precise", "precise_pooled", "batch"]


@pytest.mark.slow
def test_a_mode_added_as_one_entry_is_computed_recorded_and_reported(
    fashion_dir, tmp_path, monkeypatch, capsys
):
    extra = EvalMode("batch statistics of test groups of 4b samples", _batch_4x, "wider")
    monkeypatch.setitem(EVAL_MODES, "batch_4x", extra)
    for seed in (0, 1):
        run = tmp_path / "runs" / f"s{seed}"
        args = tiny_fit_args(fashion_dir, run, "--model.norm", "bn", "--seed_everything", str(seed))
        lightning_main(args + ["--model.precise_images", "64", "--data.batch_size", "4"])
        acc = read_result(run)["eval_acc"]
        assert set(acc) == set(EVAL_MODES)
        assert 0 <= acc["batch_4x"] <= 1 and acc["batch_4x"] != acc["batch"]
    assert (
        report_main([str(tmp_path / "runs"), "--eval", "batch_4x", "--diff", "batch", "batch_4x"])
        == 0
    )
    out = capsys.readouterr().out
    assert "batch statistics of test groups of 4b samples" in out  # the caption
    assert "Accuracy with `batch_4x` minus accuracy with `batch`" in out
    results = [read_result(tmp_path / "runs" / f"s{s}") for s in (0, 1)]
    table = attribution_table(results)
    assert "| ema accuracy | drop | estimate | inconsistency | wider | remaining |" in table
    assert "wider = batch_4x − batch" in table


def test_an_unknown_mode_is_refused_with_the_known_ones(tmp_path, capsys):
    (tmp_path / "result.json").write_text("{}")
    with pytest.raises(SystemExit):
        report_main([str(tmp_path), "--eval", "nope"])
    assert "precise_pooled" in capsys.readouterr().err
