"""One cell's runner, the suite's Lightning CLI (``smallbatch fit/validate/test/predict``): run
folders, run names, git provenance, W&B defaults, results and the checkpoint policy around
``LightningCLI``.

Every Lightning run gets a run folder (``--run_dir`` or Lightning's
``--trainer.default_root_dir``, default ``runs/<name>/<time>``) that holds its config,
checkpoints, W&B files and ``result.json``; two runs never share one unless asked.
It lives below the grid (``smallbatch.grid`` runs, validates and times cells through it) and
the command table (``smallbatch.cli``), and imports neither.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal, NoReturn

from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from ..data import SmallBatchDataModule
from ..errors import UserError, debug_enabled, report, summarize_parse_error
from ..hardware import AUTO, resolve_precision
from ..models.preflight import check_feature_maps
from ..naming import (
    RESUME_KEYS,
    cli_value,
    is_location_key,
    is_setting_key,
    model_norm_label,
    model_norms,
    name_problem,
    normalization_batch,
    run_label,
    stable_digest,
)
from ..norms import probe_norm
from ..results import (
    BASE_STAMP,
    DEFAULT_METRIC,
    GRID_BASE_ENV,
    NORMALIZATION_BATCH,
    base_config_record,
    write_json_atomic,
)
from ..yaml_keys import check_yaml_file
from .final_eval import FinalEvaluation
from .module import SmallBatchModule, norm_display_name
from .progress import LogLineProgressBar
from .result_writer import ResultWriter
from .wandb_logger import configure_wandb_logger, finish_wandb_runs

EVAL_COMMANDS = ("validate", "test", "predict")
_TRAINERS: list = []  # trainers of the current CLI call, to close their W&B runs
_NEW_RUN_DIRS: list[Path] = []  # run folders this call created


def data_args(cfg: Namespace) -> Namespace:
    """The data module's arguments (``init_args`` in subclass mode)."""
    return cfg.data.init_args if "init_args" in cfg.data else cfg.data


def run_name(cfg: Namespace) -> str:
    """``--name``, else ``<norm>-nb<normalization batch>[-pb<per-device batch>]-s<seed>``
    (:func:`smallbatch.naming.run_label`, as grid cells are named), e.g. ``brn-nb4-s0`` or,
    with ghost batches, ``brn-nb2-pb8-s0``."""
    if cfg.get("name"):
        return str(cfg.name)
    norm = model_norm_name(cfg.model)  # checks that the norms resolve
    return run_label(norm, data_args(cfg).batch_size, cfg.model.norm_batch, cfg.seed_everything)


def model_norm_name(model: Any) -> str:
    """The model's norms as runs and tables name them: the backbone's, and a segmentation
    head's after a ``+`` where it differs (:func:`smallbatch.naming.model_norm_label`)."""
    head = model.get("head_norm")
    norm = norm_display_name(model.norm)
    return model_norm_label(norm, norm_display_name(head) if head is not None else None)


def cell_identity(cfg: Namespace, name: str) -> dict[str, Any]:
    """What a run is, the one record of it: in result.json, W&B's config and tags. The dataset
    is its data module's class name; ``normalization_batch`` the samples per normalization group
    b (the config's ``model.norm_batch`` is the requested ghost batch, None for the whole)."""
    data = data_args(cfg)
    return {
        "name": name,
        "task": cfg.model.get("task") or "classification",
        "norm": model_norm_name(cfg.model),
        "norm_args": _jsonable(cfg.model.norm_args or {}),
        "batch_size": data.batch_size,
        NORMALIZATION_BATCH: normalization_batch(cfg.model.norm_batch, data.batch_size),
        "dataset": str(cfg.data.get("class_path", "")).rsplit(".", 1)[-1] or None,
        "devices": cfg.trainer.devices,
        "num_nodes": cfg.trainer.num_nodes,
        "seed": cfg.seed_everything,
        "backbone": cfg.model.backbone,
        "group": cfg.group,
    }


def _jsonable(data: Any) -> Any:
    """``data`` with anything JSON cannot hold (paths, ...) turned into strings."""
    return json.loads(json.dumps(data, default=str))


