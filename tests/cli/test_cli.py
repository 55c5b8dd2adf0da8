"""The `smallbatch` entry point: one table of commands, --help, no import cycle, no noise."""

import os
import subprocess
import sys

import pytest

from smallbatch.cli import COMMANDS


def _run(*args, code=None, path_first=None):
    cmd = [sys.executable, *(code and ["-c", code] or ["-m", "smallbatch.cli", *args])]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}  # see W&B's warnings
    if path_first:
        env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_help_lists_every_command_with_a_line():
    proc = _run("--help")
    assert proc.returncode == 0
    for name in ("fit", "validate", "test", "predict", "grid", "report", "norms", "bench",
                 "check-norm"):  # fmt: skip
        assert any(line.split()[:1] == [name] for line in proc.stdout.splitlines()), name
    assert set(COMMANDS) == {
        "fit",
        "validate",
        "test",
        "predict",
        "grid",
        "report",
        "norms",
        "bench",
        "check-norm",
    }


def test_unknown_command_suggests_the_closest():
    proc = _run("gird")
    assert proc.returncode == 2 and "did you mean 'grid'?" in proc.stderr


@pytest.mark.slow
def test_importing_grid_does_not_import_the_command_table():
    code = (
        "import sys, smallbatch.grid, smallbatch.grid.slurm; "
        "print('smallbatch.cli' in sys.modules, 'smallbatch.cli.commands' in sys.modules)"
    )
    proc = _run(code=code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_no_argv_echo_warning_on_an_ordinary_call():
    proc = _run("fit", "--config", "configs/quickstart.yaml", "--print_config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LightningCLI's args parameter" not in proc.stderr


NOISE = (
    "LightningCLI's args parameter",
    "anonymous setting",
    "litlogger",
    "LeafSpec",
    "`srun` command is available",
)


@pytest.mark.slow
def test_ordinary_calls_print_none_of_the_known_warnings(tmp_path):
    import conftest

    norms = _run("norms")
    assert norms.returncode == 0
    bin_dir = tmp_path / "bin"  # an `srun` on PATH, as on a cluster's login node or CI
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    fit = _run(
        *conftest.tiny_fit_args(conftest_fashion(tmp_path), tmp_path / "run"),
        "--trainer.logger",
        '{"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "t"}}',
        path_first=bin_dir,
    )
    assert fit.returncode == 0, fit.stderr[-2000:]
    for proc in (norms, fit):
        out = proc.stdout + proc.stderr
        assert not [n for n in NOISE if n in out], out[-3000:]


def conftest_fashion(tmp_path):
    from smallbatch.data import FashionMNIST

    (tmp_path / "data").mkdir(exist_ok=True)
    FashionMNIST(data_dir=str(tmp_path / "data")).prepare_data()
    return str(tmp_path / "data")


BAD_INPUTS = [
    (["--data.batch_size", "0"], "batch_size must be >= 1", None),
    (["--model.norm_args", '{"windw": 4}', "--model.norm", "cbn"], "rejected arguments", "window"),
    (["--model.norm", "gn", "--model.norm_args", '{"num_groups": 3}'], "do not divide", "bn1"),
    (
        ["--model.norm_args", '{"window": 4', "--model.norm", "cbn"],
        "is not valid as a JSON",
        "'{\"window\": 4}'",
    ),
    (["--model.backbone", "renset18"], "unknown backbone", "resnet18"),
    (["--model.norm", "bnn"], "unknown norm 'bnn'", "'bn'"),
    (["--model.nrom", "bn"], "unrecognized arguments", "--model.norm"),
    (["--data.train_subest", "5"], "'train_subest' is not accepted", "train_subset"),
    (["--data.data_dir", "/nonexistent/fashion"], "data_dir '/nonexistent/fashion' does not", None),
    (["--model.backbone", "timm/resnet10tt"], "unknown timm model", "resnet10t"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "message", "suggestion"), BAD_INPUTS, ids=lambda v: str(v)[:24])
def test_bad_input_is_one_error_line_with_a_suggestion_and_no_run_folder(
    extra, message, suggestion, tmp_path
):
    run = tmp_path / "runs" / "cell"
    args = ["fit", "--config", "configs/quickstart.yaml", "--trainer.logger", "false"]
    proc = _run(*args, "--run_dir", str(run), *extra)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2, lines
    assert len(lines) <= 3, lines
    error = next(line for line in lines if line.startswith("error: "))
    assert message in error and (suggestion is None or suggestion in error), error
    assert not run.exists()
    if extra == BAD_INPUTS[0][0]:  # --debug brings back the full story (checked once: slow)
        debug = _run(*args, "--run_dir", str(run), *extra, "--debug")
        assert debug.returncode != 0 and len(debug.stderr.splitlines()) > 3


GRID_BAD_INPUTS = [
    ({"axes": {"data.train_subest": [5]}}, "train_subest", "train_subset"),
    ({"axes": {"model.norm": ["bnn"]}}, "unknown norm 'bnn'", "'bn'"),
    ({"axes": {"model.backbone": ["renset18"]}}, "unknown backbone", "resnet18"),
    ({"axes": {"data.batch_size": [0]}}, "data.batch_size", None),
    ({"exeuctor": {"kind": "local"}}, "exeuctor", "executor"),
    ({"axes": {"model.norm": ["cbn"], "model.norm_args": [{"windw": 4}]}}, "windw", "window"),
    ({"axes": {"model.norm": ["brn"], "model.norm_args": [{"rmax": 0.5}]}}, "rmax", None),
    ({"axes": {"model.norm": ["cbn"], "model.norm_args": [{"window": 0}]}}, "window", None),
    ({"axes": {"model.norm": ["gn"], "model.norm_args": [{"num_groups": 3}]}}, "divide", None),
    ({"axes": {"data.train_subset": [2], "data.batch_size": [4]}}, "train_subset 2", None),
    ({"axes": {"data.data_dir": ["/nonexistent/d"]}}, "does not exist", None),
    # ImageNet stem on 28 px: layer4 sees 1x1 maps; batch 1, or ghost groups of 1 in a batch of 8
    ({"axes": {"model.backbone": ["resnet18"], "data.batch_size": [1]}}, "1x1 feature map", None),
    (
        {"axes": {"model.backbone": ["resnet18"], "model.norm_batch": [1], "data.batch_size": [8]}},
        "layer4.0.bn1 (BatchNorm2d) got batch 1 at a 1x1",
        "batch-free norm",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("change", "message", "suggestion"), GRID_BAD_INPUTS, ids=str)
def test_bad_grid_file_is_one_error_line_and_writes_nothing(change, message, suggestion, tmp_path):
    import yaml

    spec = {
        "name": "bad",
        "base_config": os.path.abspath("configs/quickstart.yaml"),
        "axes": {"model.norm": ["bn"], "data.batch_size": [4]},
        "run_root": str(tmp_path / "runs"),
    }
    for key, value in change.items():
        spec[key] = {**spec[key], **value} if key == "axes" else value
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    # bad cell settings (from windw on) through --dry-run, which must reject them as well
    cell_setting = GRID_BAD_INPUTS.index((change, message, suggestion)) >= 5
    proc = _run("grid", "--config", str(path), *(["--dry-run"] if cell_setting else []))
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2, lines
    assert len(lines) <= 3, lines
    error = next(line for line in lines if line.startswith("error: "))
    assert message in error and (suggestion is None or suggestion in error), error
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (
            ["fit", "--config", "configs/quickstrat.yaml"],
            "File does not exist",
            "configs/quickstart.yaml'?",
        ),
        (
            ["fit", "--config", "configs/grid/quickstart.yaml"],
            "does not accept option 'axes.",
            "run it with `smallbatch grid --config FILE`",
        ),
        (["fit"], "arguments are required: fit.data", "--config configs/quickstart.yaml"),
    ],
    ids=["config typo", "grid file to fit", "no config"],
)
def test_common_mistakes_get_a_hint(argv, message, hint):
    proc = _run(*argv)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2, lines
    error = next(line for line in lines if line.startswith("error: "))
    assert message in error and hint in error, error


def test_help_and_the_command_table_import_no_torch():
    """`smallbatch --help` and a mistyped command answer without importing torch (seconds of
    start-up on every typo otherwise)."""
    code = (
        "import sys; import smallbatch.cli as cli; assert 'torch' not in sys.modules; "
        "cli.main(['--help']); cli.main(['gird']); print('torch' in sys.modules)"
    )
    proc = _run(code=code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_ctrl_c_before_a_run_is_one_line(monkeypatch, capsys):
    import smallbatch.grid as grid
    from smallbatch.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(grid, "load_grid", interrupted)  # Ctrl-C during grid validation
    assert main(["grid", "--config", "configs/grid/quickstart.yaml"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["interrupted"]


def test_a_plugin_whose_constructor_fails_is_one_line_in_fit(monkeypatch, capsys, tmp_path):
    from conftest import HELPERS

    from smallbatch.cli import main

    monkeypatch.syspath_prepend(str(HELPERS))
    norm = '{"class_path": "sb_test_helpers.BrokenInitNorm"}'
    argv = ["fit", "--config", "configs/quickstart.yaml", "--model.norm", norm,
            "--trainer.logger", "false", "--run_dir", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "constructor is broken" in err[-1], err
    assert not any("Traceback" in line for line in err)
