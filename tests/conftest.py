"""Shared test set-up: W&B offline, no API key needed, one unpacked Fashion-MNIST per session."""

import os
import sys
import time
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("SMALLBATCH_RUN_DIR", None)

ROOT = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "helpers"
sys.path.insert(0, str(HELPERS))


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> str:
    """A data_dir holding unpacked Fashion-MNIST (found offline by the data module)."""
    from smallbatch.data import FashionMNIST

    data_dir = tmp_path_factory.mktemp("data")
    FashionMNIST(data_dir=str(data_dir)).prepare_data()
    return str(data_dir)


@pytest.fixture(autouse=True)
def _fresh_run_env(monkeypatch):
    monkeypatch.delenv("SMALLBATCH_RUN_DIR", raising=False)


def tiny_fit_args(fashion_dir: str, run_dir: Path, *extra: str) -> list[str]:
    """A seconds-long quickstart fit: ResNet-8, 256 train / 128 val images, 1 epoch, no logger."""
    return [
        "fit",
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--model.backbone",
        "resnet8",
        "--data.data_dir",
        fashion_dir,
        "--data.train_subset",
        "256",
        "--data.val_subset",
        "128",
        "--data.batch_size",
        "16",
        "--trainer.max_epochs",
        "1",
        "--trainer.logger",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--run_dir",
        str(run_dir),
        *extra,
    ]


def wait_for(predicate, timeout_s: float, what: str):
    """Poll ``predicate`` every 0.5 s until it returns something truthy (returned), or fail
    saying what was awaited."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
