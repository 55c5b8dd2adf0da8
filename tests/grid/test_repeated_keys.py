"""A key given twice in a YAML file is refused with both line numbers (issue 35, item 8): in a
grid file, in its base config and in a config given to fit; never the last one silently."""

import pytest
import yaml
from grid_files import ROOT, write_grid

from smallbatch.grid.spec import GridSpecError, read_grid
from smallbatch.run.cell import lightning_main
from smallbatch.yaml_keys import RepeatedKeyError, load_yaml


def test_a_repeated_key_names_both_lines_and_distinct_nested_keys_pass():
    text = "axes:\n  model.norm: [bn]\n  seed_everything: [0]\n  model.norm: [gn]\n"
    with pytest.raises(RepeatedKeyError) as exc:
        load_yaml(text, "g.yaml")
    assert str(exc.value) == (
        "g.yaml:4: key 'model.norm' is given twice in one mapping (first at line 2); YAML would "
        "keep only the last: remove one"
    )
    assert load_yaml("a: {norm: 1}\nb: {norm: 2}\n") == {"a": {"norm": 1}, "b": {"norm": 2}}


def test_a_grid_file_or_its_base_config_with_a_repeated_key_is_refused(tmp_path):
    path = write_grid(tmp_path, "/d")
    path.write_text(path.read_text() + "name: again\n")
    with pytest.raises(GridSpecError, match=r"g\.yaml:\d+: key 'name' is given twice .*line 1\)"):
        read_grid(path)
    base = tmp_path / "base.yaml"
    base.write_text((ROOT / "configs" / "quickstart.yaml").read_text() + "seed_everything: 3\n")
    good = write_grid(tmp_path, "/d", name="b", base_config=str(base))
    with pytest.raises(GridSpecError) as exc:
        read_grid(good)
    assert "base_config: " in str(exc.value) and "key 'seed_everything' is given twice" in str(
        exc.value
    )


def test_fit_refuses_a_config_with_a_repeated_key_before_anything_runs(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"seed_everything": 0}) + "model:\n  norm: bn\n  norm: gn\n")
    run = tmp_path / "run"
    with pytest.raises(RepeatedKeyError, match=r"c\.yaml:4: key 'norm' is given twice .*line 3\)"):
        lightning_main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
                        f"--config={config}", "--run_dir", str(run)])  # fmt: skip
    assert not run.exists()
