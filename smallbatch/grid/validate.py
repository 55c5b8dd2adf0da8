"""Grid validation before anything runs: every cell parsed by the Lightning CLI's own parser,
each distinct model and data module built (shapes checked on the meta device), so a bad value
fails the grid with one line naming the file and the key instead of failing its cells."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import first_line
from ..models.preflight import check_feature_maps
from ..naming import cli_value
from ..timeouts import TimeLimitExceeded, time_limit
from .executors import check_executor_keys
from .spec import Cell, GridSpec, GridSpecError, read_grid, spec_error


def load_grid(path: str | Path) -> GridSpec:
    """Read a grid file (:func:`smallbatch.grid.spec.read_grid`) and validate every cell
    (:func:`validate_cells`): what ``smallbatch grid`` runs."""
    spec = read_grid(path)
    check_executor_keys(spec.source or Path(path), spec.executor)
    validate_cells(spec)
    return spec


def validate_cells(spec: GridSpec) -> None:
    """Parse every cell with the Lightning CLI's own parser (no instantiation) and check norm
    names against the registry; raise :class:`GridSpecError` naming the file and key."""
    import contextlib
    import io

    from ..norms import NormConfigError, resolve_norm
    from ..run.cell import lightning_main

    cells = spec.cells()
    for cell in cells:
        norm = cell.overrides.get("model.norm")
        if norm is not None:
            try:
                with time_limit(f"{spec.source}: importing norm {cli_value(norm)!r}"):
                    resolve_norm(norm)
            except NormConfigError as exc:
                raise spec_error(spec.source, "model.norm", str(exc)) from exc
        batch = cell.overrides.get("model.norm_batch") or cell.overrides.get("data.batch_size", 1)
        if not isinstance(batch, int) or batch < 1:
            raise spec_error(spec.source, "data.batch_size", f"{batch!r} must be an integer >= 1")
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
                detail = detail.removeprefix("error: ")
                raise GridSpecError(
                    f"{spec.source}: cell {cell.label} ({cell.overrides}) is rejected by the "
                    f"CLI: {detail}"
                ) from None
        config = yaml.safe_load(out.getvalue()) or {}
        check_cluster_resources(spec, cell, config)
        key = json.dumps([config.get("model"), config.get("data")], sort_keys=True, default=str)
        if key not in built:  # each distinct model and data section, built once
            built.add(key)
            with time_limit(f"{spec.source}: building cell {cell.label}'s model and data"):
                _check_cell_builds(spec, cell, config)


def check_cluster_resources(spec: GridSpec, cell: Cell, config: dict[str, Any]) -> None:
    """A SLURM job gets ``executor.nodes`` nodes with one task per GPU (``gpus_per_node``; one
    for CPU jobs), and Lightning must be asked for exactly that (``trainer.num_nodes``,
    ``trainer.devices``): otherwise it waits for ranks that never start, or leaves the
    allocation idle. Raise :class:`GridSpecError` saying which pair disagrees."""
    if spec.executor.get("kind") != "slurm":
        return
    trainer = config.get("trainer") or {}
    nodes, num_nodes = int(spec.executor.get("nodes", 1)), trainer.get("num_nodes", 1)
    tasks = max(int(spec.executor.get("gpus_per_node", 1)), 1)
    devices = trainer.get("devices", "auto")
    if isinstance(devices, str) and devices.lstrip("-").isdigit():  # the CLI keeps "2" a str
        devices = int(devices)
    if num_nodes != nodes:
        problem = (f"executor.nodes is {nodes} but the cell's trainer.num_nodes is {num_nodes}: "
                   f"set both to the nodes one cell runs on")  # fmt: skip
    elif isinstance(devices, int) and devices not in (-1, tasks):
        problem = (f"executor.gpus_per_node gives {tasks} task(s) per node but the cell's "
                   f"trainer.devices is {devices}: set trainer.devices to {tasks} (or "
                   "gpus_per_node to the devices a node runs)")  # fmt: skip
    else:
        return
    raise GridSpecError(f"{spec.source}: cell {cell.label}: {problem}")


def _check_cell_builds(spec: GridSpec, cell: Cell, config: dict[str, Any]) -> None:
    """Build the cell's model and data module (no trainer, no data read): unknown backbones,
    norm arguments a layer rejects, a batch larger than the training subset, a dataset that is
    nowhere to be found and the like fail here, before any cell runs."""
    import importlib

    from ..run.module import SmallBatchModule

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
            check_feature_maps(model.model, datamodule)
    except TimeLimitExceeded:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's constructor failing is the user's
        raise GridSpecError(
            f"{spec.source}: cell {cell.label} ({cell.overrides}): {first_line(exc)}"
        ) from exc
