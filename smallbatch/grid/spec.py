"""Grid files: a base Lightning CLI config, axes of dotted CLI keys, overrides, an executor.

```yaml
name: quickstart
base_config: ../quickstart.yaml          # relative to this file
axes:                                    # the cross product of these lists = the cells
  model.norm: [bn, brn, cbn, gn, ln]
  data.batch_size: [2, 8, 32]            # per-device batch = normalization batch b; with
  seed_everything: [0, 1]                # ghost_devices / fixed_total_batch: model.norm_batch
args: {trainer.max_epochs: 2}            # the same for every cell
overrides:                               # per-cell: applied where every `when` key matches
  - when: {model.norm: brn}
    set: {model.norm_args: {unit: fraction, warmup: 0.1, rmax_at: 0.8, dmax_at: 0.5}}
executor: {kind: local, max_parallel: 2, jobs_per_gpu: 2, retries: 1}
run_root: runs/grid                      # results in <run_root>/<name>/
ghost_devices: 8                         # optional: emulate 8 devices x b on one device
fixed_total_batch: 32                    # optional, instead: per-device batch 32 in every cell,
                                         # statistics over groups of b
```

With ``ghost_devices`` or ``fixed_total_batch`` the batch axis is the normalization batch b and
is named ``model.norm_batch`` (an axis named ``data.batch_size`` there, the earlier spelling, is
read as ``model.norm_batch`` with a one-line notice); the grid sets ``data.batch_size``.

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

from ..errors import UserError
from ..naming import (
    RECIPE_KEY,
    UNIFORM_RECIPE,
    cli_value,
    model_norm_label,
    model_norms,
    name_problem,
    norm_label,
    run_label,
    stable_digest,
)
from ..results import base_config_record
from ..timeouts import TimeLimitExceeded, time_limit
from ..yaml_keys import RepeatedKeyError, check_yaml_file, load_yaml
from .recipes import recipe_file, recipe_problem

TOP_KEYS = {
    "name",
    "base_config",
    "axes",
    "args",
    "overrides",
    "exclude",
    "executor",
    "run_root",
    "ghost_devices",
    "fixed_total_batch",
}
RESERVED_KEYS = {"run_dir", "group", "config", "name"}
NORM_BATCH = "model.norm_batch"  # the batch axis of ghost_devices / fixed_total_batch grids
OLD_NORM_BATCH = "data.batch_size"  # its earlier spelling there


class GridSpecError(UserError, ValueError):
    """A grid file is invalid; the message names the file and the key."""


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
        norm = model_norm_label(self.overrides.get("model.norm", "norm"),
                                self.overrides.get("model.head_norm"))  # fmt: skip
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
    exclude: list[dict[str, Any]] = field(default_factory=list)
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
        return base_config_record(self.base_config)["digest"]

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

    def excluded(self, combination: dict[str, Any]) -> bool:
        """Whether an ``exclude`` entry matches these axis values (every key of the entry)."""
        return any(all(combination.get(k) == v for k, v in e.items()) for e in self.exclude)

    def matches_some_cell(self, when: dict[str, Any], excluded_too: bool = False) -> bool:
        """Whether ``when`` holds for some combination of the axes and args (that the grid
        runs, unless ``excluded_too``)."""
        keys = list(self.axes)
        for values in itertools.product(*(self.axes[k] for k in keys)):
            cell = {**self.args, **dict(zip(keys, values, strict=True))}
            if not excluded_too and self.excluded(cell):
                continue
            if all(cell.get(k) == v for k, v in when.items()):
                return True
        return False

    def expand(self) -> list[tuple[tuple, Cell]]:
        """(axis values, cell) for every combination of the axes, duplicates included."""
        keys = list(self.axes)
        out, probed = [], {}
        for values in itertools.product(*(self.axes[k] for k in keys)):
            cell = {**self.args, **dict(zip(keys, values, strict=True))}
            if self.excluded(cell):
                continue
            for rule in self.overrides:
                if all(cell.get(k) == v for k, v in rule.get("when", {}).items()):
                    cell.update(rule.get("set", {}))
            if cell.get(RECIPE_KEY) in (UNIFORM_RECIPE, None):
                cell.pop(RECIPE_KEY, None)  # the protocol itself: the cell as without the key
            if self.ghost_devices and NORM_BATCH in cell:
                # emulate `ghost_devices` devices x b on one: batch G·b, statistics per b
                cell["data.batch_size"] = self.ghost_devices * cell[NORM_BATCH]
            if self.fixed_total_batch and NORM_BATCH in cell:
                b = cell[NORM_BATCH]
                cell["data.batch_size"] = self.fixed_total_batch
                norms = cell_norms(cell)
                key = json.dumps(norms, sort_keys=True, default=str)
                if key not in probed:
                    probed[key] = model_takes_ghost_batches(norms)
                if probed[key] is None and b != self.fixed_total_batch:
                    raise spec_error(
                        self.source or Path("grid"),
                        "model.norm",
                        f"{' / '.join(norm_label(n) for n, _ in norms)!r} keeps batch statistics "
                        "but does not take ghost "
                        "batches, "
                        f"so its cells at b = {b} < fixed_total_batch {self.fixed_total_batch} "
                        "cannot be formed; give the layer supports_ghost_batch "
                        "(docs/plugins.md, section 5) or leave it out of this grid",
                    )
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
        if RECIPE_KEY in cell.overrides:  # right after the base: the cell's own keys still win
            recipe = cell.overrides[RECIPE_KEY]
            norm = cell.overrides.get("model.norm", "bn")
            args += ["--config", str(recipe_file(self.base_config, recipe, norm))]
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


def cell_norms(cell: dict[str, Any]) -> list[tuple[Any, Any]]:
    """The (norm, norm_args) pairs a cell's model is built with: the backbone's, and a
    segmentation head's own (``model.head_norm``) where the grid names one."""
    return model_norms(cell, prefix="model.")