def config_digest(cfg: Namespace) -> str:
    """Stable digest of the run's config, without where it is written."""
    flat = vars(cfg.clone().as_flat())
    return stable_digest(_jsonable({k: v for k, v in flat.items() if not is_location_key(k)}))


def run_setting(cfg: Namespace) -> dict[str, Any]:
    """The resolved config as flat ``{dotted key: value}``, without the seed, the run's name
    and location, and the logger: runs with equal settings differ only in their seed, and
    ``smallbatch report`` averages exactly those."""
    flat = vars(cfg.clone().as_flat())
    return _jsonable({k: v for k, v in flat.items() if is_setting_key(k)})


def code_version() -> str | None:
    """The git commit the package runs from (``+dirty`` with uncommitted changes to the
    package's tracked files), or None outside a git checkout: recorded in result.json."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                check=True,
            ).stdout.strip()  # fmt: skip

        commit = git("rev-parse", "--short=12", "HEAD")
        # the package's own files: a grid rewriting its manifest in the checkout is no change
        # to the code (configs are recorded in full in the result's setting)
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "smallbatch")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def setting_digest(setting: dict[str, Any]) -> str:
    """Digest of :func:`run_setting`: equal for the seeds of one setting."""
    return stable_digest(setting)


def eval_run_dir(cfg: Namespace, subcommand: str, name: str) -> tuple[str, dict[str, Any]]:
    """A new folder for an evaluation: ``<fit run>/eval/<subcommand>-<time>`` when the fit's
    folder is known (``--run_dir`` of a saved config, or a ``--ckpt_path`` in its
    ``checkpoints/``), else ``runs/<name>/eval/...``; and what links the evaluation to the fit."""
    fit_dir = cfg.run_dir
    ckpt = cfg.get("ckpt_path")
    if not fit_dir and ckpt and Path(str(ckpt)).parent.name == "checkpoints":
        fit_dir = str(Path(str(ckpt)).parent.parent)
    base = Path(fit_dir) / "eval" if fit_dir else Path("runs") / name / "eval"
    folder = base / f"{subcommand}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    link = {
        "name": f"{name}-{subcommand}",
        "job_type": "eval",
        "fit_run_dir": fit_dir,
        "fit_run_id": fit_wandb_id(fit_dir) if fit_dir else None,
        "ckpt_path": str(ckpt) if ckpt else None,
    }
    return str(folder), link


def fit_wandb_id(fit_dir: str | os.PathLike) -> str | None:
    """The W&B run id of a fit (its newest ``wandb/[offline-]run-<time>-<id>`` folder)."""
    runs = sorted(Path(fit_dir).glob("wandb/*run-*-*"), key=lambda p: p.name.split("run-")[-1])
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


def ignore_norm_batch_of_batch_free_norms(cfg: Namespace) -> None:
    """``--model.norm_batch`` on a norm that uses no batch statistics (GN, LN, ...) changes
    nothing it computes: said once, then dropped from the config and the run's name."""
    if cfg.model.norm_batch is None:
        return
    if model_norms_batch_free(cfg.model):
        label = norm_display_name(cfg.model.norm)
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(
                f"note: --model.norm_batch {cfg.model.norm_batch} is ignored: {label} uses no "
                "batch statistics, so every normalization batch computes the same (left out of "
                "the run's name)",
                file=sys.stderr,
            )
        cfg.model.norm_batch = None


def model_norms_batch_free(model: Any) -> bool:
    """Whether every norm the model config names is batch-free: ``norm`` and, for a
    segmentation model, ``head_norm`` (a frozen backbone under a BN head is not)."""
    return all(probe_norm(n, **(args or {})).batch_free for n, args in model_norms(model))


