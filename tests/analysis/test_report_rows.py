"""The report's rows: incomplete runs never bend the table, and two rows compared per b."""

import json

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
    assert (
        "| bn | 90.00 ± " in out and "| gn | 87.00 (n=1) | 1 |" in out
    )  # labels name no precision
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


def test_a_recipe_names_its_row_and_stands_for_the_settings_it_changes(tmp_path, capsys):
    run = tmp_path / "grid"
    authors = {"norm_args": {"window": 4, "burnin": 0.6666, "unit": "fraction"}}
    for seed in (0, 1):
        write_result(run, f"bn-s{seed}", "bn", 32, seed, 0.90)
        write_result(run, f"cbn-u-s{seed}", "cbn", 32, seed, 0.80)
        write_result(run, f"cbn-a-s{seed}", "cbn", 32, seed, 0.85, recipe="authors", **authors)
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "| bn | 89.00 ± 0.00 (n=2) | 2 |" in out  # a norm with one protocol: no label part
    assert "| cbn (recipe=uniform) | 79.00 ± 0.00 (n=2) | 2 |" in out
    assert "| cbn (recipe=authors) | 84.00 ± 0.00 (n=2) | 2 |" in out
    assert "burnin=" not in out and "window=" not in out  # what the recipe set, not repeated


def test_a_norm_run_only_under_a_recipe_still_says_so(tmp_path, capsys):
    run = tmp_path / "grid"
    write_result(run, "bn-s0", "bn", 32, 0, 0.90)
    write_result(run, "cbn-s0", "cbn", 32, 0, 0.85, recipe="authors")
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "| cbn (recipe=authors) | 84.00 | 1 |" in out and "| bn | 89.00 | 1 |" in out


EPYC = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "cpu_amx": False, "cpu_bf16_native": False}
XEON = {"cpu": "Intel Xeon", "cpu_capability": "AVX512", "cpu_amx": True, "cpu_bf16_native": True}


def _on(run, folder, machine):
    """Give a written result the machine it ran on."""
    path = run / "cells" / folder / "result.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "machine": machine}))


def _mixed_grid(tmp_path):
    run = tmp_path / "grid"
    for seed, machine in ((0, EPYC), (1, EPYC), (2, XEON)):
        write_result(run, f"bn-s{seed}", "bn", 32, seed, 0.90 + seed / 100)
        _on(run, f"bn-s{seed}", machine)
        write_result(run, f"gn-s{seed}", "gn", 32, seed, 0.88 + seed / 100)
        _on(run, f"gn-s{seed}", EPYC)  # gn's seed 2 ran on the EPYC, bn's on the Xeon
    return run


def test_a_row_whose_seeds_ran_on_different_machines_is_marked_and_its_machines_listed(
    tmp_path, capsys
):
    assert report_main([str(_mixed_grid(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "| bn † | 90.00 ± 2.48 | 3 |" in out and "| gn | 88.00 ± 2.48 | 3 |" in out
    assert "the values ran on 2 kinds of machine" in out
    assert "- bn †: AMD EPYC (AVX2) × 2, Intel Xeon (AVX512, AMX) × 1" in out
    assert "- gn: AMD EPYC (AVX2) × 3" in out


def test_machine_filter_tabulates_one_kind_into_its_own_files(tmp_path, capsys):
    run = _mixed_grid(tmp_path)
    assert report_main([str(run), "--machine", "epyc"]) == 0
    out = capsys.readouterr().out
    assert "| bn | 89.50 ± 6.35 (n=2) | 2 |" in out and "†" not in out
    assert "Machine: every value ran on AMD EPYC (AVX2)." in out
    assert (run / "report" / "results-machine-epyc.md").exists()
    assert not (run / "report" / "results.md").exists()  # the full table is not overwritten
    with pytest.raises(SystemExit) as exc:
        report_main([str(run), "--machine", "graviton"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--machine 'graviton' matches no run under" in err and "Intel Xeon (AVX512, AMX)" in err


def test_a_difference_pairs_a_seed_only_on_one_kind_of_machine(tmp_path, capsys):
    assert report_main([str(_mixed_grid(tmp_path)), "--diff", "bn", "gn"]) == 0
    out = capsys.readouterr().out
    # seeds 0 and 1 both on the EPYC: gn - bn = -2.00 each; seed 2 ran on two machines
    assert "| 32 | 89.50 ± 6.35 (n=2) | 87.50 ± 6.35 (n=2) | -2.00 ± 0.00 (n=2) | 2 |" in out
    assert "1 seed pair(s) left out: the two runs of the seed ran on different kinds" in out


def test_runs_of_cells_the_grid_no_longer_has_are_listed_not_averaged(tmp_path, capsys):
    run = tmp_path / "grid"
    for seed in (0, 1, 2):
        write_result(run, f"bn-s{seed}", "bn", 32, seed, 0.90 + seed / 100)
    # the seed axis was edited to [0, 1] and the grid run again: its cells.json lists two
    (run / "cells.json").write_text(json.dumps([{"folder": "bn-s0"}, {"folder": "bn-s1"}]))
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "| bn | 89.50 ± 6.35 (n=2) | 2 |" in out  # seeds 0 and 1 only
    assert "Not in the grid's cells any more, left out (1; the grid file changed" in out
    assert "`bn-s2`" in out


def test_a_cell_the_grid_is_running_again_is_shown_running_not_failed(tmp_path, capsys):
    import os
    import socket

    run = tmp_path / "grid"
    write_result(run, "bn-s0", "bn", 32, 0, 0.90)
    write_result(run, "bn-s1", "bn", 32, 1, None, status="failed")
    marker = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-12-07T10:00:00Z"}
    (run / "cells" / "bn-s1" / "running.json").write_text(json.dumps(marker))
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "(seed 1): running now (an attempt since 2026-12-07T10:00:00Z, pid " in out
    assert "the last one ended failed)" in out
    # a marker left by a grid that was killed (its process gone) changes nothing
    marker["pid"] = 2**22 + 12345  # beyond pid_max: no such process
    (run / "cells" / "bn-s1" / "running.json").write_text(json.dumps(marker))
    assert report_main([str(run)]) == 0
    assert "(seed 1): failed" in capsys.readouterr().out
