"""``result.json``: the one record a run leaves, its schema, and the suite's atomic writes.

A run's folder holds one ``result.json`` (written by :class:`smallbatch.run.ResultWriter`, rank
0 only). The grid store, the report and scripts read it through :func:`read_result` and
:func:`validate_result`; every file the suite writes goes through :func:`write_atomic`, so a
reader sees the old file or the new one, never a partial one. No torch or Lightning here.
"""

from __future__ import annotations

import json
import os
import secrets
from enum import Enum
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
BASE_STAMP = "base_config.json"  # the base config a grid cell ran under (its digest)
GRID_BASE_ENV = "SMALLBATCH_GRID_BASE"  # set by the grid for its cells: the base config's path
RUNNING_MARKER = "running.json"  # in a cell folder while a local grid runs an attempt of it


class Status(str, Enum):
    """How a run ended (``result.json``'s ``status``)."""

    FINISHED = "finished"
    DIVERGED = "diverged"  # the loss became NaN/Inf: a result (the norm failed), not a crash
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(s.value for s in Status)
DONE_STATUSES = (Status.FINISHED.value, Status.DIVERGED.value)  # runs that have a result
# A result's metric (its task's: ``acc`` for classification, ``miou`` for segmentation; results
# without the field are classification's) names its value fields: see :func:`metric_keys`.
DEFAULT_METRIC = "acc"
SUMMARIES = ("final", "median_last5", "best")  # of the fit's evaluations: best_val_<metric>, ...


# metric -> (its name in a table's caption, what a plot's error axis shows: 100 · (1 − metric),
# its short name in column heads and sentences)
METRIC_LABELS = {
    "acc": ("Top-1 accuracy", "top-1 error", "accuracy"),
    "miou": ("mIoU", "1 − mIoU", "mIoU"),
}


def metric_labels(metric: str) -> tuple[str, str, str]:
    """(how a caption names ``metric``, how a plot names 1 − it, its short name)."""
    return METRIC_LABELS.get(metric, (metric, f"1 − {metric}", metric))


def metric_of(result: dict[str, Any]) -> str:
    """The metric a result's values are (``acc`` where the file does not say)."""
    return str(result.get("metric") or DEFAULT_METRIC)


def metric_keys(metric: str = DEFAULT_METRIC) -> dict[str, str]:
    """The result.json keys of ``metric``'s values: ``final``, ``median_last5``, ``best`` (the
    fit's evaluations: ``best_val_<metric>``, ...), ``history`` (``val_<metric>_history``) and
    ``eval`` (per evaluation mode: ``eval_<metric>``). For ``acc``, the keys every
    classification result has had."""
    keys = {summary: f"{summary}_val_{metric}" for summary in SUMMARIES}
    return {**keys, "history": f"val_{metric}_history", "eval": f"eval_{metric}"}


