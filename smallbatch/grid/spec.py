"""Grid files: a base Lightning CLI config, axes of dotted CLI keys, overrides, an executor.

```yaml
name: quickstart
base_config: ../quickstart.yaml          # relative to this file
axes:                                    # the cross product of these lists = the cells
  model.norm: [bn, brn, cbn, gn, ln]
  data.batch_size: [2, 8, 32]
  seed_everything: [0, 1]
args: {trainer.max_epochs: 2}            # the same for every cell
overrides:                               # per-cell: applied where every `when` key matches
  - when: {model.norm: brn}
    set: {model.norm_args: {unit: fraction, warmup: 0.1, rmax_at: 0.8, dmax_at: 0.5}}
executor: {kind: local, max_parallel: 2, jobs_per_gpu: 2, retries: 1}
run_root: runs/grid                      # results in <run_root>/<name>/
ghost_devices: 8                         # optional: emulate 8 devices x b on one device
fixed_total_batch: 32                    # optional, instead: per-device batch 32 in every cell,
                                         # statistics over groups of b (data.batch_size = b)
```

``fixed_total_batch: T`` is the constant-total-batch protocol (the MABN paper's "small
normalization batch, regular SGD batch"): every cell trains with the same batch T, steps and LR;
only the normalization batch b varies, as ghost batches of b (T/b emulated devices × b). A norm
whose output does not depend on the batch (GN, LN, IN, EvoNorm-S0, FRN) computes the same thing
at every b, and one that cannot take ghost batches (SyncBN) normalizes over all T: both get one
cell per seed (at b = T) instead of one per b.
"""

from __future__ import annotations

import itertools
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..naming import run_label, stable_digest

TOP_KEYS = {
    "name",
    "base_config",
    "axes",
    "args",
    "overrides",
    "executor",
    "run_root",
    "ghost_devices",
    "fixed_total_batch",
}
EXECUTOR_KEYS = {
    "kind",
    "max_parallel",
    "jobs_per_gpu",
    "threads_per_job",
    "retries",
    "cluster",
    "slurm_partition",
    "gpus_per_node",
    "nodes",
    "timeout_min",
    "cpus_per_task",
    "mem_gb",
    "array_parallelism",
    "signal_delay_s",
    "slurm_additional_parameters",
}
EXECUTOR_KINDS = ("local", "slurm")
RESERVED_KEYS = {"run_dir", "group", "config", "name"}


class GridSpecError(ValueError):
    """A grid file is invalid; the message names the file and the key."""


def cli_value(value: Any) -> str:
    """A value as the Lightning CLI reads it: strings as-is, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its overrides (dotted key → value) and where it is stored."""

    overrides: dict[str, Any]

    @property
    def digest(self) -> str:
        return stable_digest(self.overrides, length=10)

    @property
    def label(self) -> str:
        """``<norm>-nb<b>[-pb<per-device>]-s<seed>`` (:func:`smallbatch.naming.run_label`)."""
        norm = self.overrides.get("model.norm", "norm")
        if isinstance(norm, dict):
            norm = str(norm.get("class_path", "custom"))
        norm = str(norm).rsplit(".", 1)[-1]
        batch = self.overrides.get("data.batch_size", "x")
        norm_batch = self.overrides.get("model.norm_batch")
        return run_label(norm, batch, norm_batch, self.overrides.get("seed_everything"))

    @property
    def folder(self) -> str:
        return f"{self.label}-{self.digest}"

    @property
    def devices(self) -> int:
        value = self.overrides.get("trainer.devices", 1)
        return int(value) if str(value).isdigit() else 1


