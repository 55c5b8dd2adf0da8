"""`smallbatch fit` end to end: configs, real data, W&B offline, results, divergence, resume."""

import io
import json
import os
import signal
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import yaml
from conftest import HELPERS, ROOT, tiny_fit_args

from smallbatch.data import DatasetNotFoundError, FashionMNIST, ImageFolder
from smallbatch.norms import NormConfigError
from smallbatch.results import read_result
from smallbatch.run.cell import lightning_main
from smallbatch.run.wandb_offline import read_offline_run

CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml"))


def _print_config(args: list[str]) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit) as exc:
        lightning_main(args)
    assert exc.value.code in (0, None)
    return buf.getvalue()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(config):
    text = _print_config(["fit", "--config", str(config), "--print_config"])
    assert "model:" in text and "data:" in text


def test_print_config_round_trips(tmp_path):
    args = ["--config", str(ROOT / "configs/quickstart.yaml"), "--model.norm", "brn"]
    first = _print_config(["fit", *args, "--print_config"])
    saved = tmp_path / "printed.yaml"
    saved.write_text(first)
    second = _print_config(["fit", "--config", str(saved), "--print_config"])
    assert yaml.safe_load(first) == yaml.safe_load(second)
    assert yaml.safe_load(second)["model"]["norm"] == "brn"


@pytest.mark.slow
def test_fit_on_real_fashion_mnist_learns(fashion_dir, tmp_path):
    run = tmp_path / "run"
    args = tiny_fit_args(fashion_dir, run, "--data.train_subset", "2048", "--model.norm", "gn")
    args += ["--trainer.max_epochs", "2"]
    lightning_main(args)
    result = read_result(run)
    assert result["status"] == "finished"
    assert result["final_val_acc"] > 0.3  # chance is 0.1
    assert result["norm"] == "gn" and result["batch_size"] == 16
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "last.ckpt").exists()


def test_lightnings_default_root_dir_is_the_run_folder(fashion_dir, tmp_path):
    """As Lightning users expect, --trainer.default_root_dir X puts the run's files in X."""
    args = tiny_fit_args(fashion_dir, tmp_path / "unused", "--data.train_subset", "64")
    at = args.index("--run_dir")
    args[at : at + 2] = ["--trainer.default_root_dir", str(tmp_path / "mine")]
    lightning_main(args)
    assert read_result(tmp_path / "mine")["status"] == "finished"
    assert (tmp_path / "mine" / "config.yaml").exists() and not (tmp_path / "unused").exists()


def test_norm_from_class_path_outside_package(fashion_dir, tmp_path):
    norm = json.dumps({"class_path": "sb_test_helpers.ScaledGroupNorm", "init_args": {"scale": 2}})
    run = tmp_path / "run"
    lightning_main(tiny_fit_args(fashion_dir, run, "--model.norm", norm))
    result = read_result(run)
    assert result["status"] == "finished" and result["norm"] == "ScaledGroupNorm"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["norm"]["class_path"] == "sb_test_helpers.ScaledGroupNorm"


def _wandb_logger_args(args: list[str]) -> list[str]:
    args[args.index("--trainer.logger") + 1] = json.dumps(
        {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "t"}}
    )
    return args


