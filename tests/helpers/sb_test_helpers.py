"""Importable helpers for tests that run `smallbatch` in subprocesses (on PYTHONPATH there)."""

import os
import signal
import time

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from smallbatch.norms import EvoNormB0


class KillAtStep(Callback):
    """SIGKILL this process when training reaches ``step`` (a hard crash, no clean-up)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SaveNormStateAtStart(Callback):
    """Save the norm layers' buffers when training starts (after any checkpoint restore)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module):
        state = {k: v.clone() for k, v in pl_module.state_dict().items() if ".bn" in k}
        torch.save(state, self.path)


class ScaledGroupNorm(nn.GroupNorm):
    """A user's own norm from outside the package: GroupNorm with a fixed output scale."""

    def __init__(self, num_features: int, groups: int = 4, scale: float = 1.0) -> None:
        super().__init__(groups, num_features)
        self.scale = scale

    def forward(self, x):
        return super().forward(x) * self.scale


class FailingNorm(nn.BatchNorm2d):
    """A norm that crashes in training: a cell that always fails."""

    def forward(self, x):
        if self.training:
            raise RuntimeError("FailingNorm: deliberate failure for the grid retry test")
        return super().forward(x)


class KillOnceAtStep(Callback):
    """SIGKILL this process at each of ``steps`` the first time it gets there (a marker file
    per step remembers it): a cell killed after a checkpoint, which its next attempt resumes.
    With ``rank``, only that DDP rank's process is killed (a rank on another node)."""

    def __init__(self, steps: list[int], marker: str, rank: int | None = None) -> None:
        self.steps, self.marker, self.rank = steps, marker, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        for step in self.steps:
            marker = f"{self.marker}.{step}"
            if trainer.global_step == step and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)


class SlowFirstAttempt(Callback):
    """Sleep ``seconds`` after every step of a run that started from scratch, none in a resumed
    one: a cell that outlives a short SLURM time limit on any CPU, then finishes quickly."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fresh = True

    def on_train_start(self, trainer, pl_module):
        self.fresh = trainer.global_step == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.fresh:
            time.sleep(self.seconds)


class BrokenInitNorm(nn.Module):
    """A plugin whose constructor fails (a bug in the plugin, not in the suite)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        raise RuntimeError("this plugin's constructor is broken")


class StallAfterStep(Callback):
    """In a run started from scratch, sleep ``seconds`` after every step past ``step``: a cell
    that writes its first checkpoint and then hangs; a resumed run does not stall."""

    def __init__(self, step: int, seconds: float) -> None:
        self.step, self.seconds = step, seconds
        self.fresh = True

    def on_train_start(self, trainer, pl_module):
        self.fresh = trainer.global_step == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.fresh and trainer.global_step > self.step:
            time.sleep(self.seconds)


class OnePassEvoNormB0(EvoNormB0):
    """EvoNorm-B0 with its variances as they were before 4fed34b (one pass, E[x²] − E[x]² from
    per-sample moments): the robustness check must fail on it, and scripts/step_cost.py times
    it against today's two-pass layer."""

    def batch_and_instance_variances(self, x, groups):
        c = x.shape[1]
        xf = x if x.dtype == torch.float64 else x.float()  # float64 for the kit's reference
        mean_i, sqmean_i = xf.mean(dim=(2, 3)), xf.square().mean(dim=(2, 3))
        mean_g = mean_i.view(groups, -1, c).mean(dim=1)
        var_b = (sqmean_i.view(groups, -1, c).mean(dim=1) - mean_g.square()).clamp_min(0)
        return var_b, (sqmean_i - mean_i.square()).clamp_min(0)


class NanInEvalNorm(nn.BatchNorm2d):
    """BN whose evaluation with running statistics gives NaN (training is plain BN): the
    fault probe of issue 35, item 1."""

    def forward(self, x):
        out = super().forward(x)
        return out if self.training else out * float("nan")


class NanPopulationNorm(nn.BatchNorm2d):
    """BN whose recomputed population statistics are NaN: the fit's own (EMA) evaluation is
    fine, the `precise` final evaluation is not."""

    def set_eval_statistics(self, mean, var, sqmean=None):
        self.running_mean.copy_(mean)
        self.running_var.fill_(float("nan"))


class HangingNorm(nn.BatchNorm2d):
    """A plugin whose constructor never returns (a lock it waits on for ever): the probe of
    issue 35, item 3."""

    def __init__(self, num_features, **kwargs):
        import time

        time.sleep(10**6)
        super().__init__(num_features, **kwargs)


class StopAfterEpochs(Callback):
    """End the fit after ``epochs`` epochs (its checkpoints written), as a requeued job's first
    attempt would end; on every rank alike."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True