class InvalidResult(ValueError):
    """A result.json that cannot be read or does not have the expected shape."""


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, ``fsync`` and
    ``os.replace``. The temporary file is created with mode 0666, which the kernel reduces by
    the umask as for any ``open()`` (Lightning's files too), not ``mkstemp``'s 0600: a
    group-shared results folder stays readable. On failure (a full disk) the temporary file is
    removed and the error names ``path``; the old file, if any, is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # say which file could not be written
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """``data`` as indented, sorted-key JSON, written with :func:`write_atomic`."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def base_config_record(path: str | os.PathLike) -> dict[str, Any]:
    """The base config at ``path`` as it is now: its path and the digest of its parsed content
    (comments and layout do not count)."""
    import yaml

    from .naming import stable_digest

    return {
        "base_config": str(path),
        "digest": stable_digest(yaml.safe_load(Path(path).read_text())),
    }


def read_result(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's result, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((Path(run_dir) / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


# The samples per normalization group, b, of a run (its ghost batch capped at the per-device
# batch, or the whole batch): the record's key. The requested ghost batch is the config's
# ``model.norm_batch`` (None: the whole batch); results written before 866c0ba (2026-12-07, the
# committed ones under docs/results/ among them) recorded b as ``norm_batch``.
UNRECORDED_MACHINE = "machine not recorded"


def machine_kind(result: dict[str, Any]) -> str:
    """The kind of machine a run ran on, as rows are compared: the GPU's name, or the CPU's
    model with what changes its kernels (PyTorch's capability, AMX, native bf16) where recorded
    (``AMD EPYC (AVX2)``); results from before 2026-12 have no machine."""
    m = result.get("machine") or {}
    if m.get("cuda_device"):
        return str(m["cuda_device"])
    if not m.get("cpu"):
        return UNRECORDED_MACHINE
    extras = [str(m["cpu_capability"])] if m.get("cpu_capability") else []
    if m.get("cpu_amx"):
        extras.append("AMX")
    elif m.get("cpu_bf16_native"):
        extras.append("BF16")
    return f"{m['cpu']} ({', '.join(extras)})" if extras else str(m["cpu"])


NORMALIZATION_BATCH = "normalization_batch"
OLD_NORMALIZATION_BATCH = "norm_batch"


def normalization_batch_of(result: dict[str, Any]) -> int:
    """A result's b (:data:`NORMALIZATION_BATCH`, or the older key; the batch when absent)."""
    value = result.get(NORMALIZATION_BATCH, result.get(OLD_NORMALIZATION_BATCH))
    return int(value or result["batch_size"])


def validate_result(data: Any) -> dict[str, Any]:
    """Check the fields the report and the grid rely on; raise :class:`InvalidResult` saying
    which."""
    if not isinstance(data, dict):
        raise InvalidResult(f"expected a JSON object, got {type(data).__name__}")
    if not isinstance(data.get("norm"), str) or not data["norm"]:
        raise InvalidResult(f"'norm' must be a name, got {data.get('norm')!r}")
    for key in ("batch_size", NORMALIZATION_BATCH, OLD_NORMALIZATION_BATCH):
        value = data.get(key)
        if value is None and key != "batch_size":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidResult(f"{key!r} must be an integer >= 1, got {value!r}")
    if data.get("status") not in STATUSES:
        raise InvalidResult(f"'status' must be one of {STATUSES}, got {data.get('status')!r}")
    if not isinstance(data.get("setting"), dict):
        raise InvalidResult(
            "'setting' (the run's resolved config, which says which runs a table may average) is "
            "missing or not a mapping: re-run the cell with this version to record it"
        )
    metric = data.get("metric", DEFAULT_METRIC)
    if not isinstance(metric, str) or not metric.isidentifier():
        raise InvalidResult(f"'metric' must be a metric's name (acc, miou), got {metric!r}")
    keys = metric_keys(metric)
    eval_values = data.get(keys["eval"])
    if eval_values is not None and not isinstance(eval_values, dict):
        raise InvalidResult(
            f"{keys['eval']!r} must be a mapping of mode to {metric}, got {eval_values!r}"
        )
    errors = data.get("eval_errors")
    if errors is not None and not (
        isinstance(errors, dict) and all(isinstance(v, str) for v in errors.values())
    ):
        raise InvalidResult(f"'eval_errors' must map modes to messages, got {errors!r}")
    numbers = {keys[k]: data.get(keys[k]) for k in SUMMARIES}
    numbers.update({f"{keys['eval']}.{k}": v for k, v in (eval_values or {}).items()})
    history = data.get(keys["history"])
    if history is not None and not isinstance(history, list):
        raise InvalidResult(
            f"{keys['history']!r} must be a list of {metric} values, got {history!r}"
        )
    numbers.update({f"{keys['history']}[{i}]": v for i, v in enumerate(history or [])})
    for key, value in numbers.items():
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InvalidResult(f"{key!r} must be a number or null, got {value!r}")
        if not 0 <= value <= 1:  # NaN fails this too: the metrics are fractions
            raise InvalidResult(
                f"{key!r} must be a {metric} value in [0, 1] or null, got {value!r}"
            )
    return data


def load_result_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one result.json; raises :class:`InvalidResult` (bad JSON included)
    or ``OSError``."""
    try:
        return validate_result(json.loads(Path(path).read_text()))
    except json.JSONDecodeError as exc:
        raise InvalidResult(f"not valid JSON: {exc}") from exc
