"""A hanging plugin never hangs the suite (issue 35, items 3 and 8): check-norm and
grid --dry-run end within SMALLBATCH_PLUGIN_TIMEOUT with one error line naming what hung, exit
2, nothing left behind; a plugin whose import calls sys.exit is an error line too."""

import os
import subprocess
import sys
import time

import pytest
import yaml
from conftest import HELPERS
from grid_files import write_grid

LIMIT_S = 3
# the test's own bound: the limit plus starting Python, torch and Lightning on a slow CI core
WITHIN_S = 90


def _smallbatch(
    *args: str, timeout_env: str = str(LIMIT_S)
) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(HELPERS), "SMALLBATCH_PLUGIN_TIMEOUT": timeout_env}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "smallbatch.cli", *args], capture_output=True, text=True,
        env=env, timeout=WITHIN_S,
    )  # fmt: skip
    return proc, time.monotonic() - start


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.slow
def test_check_norm_on_a_hanging_plugin_ends_within_its_limit_naming_what_hung():
    proc, seconds = _smallbatch("check-norm", "sb_test_helpers.HangingNorm", "--fast")
    assert proc.returncode == 2, proc.stderr
    (line,) = _error_lines(proc)
    assert line == (
        "error: check-norm sb_test_helpers.HangingNorm: building the layer did not finish within "
        f"{LIMIT_S} s (a plugin that hangs?); set SMALLBATCH_PLUGIN_TIMEOUT to allow longer, 0 for "
        "no limit"
    )
    assert "Traceback" not in proc.stderr and seconds < WITHIN_S


@pytest.mark.slow
def test_grid_dry_run_with_a_hanging_plugin_exits_2_within_its_limit(tmp_path, fashion_dir):
    path = write_grid(tmp_path, fashion_dir, axes={"model.norm": ["sb_test_helpers.HangingNorm"]})
    proc, seconds = _smallbatch("grid", "--config", str(path), "--dry-run")
    assert proc.returncode == 2, proc.stderr
    (line,) = _error_lines(proc)
    assert line.startswith(f"error: {path}: building cell HangingNorm-")
    assert "'s model and data did not finish within 3 s (a plugin that hangs?)" in line
    assert "Traceback" not in proc.stderr and seconds < WITHIN_S
    assert not (tmp_path / "runs").exists()
    assert yaml.safe_load(path.read_text())["name"] == "g"  # the file untouched


def test_a_plugin_whose_import_exits_is_a_failed_build_saying_so():
    proc, _ = _smallbatch("check-norm", "sb_exit_on_import.ExitNorm", "--fast")
    assert proc.returncode == 1, proc.stderr  # the kit's failure: a row, exit 1, not exit 3
    assert (
        "build  fail  cannot build a layer of 64 channels: NormConfigError: norm class_path "
        "'sb_exit_on_import.ExitNorm': importing 'sb_exit_on_import' called sys.exit(3)"
        in proc.stdout
    )


def test_a_bad_timeout_setting_is_one_line():
    proc, _ = _smallbatch("check-norm", "bn", "--fast", timeout_env="soon")
    assert proc.returncode == 2
    assert _error_lines(proc) == [
        "error: SMALLBATCH_PLUGIN_TIMEOUT='soon' must be a number of seconds (0: no limit)"
    ]


def test_time_limits_nest_and_an_inner_one_never_extends_the_outer():
    import signal

    from smallbatch.timeouts import TimeLimitExceeded, time_limit

    with time_limit("outer", 5):
        with time_limit("inner", 60):
            left, _ = signal.getitimer(signal.ITIMER_REAL)
            assert 0 < left <= 5  # capped by the outer limit
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < left <= 5  # the outer limit runs on
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0  # and ends with its block
    expired = pytest.raises(TimeLimitExceeded, match=r"^a sleep did not finish within 0\.2 s")
    with expired, time_limit("a sleep", 0.2):
        time.sleep(5)
