"""`smallbatch report` on fixture run folders: grouping by setting, metric, CSV and a real PNG."""

import csv
import json

import pytest

from smallbatch.analysis.report import main as report_main
from smallbatch.analysis.stats import t975

FIXTURE = {  # (norm, batch): best accuracies over seeds 0, 1
    ("bn", 32): [0.90, 0.92],
    ("bn", 2): [0.50, 0.60],
    ("gn", 32): [0.88, 0.88],
    ("gn", 2): [0.87, 0.89],
}


def _setting(norm, batch, norm_batch=None, **extra):
    """A run's flat setting as the CLI records it (no seed)."""
    return {
        "model.norm": norm,
        "model.norm_args": extra.pop("norm_args", None),
        "model.norm_batch": norm_batch,
        "data.init_args.batch_size": batch,
        "trainer.max_epochs": extra.pop("epochs", 1),
        **extra,
    }


def write_result(run, folder, norm, batch, seed, acc, norm_batch=None, status="finished", **kw):
    cell = run / "cells" / folder
    cell.mkdir(parents=True)
    result = {
        "status": status,
        "norm": norm,
        "batch_size": batch,
        "normalization_batch": norm_batch or batch,
        "seed": seed,
        "best_val_acc": acc,
        "final_val_acc": None if acc is None else acc - 0.01,
        "median_last5_val_acc": None if acc is None else acc - 0.02,
        "setting": _setting(norm, batch, norm_batch, **kw),
    }
    (cell / "result.json").write_text(json.dumps(result))


def make_run(tmp_path):
    run = tmp_path / "grid"
    run.mkdir()
    (run / "grid.json").write_text(json.dumps({"name": "fixture"}))
    for (norm, batch), accs in FIXTURE.items():
        for seed, acc in enumerate(accs):
            write_result(run, f"{norm}-nb{batch}-s{seed}", norm, batch, seed, acc)
    write_result(run, "bn-nb2-s2", "bn", 2, 2, None, status="diverged")
    return run


