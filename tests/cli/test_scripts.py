"""The development scripts under scripts/ still run against the current code."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _run(script: str, args: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(SCRIPTS / script), run_name="__main__")
    return capsys.readouterr().out


@pytest.mark.slow
def test_cbn_breakdown_prices_every_part(monkeypatch, capsys):
    out = _run(
        "cbn_breakdown.py", ["--batch", "2", "--rounds", "1", "--steps", "1"], monkeypatch, capsys
    )
    for row in ("bn ", "cbn ", "cbn without dnu/dW", "cbn without recording", "cbn, window frozen"):
        assert row in out
    for part in ("dnu/dW weight-gradient", "rest of recording", "window average", "normalization"):
        assert part in out


@pytest.mark.parametrize("norm", ["bn", "cbn"])
def test_profile_step_prints_the_operator_table(norm, monkeypatch, capsys):
    out = _run(
        "profile_step.py", ["--norm", norm, "--batch", "2", "--steps", "1"], monkeypatch, capsys
    )
    assert "aten::convolution" in out


@pytest.mark.slow
def test_bench_runs_as_a_module_without_the_cli(tmp_path):
    """``python -m smallbatch.analysis.bench`` (for machines without the CLI's dependencies)."""
    out = tmp_path / "bench.json"
    args = ["--device", "cpu", "--batch-sizes", "2", "--backbones", "resnet20", "--norms", "bn"]
    args += ["--steps", "1", "--warmup", "1", "--rounds", "1", "--json", str(out)]
    code = (
        "import runpy, sys; sys.modules['jsonargparse'] = None; "  # importing it would fail
        "runpy.run_module('smallbatch.analysis.bench', run_name='__main__')"
    )
    subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True)
    assert json.loads(out.read_text())["results"][0]["norm"] == "bn"


def test_bench_is_a_measurement_missed_targets_exit_0_and_load_is_named(
    monkeypatch, capsys, tmp_path
):
    import smallbatch.analysis.bench as bench

    monkeypatch.setattr(bench, "bench_config", lambda *a, **k: [])
    monkeypatch.setattr(bench, "print_table", lambda *a: None)
    missed = [{"norm": "cbn", "ok": False}, {"norm": "brn", "ok": True}]
    monkeypatch.setattr(bench, "check_targets", lambda *a, **k: missed)
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (7.5, 7.0, 6.0))
    assert bench.main(["--device", "cpu", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "1 of 2 ratios missed their targets" in out
    assert "warning: the machine is loaded (1-minute load 7.5" in out


def test_bench_help_shows_its_whole_description(capsys):
    import smallbatch.analysis.bench as bench

    with pytest.raises(SystemExit):
        bench.main(["--help"])
    assert "rotating order, so drift on a shared machine hits all norms alike" in " ".join(
        capsys.readouterr().out.split()
    )


def test_conformance_table_writes_the_table_with_its_provenance(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exited:
        _run("conformance_table.py", ["--norms", "ln", "--out", str(tmp_path)], monkeypatch, capsys)
    assert exited.value.code == 0
    table = (tmp_path / "conformance.md").read_text()
    record = json.loads((tmp_path / "conformance.json").read_text())
    assert record["norms"][0]["norm"] == "ln" and record["machine"]["cpu"]
    assert "| ln | ✓ |" in table and "at commit" in table and "load average" in table
    assert "ln · batch_one (pass)" in table  # reasons listed under the table


def test_quote_published_tables_rewrites_marked_tables_and_checks_them(
    tmp_path, monkeypatch, capsys
):
    report = tmp_path / "results" / "report.md"
    report.parent.mkdir()
    report.write_text("# grid\n\ncaption\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nReading: x\n")
    doc = tmp_path / "doc.md"
    old = "| a | b |\n|---|---|\n| 1 | 9 |\n| 3 | 4 |\n"
    doc.write_text(f"intro\n\n<!-- table: results/report.md -->\n{old}\nafter\n| other |\n")
    with pytest.raises(SystemExit) as stale:
        _run("quote_published_tables.py", [str(doc), "--check"], monkeypatch, capsys)
    assert stale.value.code == 1 and "doc.md" in capsys.readouterr().out
    assert doc.read_text().count("| 1 | 9 |") == 1  # --check writes nothing
    with pytest.raises(SystemExit) as done:
        _run("quote_published_tables.py", [str(doc)], monkeypatch, capsys)
    assert done.value.code == 0
    assert doc.read_text() == (
        "intro\n\n<!-- table: results/report.md -->\n| a | b |\n|---|---|\n| 1 | 2 |\n"
        "\nafter\n| other |\n"
    )
    with pytest.raises(SystemExit) as fresh:
        _run("quote_published_tables.py", [str(doc), "--check"], monkeypatch, capsys)
    assert fresh.value.code == 0
    doc.write_text("<!-- table: results/missing.md -->\n| a |\n")
    with pytest.raises(SystemExit, match="missing.md, which does not exist"):
        _run("quote_published_tables.py", [str(doc)], monkeypatch, capsys)