def model_takes_ghost_batches(norms: list[tuple[Any, Any]]) -> bool | None:
    """:func:`norm_takes_ghost_batches` over a model's norms: None when one keeps batch
    statistics without ghost batches, True when one takes them, False when all are batch-free
    or synchronized (a frozen backbone with a GN head)."""
    found = [norm_takes_ghost_batches(norm, args) for norm, args in norms]
    if None in found:
        return None
    return any(found)


def norm_takes_ghost_batches(norm: Any, norm_args: dict[str, Any] | None = None) -> bool | None:
    """Whether this norm's statistics depend on the batch and it can split them into ghost
    batches (BN, BRN, CBN): probed on one layer of 64 channels. False for batch-free norms, for
    synchronized ones (SyncBN: one group of the whole batch) and when the layer cannot be built
    (validation says why); None for a batch-statistics norm that cannot take ghost batches."""
    from ..norms import probe_norm

    try:
        with time_limit(f"probing norm {cli_value(norm or 'bn')!r}"):
            traits = probe_norm(norm or "bn", **(norm_args or {}))
    except TimeLimitExceeded:
        raise
    except Exception:  # reported by validate_cells with the CLI's own message
        return False
    if traits.ghost_batches:
        return True
    return False if traits.batch_free or traits.synchronized else None


