"""W&B defaults for a run: name, group, tags, config, save folder, and offline without a key."""

from __future__ import annotations

import netrc
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jsonargparse import Namespace
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from ..errors import UserError
from ..results import NORMALIZATION_BATCH, write_atomic
from .wandb_offline import parse_offline_run

WANDB_LOGGER = "WandbLogger"
QUIET_WANDB_LOGGER = "smallbatch.run.wandb_logger.WandbLogger"
_ANNOUNCED = False


RUN_ID_FILE = "wandb_run_id"  # in the run folder: every attempt of a cell logs to this run


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` without passing W&B the deprecated ``anonymous`` setting (it
    only makes W&B print a warning on every run), and, for a run resumed into the W&B run of an
    earlier attempt (``id`` + ``resume="allow"``), without logging a global step twice: steps
    that W&B already holds from earlier attempts (the resumed run's summary online, the earlier
    offline run files offline) are skipped; with the checkpoint's RNG states the resumed steps
    recompute the same values. Same arguments otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        self._logged_up_to: int | None = None

    @property
    def experiment(self) -> Any:
        """W&B's run, started on first use; a W&B failure to start it (no network, a project
        it may not write to, a refused key) is one line with the fix, not W&B's traceback."""
        import wandb

        try:
            return super().experiment
        except wandb.errors.Error as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WandbSetupError(f"W&B could not start the run: {why}; {WANDB_FIX}") from exc

    @rank_zero_only  # as Lightning's: the other ranks hold no run (a DummyExperiment)
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._logged_up_to is None:
            self._logged_up_to = logged_up_to(self.experiment)
        if step is not None and step <= self._logged_up_to:
            return  # W&B has this step from an earlier attempt of this run
        super().log_metrics(metrics, step)


def logged_up_to(run: Any) -> int:
    """The last ``trainer/global_step`` W&B holds for ``run`` from earlier attempts (-1: none):
    the resumed run's summary online; offline, the other offline runs with its id beside it
    (W&B writes what it received before a process was killed)."""
    step = -1
    summary = getattr(run, "summary", None)
    try:
        value = summary.get("trainer/global_step") if summary is not None else None
        step = int(value) if value is not None else -1
    except (TypeError, ValueError, AttributeError):
        pass
    files_dir = getattr(run, "dir", None)
    run_id = getattr(run, "id", None)
    if files_dir and run_id:
        here = Path(files_dir).parent
        for other in here.parent.glob(f"offline-run-*-{run_id}"):
            if other == here:
                continue
            try:
                rows = parse_offline_run(next(other.glob("run-*.wandb")))["history"]
            except (StopIteration, OSError, ValueError):
                continue
            steps = [r["trainer/global_step"] for r in rows if "trainer/global_step" in r]
            step = max([step, *map(int, steps)])
    return step


def cell_run_id(run_dir: str | Path) -> str:
    """The W&B run id of the run folder: created by its first attempt, reused by the rest."""
    path = Path(run_dir) / RUN_ID_FILE
    try:
        return path.read_text().strip()
    except OSError:
        pass
    run_id = secrets.token_hex(6)  # W&B ids: letters and digits
    write_atomic(path, run_id)
    return run_id


def wandb_has_credentials() -> bool:
    """True when an API key is configured (env var or the netrc entry ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


ONLINE_MODES = ("online", "run")
WANDB_FIX = (
    "run `wandb login` (or set WANDB_API_KEY), or log offline with WANDB_MODE=offline "
    "(upload later with `wandb sync`)"
)


class WandbSetupError(UserError, RuntimeError):
    """W&B cannot log this run as configured; the message says how to fix it."""


def check_wandb_can_log(args: Namespace) -> None:
    """Online logging (WANDB_MODE=online, or ``offline: false`` asked with that mode) needs an
    API key: without one W&B fails deep inside the fit; say so first, in one line."""
    mode = os.environ.get("WANDB_MODE")
    if mode in ONLINE_MODES and not args.get("offline") and not wandb_has_credentials():
        raise WandbSetupError(
            f"W&B is set to log online (WANDB_MODE={mode}) but no API key is configured: "
            + WANDB_FIX
        )


def _wandb_loggers(trainer_cfg: Namespace) -> list[Namespace]:
    logger = trainer_cfg.get("logger")
    items = logger if isinstance(logger, list) else [logger]
    return [
        item
        for item in items
        if isinstance(item, Namespace) and str(item.get("class_path", "")).endswith(WANDB_LOGGER)
    ]


def configure_wandb_logger(
    trainer_cfg: Namespace,
    run_dir: str,
    name: str,
    group: str,
    tags: list[str],
    cell: dict[str, Any],
    eval_of: dict[str, Any] | None = None,
) -> None:
    """Fill unset WandbLogger arguments: name = the cell, group, tags, save_dir = run folder,
    and offline mode when no credentials exist (``wandb sync`` uploads later).

    ``eval_of`` (validate/test/predict): a run of its own in the evaluation's folder, named
    ``<cell>-<subcommand>``, ``job_type`` eval, with the fit's run id and folder in its config,
    whatever the fit's saved config says about name, id and save_dir."""
    global _ANNOUNCED
    for logger in _wandb_loggers(trainer_cfg):
        if logger.class_path == "lightning.pytorch.loggers.WandbLogger":
            logger.class_path = QUIET_WANDB_LOGGER  # a strict subclass, see WandbLogger above
        args = logger.get("init_args") or Namespace()
        args.name = args.get("name") or name
        args.group = args.get("group") or group
        args.save_dir = args.get("save_dir") if args.get("save_dir") not in (None, ".") else run_dir
        cell_tags = [
            f"norm:{cell['norm']}",
            f"nb{cell[NORMALIZATION_BATCH]}",
            f"pb{cell['batch_size']}",
            f"seed:{cell['seed']}",
        ]
        args.tags = list(dict.fromkeys([*(args.get("tags") or []), *cell_tags, *tags]))
        args.config = {**(args.get("config") or {}), **cell}
        if eval_of is not None:
            args.name, args.save_dir, args.id, args.version = eval_of["name"], run_dir, None, None
            args.job_type = eval_of["job_type"]
            args.config = {**args.config, **{k: v for k, v in eval_of.items() if k != "name"}}
        check_wandb_can_log(args)  # before anything is made: a rerun is the same command
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        if eval_of is None and not args.get("id") and not args.get("version"):
            args.id = cell_run_id(args.save_dir)  # one W&B run per cell, across attempts
            args.resume = "allow"
        # Offline runs go through W&B's own offline mode (WANDB_MODE). Lightning's `offline`
        # flag is set too unless checkpoints are to be logged: Lightning refuses log_model with
        # it, while W&B keeps artifacts of an offline run and uploads them with `wandb sync`.
        if os.environ.get("WANDB_MODE") is None and not wandb_has_credentials():
            os.environ["WANDB_MODE"] = "offline"
            if not _ANNOUNCED:
                _ANNOUNCED = True
                rank_zero_info(
                    f"W&B: no API key found, logging offline under {args.save_dir}/wandb "
                    "(upload later with `wandb sync <that folder>/offline-run-*`)"
                )
        if os.environ.get("WANDB_MODE") == "offline":
            args.offline = not args.get("log_model")
        logger.init_args = args


def finish_wandb_runs(trainers: list) -> None:
    """Finish the W&B runs of these trainers' WandbLoggers (one W&B run per CLI run, also when
    the CLI is called in-process, and the offline files complete when the call returns)."""
    from lightning.pytorch.loggers import WandbLogger

    for trainer in trainers:
        for logger in getattr(trainer, "loggers", []):
            run = getattr(logger, "_experiment", None) if isinstance(logger, WandbLogger) else None
            if run is not None:
                run.finish()