class LoggedSaveConfigCallback(SaveConfigCallback):
    """Saves config.yaml in the run folder and also records the whole config in the loggers."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        """The resolved config, nested once under ``lightning`` (not one key per leaf)."""
        data = self.config.clone().as_dict()
        data.pop("config", None)  # the paths of the --config files
        for logger in trainer.loggers:
            logger.log_hyperparams({"lightning": _jsonable(data)})


def accept_auto_precision(parser: LightningArgumentParser) -> None:
    """``--trainer.precision auto`` (:func:`smallbatch.hardware.resolve_precision`): Lightning's
    type for the option, widened by ``auto``; resolved before the trainer is built."""
    for action in parser._actions:
        if action.dest == "trainer.precision" and hasattr(action, "_typehint"):
            action._typehint = Literal[AUTO] | action._typehint  # type: ignore[attr-defined]
            auto = "'auto': bf16-mixed where bf16 is native, else 32-true"
            action.help = f"{action.help or ''} ({auto})"
            return
    raise RuntimeError("trainer.precision not found: the Lightning CLI changed its parser")


class ConciseArgumentParser(LightningArgumentParser):
    """Lightning's parser, but a bad value or option ends with one ``error:`` line (what was
    wrong, what is accepted, a suggestion) instead of the whole usage and jsonargparse's
    "Union subtypes" report; ``--debug`` / ``SMALLBATCH_DEBUG=1`` restores the full output."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if debug_enabled(sys.argv):
            super().error(message, ex)
        options = [o for a in self._actions for o in a.option_strings]
        sub = getattr(ex, "subcommand_parser", None)
        if sub is not None:
            options += [o for a in sub._actions for o in a.option_strings]
        report(summarize_parse_error(message, ex, options))
        sys.exit(2)


class CheckpointSettingsError(UserError, ValueError):
    """``fit --ckpt_path`` with settings that differ from the checkpoint's."""


# model settings a resumed fit may differ in: linked from the data module at instantiation
# (the command line holds their defaults), not chosen by the user
_LINKED_MODEL_KEYS = tuple(k.removeprefix("model.") for k in RESUME_KEYS if k.startswith("model."))


def checkpoint_differences(asked: dict[str, Any], stored: dict[str, Any]) -> list[str]:
    """``key: command line X, checkpoint Y`` for each model setting the checkpoint holds that
    differs from what the command line asked."""
    out = []
    for key in sorted(set(asked) & set(stored)):
        if key in _LINKED_MODEL_KEYS:
            continue
        mine, theirs = _jsonable(asked[key]), _jsonable(stored[key])
        if mine != theirs:
            out.append(
                f"model.{key}: command line {cli_value(mine)}, checkpoint {cli_value(theirs)}"
            )
    return out


