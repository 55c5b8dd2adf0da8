"""The package's shape: every module imports alone (no import circle), the bottom modules import
nothing above them, and user errors share one base."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "smallbatch"
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py")
    if p.name != "__main__.py"
)


IMPORT_EACH_FIRST = """
import importlib, sys
failures = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "smallbatch" or m.startswith("smallbatch.")]:
        del sys.modules[loaded]  # the package anew; torch and the rest stay loaded (speed)
    try:
        importlib.import_module(name)
    except Exception as exc:
        failures.append(f"{name}: {type(exc).__name__}: {exc}")
print("\\n".join(failures))
"""


@pytest.mark.slow
def test_every_module_imports_first_and_alone():
    # each module imported first into a package with nothing loaded: an import circle shows as
    # an ImportError of a partly initialised module only when such a module is imported first
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_FIRST, *MODULES], capture_output=True, text=True,
        cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", proc.stdout


def _package_imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports (relative or absolute), anywhere in it."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module and node.module.startswith("smallbatch"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("smallbatch"))
    return found


@pytest.mark.parametrize(
    "leaf, allowed",
    [
        ("errors.py", set()),
        ("naming.py", set()),
        ("hardware.py", set()),
        ("results.py", {"smallbatch.naming"}),
    ],
)
def test_bottom_modules_import_nothing_above_them(leaf, allowed):
    imported = _package_imports(PACKAGE / leaf) - {"smallbatch"}
    assert imported <= allowed, f"{leaf} imports {sorted(imported - allowed)}"


def test_user_errors_share_one_base():
    from smallbatch.data import DatasetNotFoundError
    from smallbatch.errors import UserError
    from smallbatch.grid import GridSpecError
    from smallbatch.models.backbones import BackboneError
    from smallbatch.norms import BatchStatsError, NormConfigError

    for error in (DatasetNotFoundError, GridSpecError, BackboneError, NormConfigError,
                  BatchStatsError):  # fmt: skip
        assert issubclass(error, UserError), error


def test_check_batch_stats_uses_the_normalization_batch():
    """One value per channel in a normalization group (b·H·W = 1) is refused; groups of 2 pass."""
    import torch
    from torch import nn

    from smallbatch.norms import BatchStatsError, check_batch_stats

    layer = nn.Identity()
    check_batch_stats(torch.zeros(4, 3, 1, 1), layer, 2)  # groups of 2: fine
    with pytest.raises(BatchStatsError, match="batch 1 at a 1x1 feature map"):
        check_batch_stats(torch.zeros(4, 3, 1, 1), layer, 1)
