"""Training recipes: a norm's settings as its authors train it, beside the uniform protocol.

A recipe is a Lightning CLI config fragment, ``<base config's folder>/recipes/<recipe>/<norm>.yaml``
(``configs/recipes/authors/cbn.yaml``), that sets ``recipe: <recipe>`` (recorded in the run's
setting, so the report labels its row) and whatever that recipe changes (norm arguments, LR,
schedule), each value cited in a comment. ``smallbatch fit`` takes it as a second ``--config``;
a grid cell with ``recipe: authors`` (an axis or an override) gets it right after the base
config, so the grid's own arguments still win. ``recipe: uniform`` (or none) is the protocol
itself: no file, nothing recorded, the cell's folder the same as without the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..naming import RECIPE_KEY, UNIFORM_RECIPE, norm_label


def recipes_dir(base_config: Path) -> Path:
    return base_config.parent / "recipes"


def recipe_file(base_config: Path, recipe: str, norm: Any) -> Path:
    """Where ``recipe`` for ``norm`` (a registered name or a class path: its last component)
    lives beside ``base_config``."""
    return recipes_dir(base_config) / recipe / f"{norm_label(norm)}.yaml"


def available(base_config: Path, recipe: str) -> list[str]:
    """The norms that have ``recipe`` beside ``base_config``."""
    return sorted(p.stem for p in (recipes_dir(base_config) / recipe).glob("*.yaml"))


def recipe_problem(base_config: Path, recipe: Any, norm: Any) -> str | None:
    """Why a cell's ``recipe`` cannot be applied (None: it can): no such file, or a file that
    does not name the recipe it is (its runs would be labelled wrongly)."""
    if not isinstance(recipe, str) or not recipe or "/" in recipe:
        return f"{recipe!r} must be a recipe name such as 'authors' or {UNIFORM_RECIPE!r}"
    path = recipe_file(base_config, recipe, norm)
    if not path.is_file():
        have = available(base_config, recipe)
        listed = ", ".join(have) if have else "none"
        return (
            f"no {recipe!r} recipe for norm {norm_label(norm)!r}: {path} does not exist "
            f"(norms with one: {listed}); add the file or use {UNIFORM_RECIPE!r} for that row"
        )
    content = yaml.safe_load(path.read_text()) or {}
    named = content.get(RECIPE_KEY) if isinstance(content, dict) else None
    if named != recipe:
        return f"{path} must set `{RECIPE_KEY}: {recipe}` (it sets {named!r})"
    return None