def _json_mapping(value: Any) -> Any:
    """``'{"class_path": ...}'`` (a string, as the CLI takes it) as the mapping it spells."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            return value  # validation says what is wrong with it
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# executor key -> (type check, least value, what is accepted)
EXECUTOR_NUMBERS = {
    "max_parallel": (_is_int, 1, "an integer >= 1"),
    "jobs_per_gpu": (_is_int, 1, "an integer >= 1"),
    "threads_per_job": (_is_int, 1, "an integer >= 1"),
    "retries": (_is_int, 0, "an integer >= 0"),
    "nodes": (_is_int, 1, "an integer >= 1"),
    "gpus_per_node": (_is_int, 0, "an integer >= 0 (0: CPU jobs)"),
    "cpus_per_task": (_is_int, 1, "an integer >= 1"),
    "array_parallelism": (_is_int, 1, "an integer >= 1"),
    "timeout_min": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        0,
        "minutes > 0",
    ),
    "mem_gb": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), 0, "a number > 0"),
    "signal_delay_s": (_is_int, 0, "an integer >= 0 (seconds)"),
}


def _check_executor(path: Path, executor: dict[str, Any]) -> None:
    """Every executor value up front: a typo fails the grid file, not its cells."""
    for key, (ok, least, accepted) in EXECUTOR_NUMBERS.items():
        if key not in executor or executor[key] is None:
            continue
        value = executor[key]
        strict = key in ("timeout_min", "mem_gb")
        if not ok(value) or value < least or (strict and value <= least):
            raise spec_error(path, f"executor.{key}", f"{value!r} must be {accepted}")


def _check_axes_and_args(path: Path, axes: dict[str, Any], args: dict[str, Any]) -> None:
    """Values a grid would otherwise take silently: a repeated axis value (the same cell twice),
    an axis also set in ``args`` (which would the cell get?), non-integer seeds, no epochs."""
    for key, values in axes.items():
        texts = [json.dumps(v, sort_keys=True, default=str) for v in values]
        repeated = sorted({t for t in texts if texts.count(t) > 1})
        if repeated:
            raise spec_error(
                path, f"axes.{key}", f"repeats {', '.join(repeated)}: list each value once"
            )
        if key in args:
            raise spec_error(path, f"args.{key}", "is also an axis: set it in one place")
    for seed in axes.get("seed_everything", [args.get("seed_everything", 0)]):
        if not _is_int(seed):
            raise spec_error(path, "seed_everything", f"{seed!r} must be an integer")
    for epochs in axes.get("trainer.max_epochs", [args.get("trainer.max_epochs", 1)]):
        if epochs is not None and (not _is_int(epochs) or epochs < 1):
            raise spec_error(path, "trainer.max_epochs", f"{epochs!r} must be an integer >= 1")


def _check_recipes(spec: GridSpec, cells: list[Cell]) -> None:
    """Every cell's recipe file exists and names itself (before anything runs)."""
    seen = set()
    for cell in cells:
        if RECIPE_KEY not in cell.overrides:
            continue
        key = (cell.overrides[RECIPE_KEY], norm_label(cell.overrides.get("model.norm", "bn")))
        if key in seen:
            continue
        seen.add(key)
        problem = recipe_problem(spec.base_config, *key)
        if problem:
            raise spec_error(spec.source or Path("grid"), RECIPE_KEY, problem)


def _rename_batch_axis(axes: dict[str, Any], overrides: list) -> tuple[dict[str, Any], list]:
    """The earlier spelling of the b axis (``data.batch_size``) as ``model.norm_batch``, in the
    axes (their order kept) and in the overrides' ``when`` conditions."""
    renamed = {(NORM_BATCH if k == OLD_NORM_BATCH else k): v for k, v in axes.items()}
    rules = [
        {
            **rule,
            "when": {
                (NORM_BATCH if k == OLD_NORM_BATCH else k): v
                for k, v in (rule.get("when") or {}).items()
            },
        }  # fmt: skip
        if isinstance(rule, dict)
        else rule
        for rule in overrides
    ]
    return renamed, rules


def spec_error(path: Path, key: str, message: str) -> GridSpecError:
    return GridSpecError(f"{path}: {key}: {message}")


