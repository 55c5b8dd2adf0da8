"""The report's rows: incomplete runs never bend the table, and two rows compared per b."""

import pytest
from test_report import write_result

from smallbatch.analysis.report import main as report_main


def test_an_interrupted_cell_is_listed_as_incomplete_never_a_row(tmp_path, capsys):
    run = tmp_path / "grid"
    # a user stopped the bf16 cell and re-ran the grid in fp32: one finished row remains
    for seed, acc in ((0, 0.90), (1, 0.92)):
        write_result(run, f"bn-s{seed}", "bn", 32, seed, acc, **{"trainer.precision": "32-true"})
    write_result(run, "bn-s2-bf16", "bn", 32, 2, None, status="interrupted",
                 **{"trainer.precision": "bf16-mixed"})  # fmt: skip
    write_result(run, "gn-s0", "gn", 32, 0, 0.88, **{"trainer.precision": "32-true"})
    write_result(run, "gn-s1", "gn", 32, 1, None, status="failed",
                 **{"trainer.precision": "32-true"})  # fmt: skip
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "| bn | 90.00 ± " in out and "| gn | 87.00 | 1 |" in out  # labels name no precision
    assert "precision=" not in out and "| failed |" not in out
    assert "Incomplete, not in the table (2; run the grid again to finish):" in out
    assert "(seed 2): interrupted" in out and "(seed 1): failed" in out
    csv_text = (run / "report" / "results.csv").read_text()
    assert "bf16" not in csv_text


def test_a_seed_finished_after_an_interruption_is_not_listed(tmp_path, capsys):
    run = tmp_path / "grid"
    write_result(run, "bn-old", "bn", 32, 0, None, status="interrupted")
    write_result(run, "bn-new", "bn", 32, 0, 0.90)
    assert report_main([str(run)]) == 0
    assert "Incomplete" not in capsys.readouterr().out


def _two_norms(tmp_path):
    run = tmp_path / "grid"
    for seed in (0, 1, 2):
        for b, bn_acc in ((32, 0.90), (2, 0.60)):
            write_result(run, f"bn-nb{b}-s{seed}", "bn", b, seed, bn_acc + seed / 100)
            write_result(run, f"gn-nb{b}-s{seed}", "gn", b, seed, 0.88 + seed / 200)
    write_result(run, "gn-nb2-s3", "gn", 2, 3, 0.50)  # a seed BN did not run: not paired
    return run


def test_diff_of_two_norms_is_per_b_and_paired_by_seed(tmp_path, capsys):
    run = _two_norms(tmp_path)
    assert report_main([str(run), "--diff", "bn", "gn"]) == 0
    out = capsys.readouterr().out
    assert "| b | bn | gn | difference | seeds |" in out
    # final = best - 0.01; gn - bn per seed at b=32: -2.00, -2.50, -3.00: -2.50 ± t(2)·0.5/√3
    assert "| 32 | 90.00 ± 2.48 | 87.50 ± 1.24 | -2.50 ± 1.24 | 3 |" in out
    assert "| 2 | 60.00 ± 2.48 | 87.50 ± 1.24 | +27.50 ± 1.24 | 3 |" in out  # seed 3 unpaired
    assert "gn` minus `bn`" in (run / "report" / "differences.md").read_text()


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (["bn", "gnn"], "'gnn' is no row of this table; did you mean 'gn'?"),
        (["ema", "gn"], "give two evaluation modes"),
        (["bn", "bn"], "are the same row"),
    ],
)
def test_diff_of_unknown_rows_is_one_line_before_anything_is_written(
    tmp_path, capsys, pair, message
):
    run = _two_norms(tmp_path)
    with pytest.raises(SystemExit) as exc:
        report_main([str(run), "--diff", *pair])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (run / "report").exists()


def test_a_mistyped_report_folder_gets_a_suggestion(tmp_path, capsys):
    (tmp_path / "quickstart").mkdir()
    with pytest.raises(SystemExit):
        report_main([str(tmp_path / "quickstrat")])
    assert f"did you mean '{tmp_path / 'quickstart'}'" in capsys.readouterr().err