@dataclass
class GridSpec:
    """A validated grid file."""

    name: str
    base_config: Path
    axes: dict[str, list[Any]]
    args: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    executor: dict[str, Any] = field(default_factory=dict)
    run_root: Path = Path("runs/grid")
    source: Path | None = None
    ghost_devices: int | None = None
    fixed_total_batch: int | None = None

    @property
    def run_dir(self) -> Path:
        return self.run_root / self.name

    def base_digest(self) -> str:
        """Digest of the base config's content (parsed: comments and layout do not count).
        The cell folders' digests cover the grid's own args and axes, not this file."""
        return stable_digest(yaml.safe_load(Path(self.base_config).read_text()))

    def cells(self) -> list[Cell]:
        """The cross product of the axes (in file order), with per-cell overrides applied;
        combinations that give the same cell (batch-free norms under ``fixed_total_batch``)
        appear once."""
        cells, seen = [], set()
        for _, cell in self.expand():
            if cell.digest not in seen:
                seen.add(cell.digest)
                cells.append(cell)
        return cells

    def expand(self) -> list[tuple[tuple, Cell]]:
        """(axis values, cell) for every combination of the axes, duplicates included."""
        keys = list(self.axes)
        out, probed = [], {}
        for values in itertools.product(*(self.axes[k] for k in keys)):
            cell = {**self.args, **dict(zip(keys, values, strict=True))}
            for rule in self.overrides:
                if all(cell.get(k) == v for k, v in rule.get("when", {}).items()):
                    cell.update(rule.get("set", {}))
            if self.ghost_devices and "data.batch_size" in cell:
                # emulate `ghost_devices` devices x b on one: batch G·b, statistics per b
                b = cell["data.batch_size"]
                cell["data.batch_size"] = self.ghost_devices * b
                cell["model.norm_batch"] = b
            if self.fixed_total_batch and "data.batch_size" in cell:
                b = cell["data.batch_size"]
                cell["data.batch_size"] = self.fixed_total_batch
                norm = (cell.get("model.norm"), cell.get("model.norm_args"))
                key = json.dumps(norm, sort_keys=True, default=str)
                if key not in probed:
                    probed[key] = norm_takes_ghost_batches(*norm)
                cell["model.norm_batch"] = b if probed[key] else None
            out.append((values, Cell(cell)))
        return out

    def run_names(self) -> dict[str, str]:
        """Cell digest → W&B run name: the cell's label, with the digest appended to labels that
        several cells share (cells that differ in an argument outside the label)."""
        cells = self.cells()
        counts: dict[str, int] = {}
        for cell in cells:
            counts[cell.label] = counts.get(cell.label, 0) + 1
        return {
            c.digest: c.label if counts[c.label] == 1 else f"{c.label}-{c.digest[:6]}"
            for c in cells
        }

    def cli_args(self, cell: Cell) -> list[str]:
        """The cell's ``smallbatch`` arguments: ``fit --config ... --run_dir ... --name ...``."""
        args = ["fit", "--config", str(self.base_config)]
        for key, value in cell.overrides.items():
            args += [f"--{key}", cli_value(value)]
        args += ["--run_dir", str(self.run_dir / "cells" / cell.folder), "--group", self.name]
        name = self.run_names().get(cell.digest)
        return args + (["--name", name] if name else [])

    def command(self, cell: Cell, python: str | None = None) -> list[str]:
        """The exact ``smallbatch fit`` command of a cell (without resume flags)."""
        return [python or sys.executable, "-m", "smallbatch.cli", *self.cli_args(cell)]

    def command_line(self, cell: Cell, python: str | None = None) -> str:
        return shlex.join(self.command(cell, python))


def norm_takes_ghost_batches(norm: Any, norm_args: dict[str, Any] | None = None) -> bool:
    """Whether this norm's statistics depend on the batch and it can split them into ghost
    batches (BN, BRN, CBN): probed on one layer of 64 channels. False for batch-free norms and
    for those that cannot (SyncBN), and when the layer cannot be built (validation says why)."""
    from ..norms import probe_norm

    try:
        return probe_norm(norm or "bn", **(norm_args or {})).ghost_batches
    except Exception:  # reported by validate_cells with the CLI's own message
        return False


def _fail(path: Path, key: str, message: str) -> GridSpecError:
    return GridSpecError(f"{path}: {key}: {message}")