def test_report_table_csv_and_plot_with_final_metric_by_default(tmp_path, capsys):
    run = make_run(tmp_path)
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "final evaluation (`final_val_acc`)" in out and "95% confidence" in out
    ci = 100 * t975(1) * 0.01  # two seeds 0.02 apart: s/sqrt(2) = 0.01
    assert "| norm | b=32 | b=2 | seeds |" in out
    assert f"| bn | 90.00 ± {ci:.2f} (n=2) | 54.00 ± {5 * ci:.2f} (n=2) (1 div.) | 2 |" in out
    assert f"| gn | 87.00 ± 0.00 (n=2) | 87.00 ± {ci:.2f} (n=2) | 2 |" in out
    md = (run / "report" / "results.md").read_text()
    assert "# fixture" in md and f"| gn | 87.00 ± 0.00 (n=2) | 87.00 ± {ci:.2f} (n=2) | 2 |" in md
    with open(run / "report" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    bn2 = next(r for r in rows if r["norm"] == "bn" and r["normalization_batch"] == "2")
    assert float(bn2["mean"]) == pytest.approx(0.54) and bn2["n"] == "2"
    assert bn2["diverged"] == "1" and float(bn2["ci95"]) == pytest.approx(5 * ci / 100)
    png = (run / "report" / "error_vs_batch.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not list((run / "report").glob("*.tmp*"))


@pytest.mark.parametrize(
    ("metric", "label", "gn2"),
    [("median_last5", "median of the last 5", "86.00"), ("best", "optimistic", "88.00")],
)
def test_report_other_metrics_are_labelled(tmp_path, capsys, metric, label, gn2):
    run = make_run(tmp_path)
    assert report_main([str(run), "--metric", metric]) == 0
    out = capsys.readouterr().out
    assert label in out and f"| gn | {gn2} ± " in out


def test_settings_that_differ_beyond_the_seed_are_separate_rows(tmp_path, capsys):
    """Same norm, batch and seeds, two norm_args values: two rows, each with its own seeds;
    two seeds of one setting: one row."""
    run = tmp_path / "grid"
    for seed, acc in enumerate([0.70, 0.72, 0.74]):
        args = {"momentum": 0.1}
        write_result(run, f"brn-a-s{seed}", "brn", 4, seed, acc, norm_args=args)
    for seed, acc in enumerate([0.60, 0.62]):
        args = {"momentum": 0.01}
        write_result(run, f"brn-b-s{seed}", "brn", 4, seed, acc, norm_args=args)
    for seed in (0, 1):
        write_result(run, f"bn-s{seed}", "bn", 4, seed, 0.8)
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| brn")]
    assert len(rows) == 2
    assert any(
        r.startswith("| brn (momentum=0.1) | 71.00 ± ") and r.endswith("| 3 |") for r in rows
    )
    assert any(
        r.startswith("| brn (momentum=0.01) | 60.00 ± ") and r.endswith("| 2 |") for r in rows
    )
    assert [line for line in out.splitlines() if line.startswith("| bn")] == [
        "| bn | 79.00 ± 0.00 (n=2) | 2 |"
    ]


def test_data_location_and_options_added_later_with_null_default_do_not_split_a_setting(
    tmp_path, capsys
):
    """Seed 0 ran before an option with default None existed and with its data elsewhere."""
    run = tmp_path / "grid"
    write_result(run, "bn-s0", "bn", 4, 0, 0.80, **{"data.init_args.data_dir": "data"})
    write_result(run, "bn-s1", "bn", 4, 1, 0.82, **{"model.backbone_args": None})
    assert report_main([str(run)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| bn")]
    assert rows == ["| bn | 80.00 ± 12.71 (n=2) | 2 |"]


def test_unrelated_runs_in_one_folder_are_not_averaged(tmp_path, capsys):
    run = tmp_path / "runs"
    write_result(run, "a", "bn", 8, 0, 0.40, epochs=1)
    write_result(run, "b", "bn", 8, 0, 0.90, epochs=30)
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "| bn (max_epochs=1) | 39.00 | 1 |" in out
    assert "| bn (max_epochs=30) | 89.00 | 1 |" in out


def test_ghost_and_per_device_rows_are_labelled_when_mixed(tmp_path, capsys):
    run = tmp_path / "runs"
    write_result(run, "plain", "bn", 2, 0, 0.5)
    write_result(run, "ghost", "bn", 32, 0, 0.7, norm_batch=2)
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "| bn | 49.00 | 1 |" in out
    assert "| bn (ghost batches in a per-device batch of 32) | 69.00 | 1 |" in out
    assert "Rows differ in how b is formed" in out


def test_ghost_only_table_says_so_in_the_caption(tmp_path, capsys):
    run = tmp_path / "runs"
    for b in (2, 8):
        write_result(run, f"g{b}", "bn", 32, 0, 0.7, norm_batch=b)
    write_result(run, "g32", "bn", 32, 0, 0.9, norm_batch=32)
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "Every row uses ghost batches in a per-device batch of 32." in out
    assert "| bn | 89.00 | 69.00 | 69.00 | 1 |" in out


def test_invalid_results_are_named_not_dropped(tmp_path, capsys):
    run = make_run(tmp_path)
    bad = run / "cells" / "garbage"
    bad.mkdir()
    (bad / "result.json").write_text("{not json")
    shape = run / "cells" / "shape"
    shape.mkdir()
    (shape / "result.json").write_text(json.dumps([1, 2]))
    word = run / "cells" / "word"
    word.mkdir()
    (word / "result.json").write_text(json.dumps({"norm": "bn", "batch_size": "eight"}))
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "Not included: 3 invalid result file(s)" in out
    assert "`cells/garbage/result.json`" in out and "`cells/shape/result.json`" in out
    assert "'batch_size' must be an integer >= 1, got 'eight'" in out


def test_report_wandb_keeps_one_summary_run_per_grid_in_the_cells_project(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = make_run(tmp_path)
    for cell in (run / "cells").iterdir():  # the cells logged to project "cells-project"
        result = json.loads((cell / "result.json").read_text())
        result["wandb"] = {"project": "cells-project", "id": cell.name, "group": "fixture"}
        (cell / "result.json").write_text(json.dumps(result))
    assert report_main([str(run), "--wandb"]) == 0
    assert report_main([str(run), "--wandb"]) == 0  # a second report updates the same run
    out = capsys.readouterr().out
    assert "workspace view: not saved (offline" in out
    from smallbatch.run.wandb_offline import read_offline_run

    folders = sorted((run / "report" / "wandb").glob("offline-run-*"))
    logged = [read_offline_run(f) for f in folders]
    assert len(logged) == 2 and logged[0]["id"] == logged[1]["id"]
    assert all(r["project"] == "cells-project" for r in logged)
    last = logged[-1]
    assert last["group"] == "fixture" and last["name"] == "fixture-summary"
    assert {"results", "error_vs_batch"} <= {k.split("/")[0] for k in last["history_keys"]}, last[
        "history_keys"
    ]
    # final accuracies are best - 0.01: bn at b=2 over seeds 0.49, 0.59 -> error 46 %
    assert abs(last["summary"]["error/bn/nb2"] - 46.0) < 1e-6
    assert last["summary"]["error_ci95/bn/nb2"] > 0


def test_workspace_view_charts_every_cells_error_against_its_normalization_batch():
    from smallbatch.analysis.dashboard import ERROR_KEY, PLOT_KEY, workspace_spec

    spec = workspace_spec("team", "proj", "fashion_repro")._to_model()
    body = spec.model_dump(by_alias=True, exclude_none=True)
    sections = body["spec"]["section"]["panelBankConfig"]["sections"]
    panels = {p["viewType"]: p["config"] for s in sections for p in s["panels"]}
    main = sections[0]["panels"][0]["config"]  # the GN paper's figure, from the cell runs
    assert main["xAxis"] == "normalization_batch" and main["metrics"] == [ERROR_KEY]
    assert main["groupBy"] == "norm.value" and main["groupAgg"] == "mean"
    assert main["xLogScale"] is True
    scatter = panels["Scatter Plot"]
    assert scatter["xAxis"] == "config:normalization_batch.value"
    assert scatter["xAxisLogScale"] is True
    assert scatter["yAxis"] == f"summary:{ERROR_KEY}"
    assert panels["Media Browser"]["mediaKeys"] == [PLOT_KEY]
    curves = [p["config"] for p in sections[1]["panels"] if "Line Plot" in p["viewType"]]
    assert {c["metrics"][0] for c in curves} == {"val/acc", "train/loss_step"}
    assert all(c["groupBy"] == "norm.value" and c["groupArea"] == "stderr" for c in curves)
    runset = body["spec"]["section"]["runSets"][0]
    assert runset["filters"]["filters"] == [
        {"key": {"section": "run", "name": "group"}, "op": "=", "value": "fashion_repro",
         "disabled": False}
    ]  # fmt: skip


def test_fixed_total_batch_table_draws_batch_free_and_synced_rows_flat(tmp_path, capsys):
    run = tmp_path / "runs"
    for b, acc in ((32, 0.9), (8, 0.88), (2, 0.7)):
        write_result(run, f"bn{b}", "bn", 32, 0, acc, norm_batch=b)
    write_result(run, "gn", "gn", 32, 0, 0.85)
    write_result(run, "syncbn", "syncbn", 32, 0, 0.91)
    for folder in ("gn",):
        path = run / "cells" / folder / "result.json"
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "batch_free": True}))
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "| bn | 89.00 | 87.00 | 69.00 | 1 |" in out
    assert "| gn (batch-free: the same at every b) | 84.00 | 84.00 | 84.00 | 1 |" in out
    assert "| syncbn (statistics over all 32) | 90.00 | – | – | 1 |" in out
    assert "Every other row uses ghost batches in a per-device batch of 32." in out
    assert "Batch-free rows compute the same thing at every b" in out
    assert "Reading: at b=2, bn 69.0% (-20.0 from b=32); batch-free gn 84.0% at every b." in out


def test_a_setting_given_to_some_norms_only_is_named_in_the_caption(tmp_path, capsys):
    """A grid override (compile some norms) splits no row, so the caption says which norms had it;
    a setting that varies within a norm is left to its row labels."""
    run = tmp_path / "runs"
    for norm, mode in (("bn", None), ("brn", None), ("frn", "default"), ("evonorm_s0", "default")):
        write_result(run, norm, norm, 32, 0, 0.9, **{"model.compile_mode": mode})
    for epochs in (1, 2):
        write_result(run, f"gn{epochs}", "gn", 32, 0, 0.9, epochs=epochs)
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert (
        "Set for some norms only: `compile_mode` is default for evonorm_s0 and frn "
        "(unset for the others)."
    ) in out
    assert "max_epochs` is" not in out and "| gn (max_epochs=2) |" in out
    write_result(run, "gn-compiled", "gn", 32, 1, 0.9, **{"model.compile_mode": "default"})
    assert report_main([str(run)]) == 0
    assert "Set for some norms only" not in capsys.readouterr().out


def _with_evals(run, folder, norm, b, seed, ema, precise, batch, status="finished"):
    write_result(run, folder, norm, 32, seed, ema + 0.01, norm_batch=b, status=status)
    path = run / "cells" / folder / "result.json"
    result = json.loads(path.read_text())
    result["eval_acc"] = {"ema": ema, "precise": precise, "precise_pooled": precise,
                          "batch": batch}  # fmt: skip
    path.write_text(json.dumps(result))


def _eval_run(tmp_path):
    run = tmp_path / "evals"
    run.mkdir()
    for seed in (0, 1):
        _with_evals(run, f"bn-nb32-s{seed}", "bn", 32, seed, 0.90 + seed / 100, 0.91, 0.92)
        _with_evals(run, f"bn-nb2-s{seed}", "bn", 2, seed, 0.60 + seed / 100, 0.70, 0.85)
    return run


def test_diverged_runs_are_counted_beside_the_mean_never_in_it(tmp_path, capsys):
    run = tmp_path / "div"
    for seed, acc in ((0, 0.63), (1, 0.13)):
        write_result(run, f"gn-s{seed}", "gn", 4, seed, acc, status="finished" if seed == 0
                     else "diverged")  # fmt: skip
    assert report_main([str(run)]) == 0
    table = capsys.readouterr().out
    assert "| gn | 62.00 (1 div.) | 1 |" in table  # the diverged 12 % is not averaged in
    assert (
        "Diverged runs (a non-finite loss, or a non-finite evaluation in this mode) are "
        "not averaged" in table
    )


def test_diverged_run_keeps_its_accuracy_before_divergence(tmp_path):
    from smallbatch.run.module import SmallBatchModule

    module = SmallBatchModule(backbone="resnet8", norm="gn", num_classes=10, in_chans=1)
    module.val_history = [0.55]
    module.diverged = True

    class Trainer:  # what on_validation_epoch_end reads
        sanity_checking = False

    module._trainer = Trainer()
    module.val_metrics["acc"].update(
        __import__("torch").zeros(4, 10), __import__("torch").zeros(4).long()
    )
    module.on_validation_epoch_end()  # an evaluation of the NaN weights
    assert module.val_history == [0.55]


@pytest.mark.parametrize(
    "mode, bn32, bn2",
    [
        ("precise", "91.00", "70.00"),
        ("batch", "92.00", "85.00"),
        ("precise-pooled", "91.00", "70.00"),
    ],
)
def test_eval_modes_tabulate_the_final_weights_evaluations(tmp_path, capsys, mode, bn32, bn2):
    run = _eval_run(tmp_path)
    assert report_main([str(run), "--eval", mode]) == 0
    out = capsys.readouterr().out
    assert f"| bn | {bn32} ± 0.00 (n=2) | {bn2} ± 0.00 (n=2) | 2 |" in out
    suffix = mode.replace("-", "_")
    assert (run / "report" / f"results-{suffix}.md").exists()
    assert not (run / "report" / "results.md").exists()  # the default table is not replaced
    assert report_main([str(run)]) == 0
    assert "| bn | 90.50 ± 6.35 (n=2) | 60.50 ± 6.35 (n=2) | 2 |" in capsys.readouterr().out


def test_paired_differences_and_attribution(tmp_path, capsys):
    run = _eval_run(tmp_path)
    assert report_main([str(run), "--diff", "ema", "precise", "--attribution"]) == 0
    out = capsys.readouterr().out
    # precise − ema per seed at b=2: 0.10 and 0.09: mean 9.50 ± t(1)·0.707/√2
    assert "| bn | +0.50 ± 6.35 (n=2) | +9.50 ± 6.35 (n=2) |" in out
    # drop at b=2: 30 pp each seed = estimate 9.5 + inconsistency 15 + remaining 5.5
    assert (
        "| bn | 2 | 60.50 ± 6.35 (n=2) | +30.00 ± 0.00 (n=2) | +9.50 ± 6.35 (n=2) | "
        "+15.00 ± 0.00 (n=2) | +5.50 ± 6.35 (n=2) | 2 |" in out
    )
    assert (run / "report" / "differences.md").exists()


def test_repeated_runs_of_a_seed_count_once(tmp_path, capsys):
    run = tmp_path / "dup"
    write_result(run, "gn-a", "gn", 4, 0, 0.60)
    write_result(run, "gn-b", "gn", 4, 0, 0.70)  # the same seed again
    path = run / "cells" / "gn-b" / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "ended_utc": "2026-12-02T10:00"}))
    write_result(run, "gn-c", "gn", 4, 1, 0.80)
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "| gn | 74.00 ± 63.53 (n=2) | 2 |" in out  # seeds 0 (newest: 0.69) and 1 (0.79)
    assert "1 repeated run(s) of a seed left out" in out


def test_median_of_the_last_five_says_when_runs_made_fewer(tmp_path, capsys):
    run = tmp_path / "few"
    for seed in (0, 1):
        write_result(run, f"gn-s{seed}", "gn", 4, seed, 0.6)
        path = run / "cells" / f"gn-s{seed}" / "result.json"
        path.write_text(json.dumps({**json.loads(path.read_text()),
                                    "val_acc_history": [0.3, 0.5, 0.59]}))  # fmt: skip
    assert report_main([str(run), "--metric", "median_last5"]) == 0
    assert "made only 3 evaluations: their median is over those 3" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_a_bad_grid_json_still_gives_the_table_with_a_note(tmp_path, capsys, content):
    run = make_run(tmp_path)
    (run / "grid.json").write_text(content)
    assert report_main([str(run)]) == 0
    captured = capsys.readouterr()
    assert "grid.json is unreadable" in captured.err and "| bn |" in captured.out


def test_times_line_counts_parallel_runs_once_and_session_gaps_not_at_all():
    from smallbatch.analysis.render import timing_line

    def run(start: str, end: str, host: str) -> dict:
        return {
            "started_utc": f"2026-01-01T{start}:00+00:00",
            "ended_utc": f"2026-01-01T{end}:00+00:00",
            "run_time_s": 3600 * (int(end[:2]) - int(start[:2])),
            "machine": {"host": host, "cpu": "x"},
        }

    # two at a time on host a (10-12 and 11-13), a gap, then one run on host b (15-16)
    results = [run("10:00", "12:00", "a"), run("11:00", "13:00", "a"), run("15:00", "16:00", "b")]
    line = timing_line([*results, {"final_top1": 0.9}])
    assert "summed run time 5.00 h" in line
    assert "wall clock 6.00 h" in line
    per_host = "3.00 h on a (x) (2 runs); 1.00 h on b (x) (1 runs)"
    assert f"busy 4.00 h (at least one run going): {per_host}" in line
    assert line.endswith("; 1 runs without recorded times.")
    assert "busy 3.00 h (at least one run going), on a (x)." in timing_line(results[:2])
    inner = run("10:30", "11:30", "a")  # inside the first run: adds nothing
    assert "busy 3.00 h (at least one run going)," in timing_line([*results[:2], inner])


def test_a_run_resumed_days_later_is_busy_only_while_its_attempts_ran():
    """A cell that finished on day 1 and had its evaluation redone on day 3 (a 10-minute
    attempt): busy 2 h + 10 min, not the two days between (issue 35, item 8)."""
    from smallbatch.analysis.render import timing_line

    resumed = {
        "started_utc": "2026-01-01T10:00:00+00:00",
        "attempt_started_utc": "2026-01-03T09:00:00+00:00",
        "ended_utc": "2026-01-03T09:10:00+00:00",
        "run_time_s": 2 * 3600 + 600,
        "wall_time_s": 600,
        "machine": {"host": "a", "cpu": "x"},
    }
    line = timing_line([resumed])
    assert "summed run time 2.17 h" in line and "busy 2.17 h (at least one run going)" in line
    assert "wall clock 47.17 h" in line  # first start to last end, as it says
