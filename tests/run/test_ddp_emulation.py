"""A two-process DDP fit equals the one-process fit whose ghost batches emulate the two devices
(issue 37), for BN (per-device statistics), SyncBN (statistics over both devices; all-reduced
on CPU/gloo) and CBN (a window per device): the same samples in the same groups at every step
(``data.emulated_devices``), the same running statistics (averaged over ranks after each
step), no augmentation draws to line up (``data.augment false``). In float64 (``64-true``) the
two agree to rounding: every weight and running statistic within 1e-8, every validation
accuracy equal. (In fp32 the first step agrees to ~1e-6 and training then amplifies the
different summation orders of the two runs: not a test of the math.)"""

import os
import subprocess
import sys

import pytest
import torch
from conftest import HELPERS, tiny_fit_args

from smallbatch.norms.cbn import WINDOW_BUFFERS
from smallbatch.results import read_result

EMULATED = {"bn": ["--model.norm_batch", "16"], "syncbn": [], "cbn": ["--model.norm_batch", "16"]}


def _fit(fashion_dir, run, *extra):
    args = tiny_fit_args(fashion_dir, run, "--trainer.accelerator", "cpu")
    args += ["--trainer.precision", "64-true", "--data.augment", "false"]
    args += ["--trainer.max_epochs", "2", "--model.precise_images", "0", *extra]
    env = {**os.environ, "PYTHONPATH": str(HELPERS), "CI": "1", "OMP_NUM_THREADS": "1"}
    env.pop("SMALLBATCH_RUN_DIR", None)
    done = subprocess.run([sys.executable, "-m", "smallbatch.cli", *args], capture_output=True,
                          text=True, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return read_result(run), torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)


def largest_difference(a: dict, b: dict, local: tuple[str, ...] = ()) -> float:
    """Largest |a − b| over the floating entries of two state dicts, per-device buffers aside."""
    return max(
        float((a[k] - b[k]).abs().max())
        for k in a
        if a[k].is_floating_point() and not k.endswith(local)
    )


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["bn", "syncbn", "cbn"])
def test_two_process_ddp_equals_its_ghost_batch_emulation(norm, fashion_dir, tmp_path):
    ddp, ddp_ckpt = _fit(fashion_dir, tmp_path / "ddp", "--model.norm", norm,
                         "--trainer.devices", "2", "--trainer.strategy", "ddp")  # fmt: skip
    one, one_ckpt = _fit(fashion_dir, tmp_path / "one", "--model.norm", norm,
                         "--data.batch_size", "32", "--data.emulated_devices", "2",
                         *EMULATED[norm])  # fmt: skip
    assert ddp["world_size"] == 2 and ddp["global_step"] == one["global_step"] == 16
    assert ddp["val_acc_history"] == one["val_acc_history"]
    # CBN's windows are per device (rank 0's in the DDP checkpoint, both in the emulation's)
    local = tuple(WINDOW_BUFFERS)
    assert largest_difference(ddp_ckpt["state_dict"], one_ckpt["state_dict"], local) < 1e-8
