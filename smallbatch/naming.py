"""What names a run: its label ``<norm>-nb<normalization batch>[-pb<per-device batch>]-s<seed>``,
the one rule for the normalization batch, the norm's display name, which config keys are
settings, and stable digests. Imports nothing from the package but :mod:`smallbatch.errors`
(and no torch), so the grid, the CLI, the norms and the report share it.

The normalization batch leads the label because it is the grid's axis (the per-device batch
appears only when ghost batches make it differ), e.g. ``bn-nb4-s0`` or ``brn-nb2-pb8-s0``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

# config keys that say where or under which name a run is, not what it computes
LOCATION_KEYS = (
    "config", "run_dir", "name", "group", "tags", "trainer.default_root_dir",
    "trainer.logger", "data.data_dir", "data.init_args.data_dir",
)  # fmt: skip
# keys a resumed run has and a fresh one does not (or has as null): the checkpoint to resume
# from, and what the CLI links from the data module, read back from the checkpoint's
# hyperparameters. Neither changes what the run computes.
RESUME_KEYS = ("ckpt_path", "ckpt_settings", "model.in_chans", "model.num_classes")
NOT_SETTINGS = LOCATION_KEYS + RESUME_KEYS
SEED_KEY = "seed_everything"
RECIPE_KEY = "recipe"  # the training recipe a run used (smallbatch.grid.recipes); unset: uniform
UNIFORM_RECIPE = "uniform"


def _under(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


MAX_NAME = 100  # a run or grid name: a folder name, a W&B run and group name
_NAME_RE = re.compile(r"[A-Za-z0-9_+=][A-Za-z0-9._+=-]*")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a run or grid folder (and W&B run/group), or None: 1 to
    ``MAX_NAME`` characters, letters, digits and ``. _ + = -``, not starting with ``.`` or ``-``."""
    if not name:
        return "is empty"
    if len(name) > MAX_NAME:
        return (
            f"is {len(name)} characters long; at most {MAX_NAME} (it names a folder and a W&B run)"
        )
    if not _NAME_RE.fullmatch(name):
        return (
            f"{name!r} may use letters, digits and . _ + = - only, not starting with . or - "
            "(it names a folder and a W&B run)"
        )
    return None


def is_setting_key(key: str) -> bool:
    """Whether a flat config key belongs to a run's setting (what seeds of one setting share)."""
    return key != SEED_KEY and not _under(key, NOT_SETTINGS)


def is_location_key(key: str) -> bool:
    """Whether a flat config key only says where a run is written (left out of its digest)."""
    return _under(key, ("config", "run_dir", "trainer.default_root_dir"))


def normalization_batch(norm_batch: int | None, batch: int) -> int:
    """Samples per normalization group, the one rule of the suite: the ghost batch
    ``norm_batch`` capped at the per-device batch (a batch no larger than it is normalized
    whole), else the whole per-device batch."""
    return min(norm_batch or batch, batch)


def norm_label(norm: Any) -> str:
    """A norm's short name in labels and tables: a registered name as given, or the last
    component of a class path (``pkg.mod.MyNorm`` → ``MyNorm``), also inside a
    ``{class_path, init_args}`` mapping; a callable's ``__name__``. Idempotent."""
    if isinstance(norm, Mapping):
        norm = norm.get("class_path", "custom")
    if callable(norm):
        return getattr(norm, "__name__", "custom")
    return str(norm).replace(":", ".").rsplit(".", 1)[-1]


def model_norm_label(norm: Any, head_norm: Any = None) -> str:
    """A model's norms in labels and tables: the backbone's (:func:`norm_label`), and a
    segmentation head's after a ``+`` where it names another (``frozen_bn+gn``)."""
    label = norm_label(norm)
    if head_norm is None or norm_label(head_norm) == label:
        return label
    return f"{label}+{norm_label(head_norm)}"


def model_norms(model: Mapping[str, Any], prefix: str = "") -> list[tuple[Any, Any]]:
    """The (norm, norm_args) pairs a model is built with: the backbone's, and a segmentation
    head's own (``head_norm``) where one is named. ``model`` holds ``norm``, ``norm_args``,
    ``head_norm``, ``head_norm_args`` under ``prefix`` (``"model."`` for a grid cell's keys)."""
    norms = [(model.get(f"{prefix}norm"), model.get(f"{prefix}norm_args"))]
    if model.get(f"{prefix}head_norm") is not None:
        norms.append((model[f"{prefix}head_norm"], model.get(f"{prefix}head_norm_args")))
    return norms


def stable_digest(data: Any, length: int = 16) -> str:
    """Hex digest of ``data`` as sorted-key JSON: equal for equal settings, across runs."""
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def run_label(norm: Any, batch_size: Any, norm_batch: Any = None, seed: Any = None) -> str:
    """The run name for this norm (any spec: :func:`norm_label`), per-device batch,
    normalization batch and seed."""
    if isinstance(batch_size, int) and (norm_batch is None or isinstance(norm_batch, int)):
        nb = normalization_batch(norm_batch, batch_size)
    else:  # not yet validated (a grid file's raw value): shown as given
        nb = norm_batch or batch_size
    label = f"{norm_label(norm)}-nb{nb}"
    if nb != batch_size:
        label += f"-pb{batch_size}"
    return label if seed is None else f"{label}-s{seed}"


def cli_value(value: Any) -> str:
    """A value as the Lightning CLI reads it, and as report labels show it: strings as-is,
    everything else as JSON (what JSON cannot say, by its ``str``)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)
