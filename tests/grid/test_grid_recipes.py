"""Recipes: a norm's authors' settings as a second --config, chosen per grid row."""

import io
import re
import shutil
from contextlib import redirect_stdout

import pytest
import yaml
from grid_files import ROOT, write_grid

from smallbatch.grid.spec import GridSpecError, read_grid
from smallbatch.run.cell import lightning_main

RECIPES = sorted((ROOT / "configs" / "recipes").glob("*/*.yaml"))


def _base_with_recipes(tmp_path, recipes: dict[str, dict]):
    """A copy of the quickstart config with recipe files beside it."""
    base = tmp_path / "configs" / "base.yaml"
    base.parent.mkdir(parents=True)
    shutil.copy(ROOT / "configs" / "quickstart.yaml", base)
    for name, content in recipes.items():
        path = base.parent / "recipes" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(content))
    return base


def test_a_recipe_row_gets_its_file_after_the_base_and_uniform_is_the_cell_without_it(tmp_path):
    base = _base_with_recipes(
        tmp_path, {"authors/cbn.yaml": {"recipe": "authors", "model": {"norm_args": {"window": 3}}}}
    )
    plain = read_grid(write_grid(tmp_path, "/d", name="plain", axes={"model.norm": ["cbn"]},
                                 base_config=str(base)))  # fmt: skip
    both = read_grid(write_grid(
        tmp_path, "/d", name="both", base_config=str(base),
        axes={"model.norm": ["cbn"], "recipe": ["uniform", "authors"]},
    ))  # fmt: skip
    uniform, authors = both.cells()
    assert "recipe" not in uniform.overrides  # the protocol itself: same cell, same folder
    assert uniform.digest == plain.cells()[0].digest
    args = both.cli_args(authors)
    recipe = str(base.parent / "recipes" / "authors" / "cbn.yaml")
    assert args[:5] == ["fit", "--config", str(base), "--config", recipe]
    assert args[args.index("--recipe") + 1] == "authors"
    assert args.index("--config", 3) < args.index("--model.norm")  # the grid's keys still win


def test_a_recipe_only_for_some_rows_through_an_override(tmp_path):
    base = _base_with_recipes(tmp_path, {"authors/cbn.yaml": {"recipe": "authors"}})
    spec = read_grid(write_grid(
        tmp_path, "/d", base_config=str(base), axes={"model.norm": ["bn", "cbn"]},
        overrides=[{"when": {"model.norm": "cbn"}, "set": {"recipe": "authors"}}],
    ))  # fmt: skip
    bn, cbn = spec.cells()
    assert "recipe" not in bn.overrides and cbn.overrides["recipe"] == "authors"


@pytest.mark.parametrize(
    ("recipes", "axes", "message"),
    [
        (
            {"authors/cbn.yaml": {"recipe": "authors"}},
            {"model.norm": ["gn"], "recipe": ["authors"]},
            "recipe: no 'authors' recipe for norm 'gn': ",
        ),
        (
            {"authors/cbn.yaml": {"recipe": "tuned"}},
            {"model.norm": ["cbn"], "recipe": ["authors"]},
            "cbn.yaml must set `recipe: authors` (it sets 'tuned')",
        ),
        ({}, {"model.norm": ["cbn"], "recipe": ["a/b"]}, "'a/b' must be a recipe name"),
    ],
)
def test_a_missing_or_mislabelled_recipe_is_refused_before_anything_runs(
    tmp_path, recipes, axes, message
):
    base = _base_with_recipes(tmp_path, recipes)
    with pytest.raises(GridSpecError) as exc:
        read_grid(write_grid(tmp_path, "/d", base_config=str(base), axes=axes))
    text = str(exc.value)
    assert message in text and "\n" not in text
    if "no 'authors'" in message:
        assert "(norms with one: cbn)" in text
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_parses_on_the_base_configs_and_names_itself(recipe):
    content = yaml.safe_load(recipe.read_text())
    assert content["recipe"] == recipe.parent.name
    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit) as exc:
        lightning_main([
            "fit", "--config", str(ROOT / "configs" / "cifar10_repro.yaml"), "--config",
            str(recipe), "--model.norm", recipe.stem, "--print_config",
        ])  # fmt: skip
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(buf.getvalue())
    assert printed["recipe"] == recipe.parent.name and printed["model"]["norm"] == recipe.stem
    for key, value in (content.get("model") or {}).items():
        assert printed["model"][key] == value, key


def test_exclude_drops_combinations_and_refuses_keys_that_are_no_axis(tmp_path):
    base = _base_with_recipes(tmp_path, {"authors/cbn.yaml": {"recipe": "authors"}})
    spec = read_grid(write_grid(
        tmp_path, "/d", name="ex", base_config=str(base),
        axes={"model.norm": ["bn", "cbn"], "recipe": ["uniform", "authors"]},
        exclude=[{"recipe": "authors", "model.norm": "bn"}],
    ))  # fmt: skip
    assert [(c.overrides["model.norm"], c.overrides.get("recipe")) for c in spec.cells()] == [
        ("bn", None), ("cbn", None), ("cbn", "authors"),
    ]  # fmt: skip
    for exclude, message in (
        ([{"model.depth": 3}], "exclude[0]: ['model.depth'] are not axes"),
        ([{"model.norm": "bn"}, {"model.norm": "cbn"}], "exclude: leaves no cell to run"),
        ([["bn"]], "exclude: must be a list of {axis key: value} mappings"),
    ):
        with pytest.raises(GridSpecError, match=re.escape(message)):
            read_grid(write_grid(tmp_path, "/d", name="bad", base_config=str(base),
                                 axes={"model.norm": ["bn", "cbn"]}, exclude=exclude))  # fmt: skip