def read_grid(path: str | Path) -> GridSpec:
    """Read a grid file and check its own keys, axes and values (nothing runs when it is
    invalid); parsing each cell with the CLI is :func:`smallbatch.grid.validate.load_grid`."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(), str(path))
    except RepeatedKeyError as exc:
        raise GridSpecError(str(exc)) from None
    except FileNotFoundError:
        raise GridSpecError(f"{path}: grid file not found") from None
    except yaml.YAMLError as exc:
        raise GridSpecError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise GridSpecError(f"{path}: a grid file is a mapping with keys {sorted(TOP_KEYS)}")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise spec_error(
            path, ", ".join(sorted(unknown)), f"unknown key; accepted: {sorted(TOP_KEYS)}"
        )
    for key in ("name", "base_config", "axes"):
        if key not in raw:
            raise spec_error(path, key, "missing (required: name, base_config, axes)")
    name = str(raw["name"])
    if problem := name_problem(name):
        raise spec_error(path, "name", problem)
    base = (path.parent / raw["base_config"]).resolve()
    if not base.exists():
        raise spec_error(
            path, "base_config", f"{raw['base_config']!r} not found (looked at {base})"
        )
    try:
        check_yaml_file(base)
    except RepeatedKeyError as exc:
        raise spec_error(path, "base_config", str(exc)) from None
    axes = raw["axes"]
    if not isinstance(axes, dict) or not axes:
        raise spec_error(
            path, "axes", "must be a non-empty mapping of dotted CLI keys to value lists"
        )
    for key, values in axes.items():
        if key in RESERVED_KEYS:
            raise spec_error(path, f"axes.{key}", "is set by the grid itself")
        if not isinstance(values, list) or not values:
            raise spec_error(path, f"axes.{key}", "must be a non-empty list of values")
    args = raw.get("args") or {}
    if not isinstance(args, dict):
        raise spec_error(path, "args", "must be a mapping of dotted CLI keys to values")
    overrides = raw.get("overrides") or []
    for i, rule in enumerate(overrides):
        if not isinstance(rule, dict) or set(rule) - {"when", "set"} or "set" not in rule:
            raise spec_error(
                path, f"overrides[{i}]", "must be {when: {key: value}, set: {key: value}}"
            )
    exclude = raw.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
        raise spec_error(
            path, "exclude", "must be a list of {axis key: value} mappings (combinations to skip)"
        )
    executor = {"kind": "local", **(raw.get("executor") or {})}
    # its kind and keys are the executors' (grid/executors.py, checked by load_grid)
    _check_executor(path, executor)
    _check_axes_and_args(path, axes, args)
    if isinstance(axes.get("model.norm"), list):  # a JSON mapping written as a string, as on
        axes = {**axes, "model.norm": [_json_mapping(v) for v in axes["model.norm"]]}  # the CLI
    run_root = Path(raw.get("run_root", "runs/grid"))
    ghost = raw.get("ghost_devices")
    if (ghost is not None or raw.get("fixed_total_batch") is not None) and (
        OLD_NORM_BATCH in axes and NORM_BATCH not in axes
    ):
        axes, overrides = _rename_batch_axis(axes, overrides)
        exclude = [{(NORM_BATCH if k == OLD_NORM_BATCH else k): v for k, v in e.items()}
                   for e in exclude]  # fmt: skip
        print(
            f"note: {path}: axes.{OLD_NORM_BATCH} is read as axes.{NORM_BATCH} (the "
            "normalization batch b under ghost_devices / fixed_total_batch); rename it",
            file=sys.stderr,
        )
    if ghost is not None and (not _is_int(ghost) or ghost < 1):
        raise spec_error(path, "ghost_devices", f"{ghost!r} must be an integer >= 1")
    total = raw.get("fixed_total_batch")
    if total is not None:
        if not _is_int(total) or total < 1:
            raise spec_error(path, "fixed_total_batch", f"{total!r} must be an integer >= 1")
        if ghost is not None:
            raise spec_error(path, "fixed_total_batch", "cannot be combined with ghost_devices")
        bad = [b for b in axes.get(NORM_BATCH, []) if not isinstance(b, int) or total % b]
        if bad:
            raise spec_error(
                path,
                f"axes.{NORM_BATCH}",
                f"{bad} do not divide fixed_total_batch {total}: with a fixed total batch the "
                "axis is the normalization batch b, and T/b ghost groups must be whole",
            )
    spec = GridSpec(
        name, base, axes, args, overrides, exclude, executor, run_root, path, ghost, total
    )
    for i, entry in enumerate(spec.exclude):
        if not set(entry) <= set(axes):
            raise spec_error(path, f"exclude[{i}]", f"{sorted(set(entry) - set(axes))} are "
                             f"not axes (axes: {sorted(axes)})")  # fmt: skip
        if not spec.matches_some_cell(entry, excluded_too=True):
            print(f"note: {path}: exclude[{i}] {entry} matches no combination of the axes",
                  file=sys.stderr)  # fmt: skip
    cells = [cell for _, cell in spec.expand()]  # expanded once: a fixed total batch probes norms
    if not cells:
        raise spec_error(path, "exclude", "leaves no cell to run")
    _check_recipes(spec, cells)
    for i, rule in enumerate(spec.overrides):
        if not spec.matches_some_cell(rule.get("when") or {}):
            print(f"note: {path}: overrides[{i}].when {rule.get('when')} matches no cell; "
                  "its `set` is never applied", file=sys.stderr)  # fmt: skip
    return spec