class SmallBatchCLI(LightningCLI):
    """LightningCLI with run folders, cell naming, W&B defaults, results and checkpoints."""

    def _parse_ckpt_path(self) -> None:
        """Lightning resumes a fit with the checkpoint's model settings over the command
        line's, silently; a fit whose command line asks for other settings (``--model.norm gn``
        on a BN checkpoint) is refused instead, naming both, unless
        ``--ckpt_settings checkpoint`` says the checkpoint's are meant."""
        sub = self.config.get("subcommand")
        if sub != "fit" or not self.config[sub].get("ckpt_path"):
            return super()._parse_ckpt_path()
        asked = self.config[sub].model.clone().as_dict()
        super()._parse_ckpt_path()
        stored = self.config[sub].model.clone().as_dict()
        # a batch-free norm's norm_batch is dropped before the fit (and so from its checkpoint):
        # asking for it again is no other setting
        if (
            asked.get("norm_batch") is not None
            and stored.get("norm_batch") is None
            and model_norms_batch_free(asked)
        ):
            asked["norm_batch"] = None
        differences = checkpoint_differences(asked, stored)
        if not differences:
            return
        ckpt = self.config[sub].ckpt_path
        if self.config[sub].get("ckpt_settings") == "checkpoint":
            print(f"note: resuming {ckpt} with its own settings, not the command line's: "
                  + "; ".join(differences), file=sys.stderr)  # fmt: skip
            return
        raise CheckpointSettingsError(
            f"--ckpt_path {ckpt} was trained with other settings than this command asks for "
            f"({'; '.join(differences)}): resuming it continues the checkpoint's run. Start a "
            "new run without --ckpt_path, or pass --ckpt_settings checkpoint to resume it as it "
            "was trained"
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="run folder (default: --trainer.default_root_dir if given, else "
            "runs/<name>/<time>)",
        )
        parser.add_argument(
            "--name", type=str | None, default=None, help="run name (default: from the cell)"
        )
        parser.add_argument("--group", type=str, default="adhoc", help="W&B group (a grid's name)")
        parser.add_argument("--tags", type=list[str], default=[], help="extra W&B tags")
        parser.add_argument(
            "--ckpt_settings",
            type=Literal["command_line", "checkpoint"],
            default="command_line",
            help="fit --ckpt_path: 'command_line' (default) refuses a checkpoint trained with "
            "other model settings than the command line's; 'checkpoint' resumes it with its own",
        )
        parser.add_argument(
            "--recipe",
            type=str | None,
            default=None,
            help="the training recipe this run follows, set by a recipe file "
            "(configs/recipes/<recipe>/<norm>.yaml, given as a second --config); unset: the "
            "config's own (uniform) protocol. Recorded in the run's setting and row label",
        )
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        accept_auto_precision(parser)
        parser.link_arguments("data.in_chans", "model.in_chans", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        ignore_norm_batch_of_batch_free_norms(cfg)
        name = run_name(cfg)
        for what, value in (("--name", name), ("--group", str(cfg.group))):
            if problem := name_problem(value):  # before any folder or W&B run is made
                raise UserError(f"{what} {problem}")
        requested = cfg.trainer.precision
        cfg.trainer.precision, note = resolve_precision(requested, cfg.trainer.accelerator)
        if note and os.environ.get("LOCAL_RANK", "0") == "0":  # once, not per DDP rank
            print(note, file=sys.stderr if note.startswith("warning") else sys.stdout, flush=True)
        eval_of = None
        run_dir = os.environ.get("SMALLBATCH_RUN_DIR")  # set: a DDP rank of this very command
        if not run_dir and self.subcommand in EVAL_COMMANDS:
            # never write into the fit's folder: a new one beside its files, linked to it
            run_dir, eval_of = eval_run_dir(cfg, self.subcommand, name)
        # Lightning's own --trainer.default_root_dir names the run folder too (--run_dir wins)
        run_dir = run_dir or cfg.run_dir or cfg.trainer.default_root_dir
        if not run_dir:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = str(Path("runs") / name / f"{stamp}-{os.getpid()}")
        cfg.run_dir = run_dir
        if not Path(run_dir).exists():
            _NEW_RUN_DIRS.append(Path(run_dir))  # removed again if the call fails before writing
        # DDP re-launches this command per rank: every rank must use the same folder.
        os.environ["SMALLBATCH_RUN_DIR"] = run_dir
        cfg.trainer.default_root_dir = run_dir
        cell = cell_identity(cfg, name)
        configure_wandb_logger(cfg.trainer, run_dir, name, cfg.group, cfg.tags, cell, eval_of)
        setting = run_setting(cfg)
        self._cell = {
            **cell,
            "precision": str(cfg.trainer.precision or "32-true"),
            "precision_requested": None if requested is None else str(requested),
            "setting": setting,
            "setting_digest": setting_digest(setting),
            "code_version": code_version(),
        }
        self._digest = config_digest(cfg)
        base = os.environ.get(GRID_BASE_ENV)
        if base and self.subcommand == "fit":  # a grid cell: the base config as it read it
            write_json_atomic(Path(run_dir) / BASE_STAMP, base_config_record(base))

    def before_fit(self) -> None:
        """Shapes first: a batch that is no multiple of its ghost batch, or batch 1 at a 1x1
        map, ends here with one line, before a model summary or anything in the run folder."""
        check_feature_maps(self.model.model, self.datamodule, copy_first=True)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]):
        run_dir = Path(config["default_root_dir"])
        task = getattr(getattr(self, "model", None), "task", None)  # the best checkpoint's metric
        given = list(config.get("callbacks") or []) + list(callbacks)
        if not any(isinstance(c, ModelCheckpoint) for c in given):
            callbacks.append(
                ModelCheckpoint(
                    dirpath=run_dir / "checkpoints",
                    filename="best-{epoch}-{step}",
                    monitor=f"val/{getattr(task, 'metric', DEFAULT_METRIC)}",
                    mode="max",
                )
            )
            # last.ckpt after every evaluation: Lightning's save_last=True writes it only when the
            # monitored checkpoint improved, so a resume could restart from an older epoch
            callbacks.append(
                ModelCheckpoint(
                    dirpath=run_dir / "checkpoints",
                    filename="last",
                    save_top_k=1,
                    enable_version_counter=False,
                )
            )
        bar_wanted = config.get("enable_progress_bar") is not False
        if bar_wanted and not any(isinstance(c, ProgressBar) for c in given):
            interactive = sys.stdout.isatty() and not os.environ.get("CI")
            # logs (CI, grid cells, SLURM): no bar; a line per epoch and every 5 %
            callbacks.append(RichProgressBar() if interactive else LogLineProgressBar())
        # the final evaluations first: the result writer records what they measured
        callbacks += [FinalEvaluation(), ResultWriter(self._digest, self._cell)]
        trainer = super()._instantiate_trainer(config, callbacks)
        _TRAINERS.append(trainer)
        return trainer