def load_grid(path: str | Path, validate_cli: bool = True) -> GridSpec:
    """Read and validate a grid file; nothing runs when it is invalid."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise GridSpecError(f"{path}: grid file not found") from None
    except yaml.YAMLError as exc:
        raise GridSpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise GridSpecError(f"{path}: a grid file is a mapping with keys {sorted(TOP_KEYS)}")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise _fail(path, ", ".join(sorted(unknown)), f"unknown key; accepted: {sorted(TOP_KEYS)}")
    for key in ("name", "base_config", "axes"):
        if key not in raw:
            raise _fail(path, key, "missing (required: name, base_config, axes)")
    name = str(raw["name"])
    if not name or "/" in name or name.startswith("."):
        raise _fail(path, "name", f"{name!r} must be a plain folder name")
    base = (path.parent / raw["base_config"]).resolve()
    if not base.exists():
        raise _fail(path, "base_config", f"{raw['base_config']!r} not found (looked at {base})")
    axes = raw["axes"]
    if not isinstance(axes, dict) or not axes:
        raise _fail(path, "axes", "must be a non-empty mapping of dotted CLI keys to value lists")
    for key, values in axes.items():
        if key in RESERVED_KEYS:
            raise _fail(path, f"axes.{key}", "is set by the grid itself")
        if not isinstance(values, list) or not values:
            raise _fail(path, f"axes.{key}", "must be a non-empty list of values")
    args = raw.get("args") or {}
    if not isinstance(args, dict):
        raise _fail(path, "args", "must be a mapping of dotted CLI keys to values")
    overrides = raw.get("overrides") or []
    for i, rule in enumerate(overrides):
        if not isinstance(rule, dict) or set(rule) - {"when", "set"} or "set" not in rule:
            raise _fail(path, f"overrides[{i}]", "must be {when: {key: value}, set: {key: value}}")
    executor = {"kind": "local", **(raw.get("executor") or {})}
    bad = set(executor) - EXECUTOR_KEYS
    if bad:
        raise _fail(
            path, f"executor.{sorted(bad)[0]}", f"unknown; accepted: {sorted(EXECUTOR_KEYS)}"
        )
    if executor["kind"] not in EXECUTOR_KINDS:
        raise _fail(path, "executor.kind", f"{executor['kind']!r} is not one of {EXECUTOR_KINDS}")
    run_root = Path(raw.get("run_root", "runs/grid"))
    ghost = raw.get("ghost_devices")
    if ghost is not None and (not isinstance(ghost, int) or ghost < 1):
        raise _fail(path, "ghost_devices", f"{ghost!r} must be an integer >= 1")
    total = raw.get("fixed_total_batch")
    if total is not None:
        if not isinstance(total, int) or isinstance(total, bool) or total < 1:
            raise _fail(path, "fixed_total_batch", f"{total!r} must be an integer >= 1")
        if ghost is not None:
            raise _fail(path, "fixed_total_batch", "cannot be combined with ghost_devices")
        bad = [b for b in axes.get("data.batch_size", []) if not isinstance(b, int) or total % b]
        if bad:
            raise _fail(
                path,
                "axes.data.batch_size",
                f"{bad} do not divide fixed_total_batch {total}: with a fixed total batch the "
                "axis is the normalization batch b, and T/b ghost groups must be whole",
            )
    spec = GridSpec(name, base, axes, args, overrides, executor, run_root, path, ghost, total)
    if validate_cli:
        validate_cells(spec)
    return spec


def validate_cells(spec: GridSpec) -> None:
    """Parse every cell with the Lightning CLI's own parser (no instantiation) and check norm
    names against the registry; raise :class:`GridSpecError` naming the file and key."""
    import contextlib
    import io

    from ..lightning_cli import lightning_main
    from ..norms import NormConfigError, resolve_norm

    cells = spec.cells()
    for cell in cells:
        norm = cell.overrides.get("model.norm")
        if norm is not None:
            try:
                resolve_norm(norm)
            except NormConfigError as exc:
                raise _fail(spec.source, "model.norm", str(exc)) from exc
        batch = cell.overrides.get("model.norm_batch") or cell.overrides.get("data.batch_size", 1)
        if not isinstance(batch, int) or batch < 1:
            raise _fail(spec.source, "data.batch_size", f"{batch!r} must be an integer >= 1")
    # Parse one probe cell per axis value (the first cell holding it): every value is checked
    # by the CLI without parsing the whole cross product.
    expanded = spec.expand()
    first: dict[tuple[str, str], int] = {}  # (axis key, value) -> first cell holding it
    for index, (combo, _) in enumerate(expanded):
        for key, value in zip(spec.axes, combo, strict=True):
            first.setdefault((key, json.dumps(value, sort_keys=True, default=str)), index)
    built: set[str] = set()
    for cell in (expanded[i][1] for i in sorted(set(first.values()))):
        args = spec.cli_args(cell) + ["--print_config"]
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                lightning_main(args)
        except SystemExit as exc:
            if exc.code not in (0, None):
                message = err.getvalue().strip().splitlines()
                detail = message[-1] if message else f"exit code {exc.code}"
                raise GridSpecError(
                    f"{spec.source}: cell {cell.label} ({cell.overrides}) is rejected by the "
                    f"CLI: {detail}"
                ) from None
        config = yaml.safe_load(out.getvalue()) or {}
        key = json.dumps([config.get("model"), config.get("data")], sort_keys=True, default=str)
        if key not in built:  # each distinct model and data section, built once
            built.add(key)
            _check_cell_builds(spec, cell, config)


def _check_cell_builds(spec: GridSpec, cell: Cell, config: dict[str, Any]) -> None:
    """Build the cell's model and data module (no trainer, no data read): unknown backbones,
    norm arguments a layer rejects, a batch larger than the training subset, a dataset that is
    nowhere to be found and the like fail here, before any cell runs."""
    import importlib

    from ..errors import first_line, user_error_types
    from ..module import SmallBatchModule

    try:
        model_args = dict(config.get("model") or {})
        data = config.get("data") or {}
        datamodule = None
        if isinstance(data, dict) and data.get("class_path"):
            module, _, name = data["class_path"].rpartition(".")
            datamodule = getattr(importlib.import_module(module), name)(
                **(data.get("init_args") or {})
            )
            if callable(getattr(datamodule, "check_available", None)):
                datamodule.check_available()
            for key in ("num_classes", "in_chans"):  # linked from the data module, as by the CLI
                if isinstance(getattr(datamodule, key, None), int):
                    model_args[key] = getattr(datamodule, key)
        model = SmallBatchModule(**model_args)
        if datamodule is not None:
            check_feature_maps(model, datamodule)
    except (*user_error_types(), ValueError, TypeError) as exc:
        raise GridSpecError(
            f"{spec.source}: cell {cell.label} ({cell.overrides}): {first_line(exc)}"
        ) from exc


def check_feature_maps(model: Any, datamodule: Any) -> None:
    """One training-mode forward of the backbone on the meta device (shapes only, nothing
    computed) at the data's image size and per-device batch: a batch-statistics layer that would
    see one value per channel (batch 1 at a 1x1 map, ghost groups included) raises
    :class:`BatchStatsError` here instead of in the cell. Data modules without ``image_size``,
    and layers the meta device cannot run, are left to the cell."""
    import torch

    from ..norms import BatchStatsError

    size, chans = getattr(datamodule, "image_size", None), getattr(datamodule, "in_chans", None)
    batch = getattr(datamodule, "batch_size", None)
    if not all(isinstance(v, int) and v > 0 for v in (size, chans, batch)):
        return
    backbone = model.model.to("meta").train()
    try:
        # forward, not __call__: a compiled backbone (nn.Module.compile) is not compiled for this
        backbone.forward(torch.empty(batch, chans, size, size, device="meta"))
    except BatchStatsError:
        raise
    except Exception:  # noqa: BLE001 - not a shape problem; the cell's run will show it
        return
