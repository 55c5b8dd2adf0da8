"""The development scripts under scripts/ still run against the current code."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(script: str, args: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(SCRIPTS / script), run_name="__main__")
    return capsys.readouterr().out


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
