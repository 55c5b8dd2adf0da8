"""Grids of Lightning CLI runs: spec, results store, local and SLURM executors."""

from .runner import emit_cells, run_grid
from .spec import Cell, GridSpec, GridSpecError, read_grid
from .store import CellState, GridBusyError, ResultsStore
from .validate import load_grid

__all__ = [
    "Cell",
    "CellState",
    "GridBusyError",
    "GridSpec",
    "GridSpecError",
    "ResultsStore",
    "emit_cells",
    "load_grid",
    "read_grid",
    "run_grid",
]
