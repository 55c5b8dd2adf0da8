"""Precision chosen by the hardware: ``--trainer.precision auto`` and what result.json records."""

import pytest
import yaml
from conftest import tiny_fit_args

from smallbatch import hardware
from smallbatch.results import read_result
from smallbatch.run.cell import lightning_main


def _cpu(monkeypatch, *flags: str) -> None:
    monkeypatch.setattr(hardware, "cpu_info", lambda: ("Test CPU", frozenset(flags)))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("avx2", "fma"), "32-true"),  # AVX2 only: bf16 is emulated
        (("avx2", "avx512f", "avx512_bf16"), "bf16-mixed"),  # AMD EPYC with AVX512-BF16
        (("avx512f", "amx_tile", "amx_bf16"), "bf16-mixed"),  # Intel Xeon with AMX
        (("fp", "asimd", "bf16"), "bf16-mixed"),  # Arm with BF16
    ],
)
def test_auto_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, flags, expected):
    _cpu(monkeypatch, *flags)
    precision, note = hardware.resolve_precision("auto", "cpu")
    assert precision == expected
    assert note.startswith(f"precision auto -> {expected}: Test CPU")


def test_fixed_bf16_on_an_emulating_cpu_is_kept_with_a_warning(monkeypatch):
    _cpu(monkeypatch, "avx2")
    precision, note = hardware.resolve_precision("bf16-mixed", "cpu")
    assert precision == "bf16-mixed"  # a published grid keeps the precision it names
    assert note.startswith("warning: precision bf16-mixed") and "20x slower" in note
    _cpu(monkeypatch, "avx512_bf16")
    assert hardware.resolve_precision("bf16-mixed", "cpu") == ("bf16-mixed", None)
    assert hardware.resolve_precision("32-true", "cpu") == ("32-true", None)


def test_auto_run_records_the_resolved_precision_and_the_cpu(fashion_dir, tmp_path, capsys):
    run = tmp_path / "run"
    lightning_main(tiny_fit_args(fashion_dir, run, "--trainer.precision", "auto"))
    out = capsys.readouterr().out
    native = hardware.cpu_native_bf16()
    chosen = "bf16-mixed" if native else "32-true"
    assert f"precision auto -> {chosen}" in out
    result = read_result(run)
    assert result["precision"] == chosen and result["precision_requested"] == "auto"
    assert result["setting"]["trainer.precision"] == chosen  # rows never mix precisions
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == chosen
    m = result["machine"]
    assert m["cpu_capability"] == hardware.cpu_capability() and m["cpu_bf16_native"] == native


def test_an_unknown_precision_is_still_refused():
    with pytest.raises(SystemExit):
        lightning_main(["fit", "--trainer.precision", "autoo", "--print_config"])