# Known-harmless messages of our dependencies on every call (filtered here, at our entry point):
# Lightning echoing argv when args are passed explicitly (we always do), its pytree deprecation
# (Lightning's own code, not ours) and its litlogger tip; W&B on the `anonymous` setting that
# Lightning's WandbLogger forwards.
QUIET_WARNINGS = (
    "LightningCLI's args parameter",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    "The anonymous setting has no effect",
)
# Lightning's "Seed set to 0" would precede every one-line error (the seed is in the config)
QUIET_LOG_PREFIXES = ("💡 Tip: For seamless cloud logging", "Seed set to")


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(QUIET_LOG_PREFIXES)


# Lightning's hint to prepend `srun`, printed whenever srun is on PATH: only useful inside a
# SLURM allocation, so it is kept there and dropped where no SLURM job is set
SRUN_HINT = "The `srun` command is available on your system but is not used"


def _quiet_known_noise() -> None:
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if not os.environ.get("SLURM_JOB_ID"):
        warnings.filterwarnings("ignore", message=SRUN_HINT)
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropKnownNoise) for f in log.filters):
        log.addFilter(_DropKnownNoise())


def lightning_main(args: list[str] | None = None, run: bool = True) -> SmallBatchCLI:
    """Run the Lightning CLI (``fit``/``validate``/``test``) with the suite's defaults."""
    _TRAINERS.clear()
    _NEW_RUN_DIRS.clear()
    outer_run_dir = os.environ.get("SMALLBATCH_RUN_DIR")  # only this call's DDP ranks share it
    try:
        for path in config_files(sys.argv[1:] if args is None else args):
            check_yaml_file(path)  # a repeated key: one line naming both, before anything runs
        with warnings.catch_warnings():
            _quiet_known_noise()
            return _make_cli(args, run)
    except Exception:
        _remove_empty_run_dirs()
        raise
    finally:
        if run:
            finish_wandb_runs(_TRAINERS)
        if outer_run_dir is None:
            os.environ.pop("SMALLBATCH_RUN_DIR", None)
        else:
            os.environ["SMALLBATCH_RUN_DIR"] = outer_run_dir


def config_files(args: list[str]) -> list[str]:
    """The files given with ``--config``/``-c`` (``--config=F`` too) in a CLI argument list."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _remove_empty_run_dirs() -> None:
    """A call that failed before writing anything leaves no empty run folder behind."""
    for folder in _NEW_RUN_DIRS:
        if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)
            parent = folder.parent  # runs/<name>/ when it held only this attempt
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()


def _make_cli(args: list[str] | None, run: bool) -> SmallBatchCLI:
    return SmallBatchCLI(
        SmallBatchModule,
        SmallBatchDataModule,
        parser_class=ConciseArgumentParser,
        subclass_mode_data=True,
        save_config_callback=LoggedSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )
