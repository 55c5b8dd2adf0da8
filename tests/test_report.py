"""`smallbatch report` on a fixture run folder: exact table, CSV and a real PNG."""

import csv
import json

from smallbatch.report import main as report_main

FIXTURE = {  # (norm, batch): accuracies over seeds 0, 1
    ("bn", 32): [0.90, 0.92],
    ("bn", 2): [0.50, 0.60],
    ("gn", 32): [0.88, 0.88],
    ("gn", 2): [0.87, 0.89],
}


def make_run(tmp_path):
    run = tmp_path / "grid"
    (run).mkdir()
    (run / "grid.json").write_text(json.dumps({"name": "fixture"}))
    for (norm, batch), accs in FIXTURE.items():
        for seed, acc in enumerate(accs):
            cell = run / "cells" / f"{norm}-b{batch}-s{seed}-x"
            cell.mkdir(parents=True)
            result = {
                "status": "finished",
                "norm": norm,
                "batch_size": batch,
                "seed": seed,
                "best_val_acc": acc,
                "final_val_acc": acc - 0.01,
                "median_last5_val_acc": acc - 0.02,
            }
            (cell / "result.json").write_text(json.dumps(result))
    diverged = run / "cells" / "bn-b2-s2-x"
    diverged.mkdir()
    (diverged / "result.json").write_text(
        json.dumps({"status": "diverged", "norm": "bn", "batch_size": 2, "best_val_acc": None})
    )
    return run


def test_report_table_csv_and_plot(tmp_path, capsys):
    run = make_run(tmp_path)
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "| norm | b=32 | b=2 |" in out
    assert "| bn | 91.00 ± 1.41 | 55.00 ± 7.07 (1 div.) |" in out
    assert "| gn | 88.00 ± 0.00 | 88.00 ± 1.41 |" in out
    md = (run / "report" / "results.md").read_text()
    assert "# fixture" in md and "| gn | 88.00 ± 0.00 | 88.00 ± 1.41 |" in md
    with open(run / "report" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    bn2 = next(r for r in rows if r["norm"] == "bn" and r["batch_size"] == "2")
    assert float(bn2["mean"]) == 0.55 and bn2["n"] == "2" and bn2["diverged"] == "1"
    png = (run / "report" / "accuracy_vs_batch.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_report_median_metric(tmp_path, capsys):
    run = make_run(tmp_path)
    assert report_main([str(run), "--metric", "median_last5"]) == 0
    assert "| gn | 86.00 ± 0.00 | 86.00 ± 1.41 |" in capsys.readouterr().out


def test_report_wandb_summary_run_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = make_run(tmp_path)
    assert report_main([str(run), "--wandb", "--project", "t"]) == 0
    from smallbatch.wandb_setup import read_offline_run

    folders = list((run / "report" / "wandb").glob("offline-run-*"))
    assert len(folders) == 1
    logged = read_offline_run(folders[0])
    assert logged["group"] == "fixture" and logged["name"] == "fixture-summary"
    assert any(k.startswith("results") for k in logged["history_keys"])
    assert any(k.startswith("accuracy_vs_batch") for k in logged["history_keys"])