def _offline_run(run: Path) -> dict:
    folders = list((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 1
    return read_offline_run(folders[0])


def test_wandb_offline_run_records_accuracy_config_and_group(fashion_dir, tmp_path):
    run = tmp_path / "run"
    args = tiny_fit_args(fashion_dir, run, "--model.norm", "brn", "--group", "mygrid")
    args += ["--trainer.log_every_n_steps", "4", "--model.norm_args", '{"momentum": 0.05}']
    lightning_main(_wandb_logger_args(args))
    logged = _offline_run(run)
    assert logged["finished"]  # the exit record was written
    assert logged["group"] == "mygrid"
    assert logged["name"] == "brn-nb16-s0"
    assert 0 <= logged["summary"]["val/acc"] <= 1
    assert 0 <= logged["summary"]["train/acc"] <= 1  # the epoch's sums, reduced over devices
    assert logged["summary"]["val/acc_best"] == pytest.approx(read_result(run)["best_val_acc"])
    config = logged["config"]
    assert config["norm"] == "brn" and config["norm_args"] == {"momentum": 0.05}
    assert config["batch_size"] == 16 and config["normalization_batch"] == 16
    assert config["devices"] == 1 and config["total_batch"] == 16
    assert config["seed"] == 0 and config["backbone"] == "resnet8"
    assert config["dataset"] == "FashionMNIST"
    # the full config once, nested; no flat cfg/ keys, no CLI internals
    assert config["lightning"]["model"]["norm"] == "brn"
    assert not [k for k in config if k.startswith("cfg/")]  # was ~107 flat keys
    assert "_instantiator" not in config and "norm_name" not in config
    assert "norm/brn_rmax" in logged["history_keys"]


def test_training_accuracy_sums_equal_torchmetrics_micro_accuracy():
    """The epoch's device sums (no torchmetrics update per step) give torchmetrics' number."""
    from torchmetrics.classification import MulticlassAccuracy

    from smallbatch.run.module import SmallBatchModule

    module = SmallBatchModule(backbone="resnet8", norm="gn", in_chans=1, cifar_stem=True)
    module._reset_epoch_sums()
    reference = MulticlassAccuracy(10, average="micro")
    torch.manual_seed(0)
    for batch in (32, 7, 1):
        logits, target = torch.randn(batch, 10), torch.randint(0, 10, (batch,))
        logits[0, target[0]] = 10.0  # at least one hit
        module._watch(torch.tensor(1.0), logits, target)
        reference.update(logits, target)
    assert module._seen == 40
    assert float(module._correct) / module._seen == pytest.approx(float(reference.compute()))


def test_wandb_checkpoints_become_model_artifacts_with_log_model(fashion_dir, tmp_path):
    run = tmp_path / "run"
    args = _wandb_logger_args(tiny_fit_args(fashion_dir, run))
    lightning_main([*args, "--trainer.logger.init_args.log_model", "true"])
    logged = _offline_run(run)
    models = [a for a in logged["artifacts"] if a["type"] == "model"]
    assert models and all("model.ckpt" in a["files"] for a in models), logged["artifacts"]
    # the dashboard's y axis and the project `report --wandb` reads from result.json
    acc = read_result(run)["final_val_acc"]
    assert logged["summary"]["val/error_final"] == pytest.approx(100 * (1 - acc))
    (row,) = [r for r in logged["history"] if "normalization_batch" in r]  # the dashboard's x axis
    assert row["normalization_batch"] == 16
    assert row["val/error_final"] == pytest.approx(100 * (1 - acc))
    assert read_result(run)["wandb"]["project"] == logged["project"]


@pytest.mark.slow
def test_killed_run_resumes_exactly_into_the_same_wandb_run_without_repeating_steps(
    fashion_dir, tmp_path
):
    """Killed mid-epoch 2 (SIGKILL) and resumed from the epoch-1 checkpoint: the same metrics
    as an uninterrupted run (RNG states are in the checkpoint), one W&B run id across both
    attempts, and no global step logged twice."""
    import subprocess
    import sys

    from conftest import HELPERS

    def fit(run, *extra):
        args = _wandb_logger_args(tiny_fit_args(fashion_dir, run, *extra))
        args[args.index("--trainer.max_epochs") + 1] = "2"
        args += ["--trainer.log_every_n_steps", "4", "--model.norm", "brn"]
        env = {**os.environ, "PYTHONPATH": str(HELPERS), "WANDB_MODE": "offline"}
        env.pop("WANDB_SERVICE", None)  # this pytest process's W&B service, if a test started one
        cmd = [sys.executable, "-m", "smallbatch.cli", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert fit(whole).returncode == 0
    kill = {"class_path": "sb_test_helpers.KillOnceAtStep", "init_args": {"steps": [22]}}
    kill["init_args"]["marker"] = str(tmp_path / "killed")
    callbacks = ["--trainer.callbacks", json.dumps([kill])]
    assert fit(cut, *callbacks).returncode == -signal.SIGKILL  # 16 steps an epoch
    last = cut / "checkpoints" / "last.ckpt"
    resumed = fit(cut, *callbacks, "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = read_result(whole), read_result(cut)
    assert b["global_step"] == a["global_step"] == 32
    assert b["val_acc_history"] == a["val_acc_history"]  # bit-exact on CPU
    folders = sorted((cut / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and len({f.name.rsplit("-", 1)[1] for f in folders}) == 1  # one id
    # W&B keeps what a killed process had handed it, possibly nothing; whatever it kept is not
    # logged again, and the resumed attempt logs the rest
    runs = [read_offline_run(f, wait_s=2) for f in folders]
    steps = [
        row["trainer/global_step"] for r in runs for row in r["history"] if "train/loss_step" in row
    ]
    assert len(steps) == len(set(steps))
    assert {19, 23, 27, 31} <= set(steps) <= {3, 7, 11, 15, 19, 23, 27, 31}


def test_wandb_config_of_class_path_norm_and_ghost_batches(fashion_dir, tmp_path):
    run = tmp_path / "run"
    norm = json.dumps({"class_path": "smallbatch.norms.BatchRenorm2d", "init_args": {"rmax": 2}})
    args = tiny_fit_args(fashion_dir, run, "--model.norm", norm, "--model.norm_batch", "4")
    lightning_main(_wandb_logger_args(args))
    logged = _offline_run(run)
    assert logged["name"] == "BatchRenorm2d-nb4-pb16-s0"
    assert logged["config"]["norm"] == "BatchRenorm2d"
    assert logged["config"]["normalization_batch"] == 4 and logged["config"]["batch_size"] == 16
    result = read_result(run)
    assert result["normalization_batch"] == 4 and result["setting"]["model.norm_batch"] == 4
    assert "seed_everything" not in result["setting"]


@pytest.mark.slow
def test_readme_brn_example_exercises_the_correction(fashion_dir, tmp_path):
    """The README's `fit --config configs/quickstart.yaml --model.norm brn --data.batch_size 4`
    (on fewer images): the paper's step milestones are longer than the run, so the ramp is
    compressed to it (unit auto) and rmax has left 1 by the end."""
    run = tmp_path / "run"
    args = ["fit", "--config", str(ROOT / "configs/quickstart.yaml"), "--model.norm", "brn"]
    args += ["--data.batch_size", "4", "--data.data_dir", fashion_dir, "--run_dir", str(run)]
    args += ["--data.train_subset", "160", "--data.val_subset", "64"]
    args += ["--trainer.log_every_n_steps", "10"]
    lightning_main(args)
    logged = _offline_run(run)
    rmax = [row["norm/brn_rmax"] for row in logged["history"] if "norm/brn_rmax" in row]
    assert rmax and rmax[-1] > 1.0  # the paper's 3 once the compressed ramp is over
    assert read_result(run)["status"] == "finished"


def test_short_run_with_step_milestones_fails_naming_the_fix(fashion_dir, tmp_path):
    run = tmp_path / "run"
    norm_args = '{"unit": "steps", "warmup": 100}'
    args = tiny_fit_args(fashion_dir, run, "--model.norm", "brn", "--model.norm_args", norm_args)
    with pytest.raises(NormConfigError, match="unit: fraction"):
        lightning_main(args)


def test_nan_loss_gives_diverged_result_without_traceback(fashion_dir, tmp_path):
    run = tmp_path / "run"
    lightning_main(tiny_fit_args(fashion_dir, run, "--model.lr", "1e30"))
    result = read_result(run)
    assert result["status"] == "diverged"
    assert result["error"].startswith("loss became ") and "Traceback" not in result["error"]
    # 16 steps, fewer than the log interval: found before the epoch's validation, which then
    # records no accuracy of the NaN weights
    assert result["val_acc_history"] == [] and result["final_val_acc"] is None


def test_missing_dataset_gives_clear_error(tmp_path, monkeypatch):
    import smallbatch.data.datasets as ds

    missing = tmp_path / "nowhere"
    monkeypatch.setattr(ds, "data_search_dirs", lambda d: [Path(d)])
    monkeypatch.setattr(ds, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    with pytest.raises(DatasetNotFoundError, match=r"data_dir '.*nowhere' does not exist"):
        FashionMNIST(data_dir=str(missing)).prepare_data()  # given explicitly: a typo
    missing.mkdir()
    with pytest.raises(
        DatasetNotFoundError, match=r"(?s)Fashion-MNIST not found.*nowhere.*apt-get"
    ):
        FashionMNIST(data_dir=str(missing)).prepare_data()
    with pytest.raises(DatasetNotFoundError, match=r"Fashion-MNIST not found"):
        FashionMNIST(data_dir=str(missing)).check_available()  # what a grid checks up front
    with pytest.raises(DatasetNotFoundError, match=r"(?s)image folder.*Looked in.*train/ and val/"):
        ImageFolder(root=str(missing / "imgs"), data_dir=str(missing)).setup()


def _smallbatch(args, env_extra=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(HELPERS), "CI": "1", **(env_extra or {})}
    env.pop("SMALLBATCH_RUN_DIR", None)
    cmd = [sys.executable, "-m", "smallbatch.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["brn", "cbn"])  # BN: the resumed-DDP test below
def test_two_process_cpu_ddp(norm, fashion_dir, tmp_path):
    run = tmp_path / "run"
    args = tiny_fit_args(fashion_dir, run, "--model.norm", norm)
    args += ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    args += ["--data.train_subset", "128", "--data.val_subset", "64"]
    proc = _smallbatch(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = read_result(run)
    assert result["status"] == "finished" and result["devices"] == 2
    assert len(list(run.glob("result.json"))) == 1
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    steps = [v for k, v in ckpt["state_dict"].items() if k.endswith(".step")]
    if norm != "bn":
        assert steps and int(steps[0]) == ckpt["global_step"]


@pytest.mark.slow
def test_a_resumed_ddp_run_equals_the_uninterrupted_one_on_every_rank(fashion_dir, tmp_path):
    """Issue 37: a checkpoint holds every rank's random-number states (augmentation draws), so a
    two-process DDP run stopped after epoch 1 and resumed ends with the same weights and
    accuracies as the run that never stopped (before, only rank 0's states were saved and none
    restored under DDP)."""

    def ddp_args(run, *extra):
        args = tiny_fit_args(fashion_dir, run, "--model.norm", "bn", *extra)
        args += ["--trainer.accelerator", "cpu", "--trainer.devices", "2"]
        args += ["--trainer.strategy", "ddp", "--trainer.max_epochs", "2"]
        return args + ["--data.train_subset", "64", "--data.val_subset", "32"]

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert _smallbatch(ddp_args(whole)).returncode == 0
    stop = '{"class_path": "sb_test_helpers.StopAfterEpochs", "init_args": {"epochs": 1}}'
    first = _smallbatch(ddp_args(parts, "--trainer.callbacks+", stop))
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = torch.load(parts / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 0 and len(ckpt["smallbatch"]["rng_per_rank"]) == 2
    rest = _smallbatch(ddp_args(parts, "--ckpt_path", "last"))
    assert rest.returncode == 0, rest.stderr[-3000:]
    a, b = read_result(whole), read_result(parts)
    assert b["val_acc_history"] == a["val_acc_history"] and len(a["val_acc_history"]) == 2
    wa = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    wb = torch.load(parts / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_a_resumed_float64_run_equals_the_uninterrupted_one(fashion_dir, tmp_path):
    """Under ``64-true`` the checkpoint's float64 weights are restored into a float64 module
    (``configure_model``): before, Lightning restored them into the float32 module it converts
    later, and a resumed run differed from the whole one by ~1e-8."""

    def args(run, *extra):
        return tiny_fit_args(fashion_dir, run, "--model.norm", "bn", "--trainer.precision",
                             "64-true", "--trainer.max_epochs", "2", "--data.train_subset", "64",
                             "--data.val_subset", "32", *extra)  # fmt: skip

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert _smallbatch(args(whole)).returncode == 0
    stop = '{"class_path": "sb_test_helpers.StopAfterEpochs", "init_args": {"epochs": 1}}'
    assert _smallbatch(args(parts, "--trainer.callbacks+", stop)).returncode == 0
    rest = _smallbatch(args(parts, "--ckpt_path", "last"))
    assert rest.returncode == 0, rest.stderr[-3000:]
    wa = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    wb = torch.load(parts / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert wa["model.conv1.weight"].dtype == torch.float64
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["brn", "cbn"])
def test_kill_and_resume_continues_brn_step_and_cbn_window(norm, fashion_dir, tmp_path):
    run = tmp_path / "run"
    base = tiny_fit_args(fashion_dir, run, "--model.norm", norm)
    base += ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    base += ["--trainer.max_epochs", "10", "--trainer.max_steps", "8"]
    if norm == "cbn":
        base += ["--model.norm_args", '{"window": 3, "burnin": 1}']
    kill = '{"class_path": "sb_test_helpers.KillAtStep", "init_args": {"step": 5}}'
    proc = _smallbatch([*base, "--trainer.callbacks+", kill])
    assert proc.returncode == -9  # SIGKILL: no clean-up ran
    assert read_result(run) is None
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    saved = {k: v for k, v in ckpt["state_dict"].items() if ".bn" in k}
    at_start = tmp_path / "at_start.pt"
    probe = json.dumps(
        {"class_path": "sb_test_helpers.SaveNormStateAtStart", "init_args": {"path": str(at_start)}}
    )
    proc = _smallbatch([*base, "--ckpt_path", "last", "--trainer.callbacks+", probe])
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = torch.load(at_start)
    for key, value in saved.items():
        assert torch.equal(resumed[key], value), key
    step_keys = [k for k in saved if k.endswith(".step")]
    assert step_keys and all(int(saved[k]) == 4 for k in step_keys)
    if norm == "cbn":
        assert any(k.endswith("win_valid") and bool(saved[k].any()) for k in saved)
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(int(final["state_dict"][k]) == 8 for k in step_keys), [
        int(final["state_dict"][k]) for k in step_keys
    ]
    assert read_result(run)["status"] == "finished"


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (links left out: W&B links its process-wide core log there)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def test_validate_from_a_saved_config_writes_its_own_folder_and_linked_wandb_run(
    fashion_dir, tmp_path
):
    run = tmp_path / "run"
    lightning_main(_wandb_logger_args(tiny_fit_args(fashion_dir, run, "--group", "g")))
    fit_run = _offline_run(run)
    before = _tree_bytes(run)
    ckpt = run / "checkpoints" / "last.ckpt"
    lightning_main(["validate", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt)])
    after = _tree_bytes(run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing overwritten
    evals = list((run / "eval").glob("validate-*"))
    assert len(evals) == 1 and (evals[0] / "config.yaml").exists()
    assert not [k for k in after if k not in before and not k.startswith("eval/")]
    logged = read_offline_run(next((evals[0] / "wandb").glob("offline-run-*")))
    assert logged["name"] == "bn-nb16-s0-validate" and logged["group"] == "g"
    assert logged["config"]["job_type"] == "eval"
    fit_id = next((run / "wandb").glob("offline-run-*")).name.rsplit("-", 1)[-1]
    assert logged["config"]["fit_run_id"] == fit_id and fit_run["name"] == "bn-nb16-s0"
    assert "val/acc" in logged["summary"]
