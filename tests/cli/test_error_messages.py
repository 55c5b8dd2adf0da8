"""Bad input at 5 of 5: what was wrong, why, how to fix it; nothing left behind."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from conftest import tiny_fit_args

from smallbatch.norms import NormConfigError, registry, resolve_norm
from smallbatch.results import read_result
from smallbatch.run.cell import lightning_main


def _module(tmp_path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)


def test_a_class_path_whose_own_import_fails_names_the_file_and_line(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "sb_broken_norms", "import os\nimport no_such_dependency\n")
    with pytest.raises(NormConfigError) as exc:
        resolve_norm("sb_broken_norms.MyNorm")
    text = str(exc.value)
    assert "importing 'sb_broken_norms' failed at" in text and "sb_broken_norms.py:2" in text
    assert "No module named 'no_such_dependency'" in text and "fix that error in it" in text
    assert "installed" not in text  # the module was found: installing is not the fix


def test_a_module_that_is_not_there_says_how_to_make_it_importable():
    with pytest.raises(NormConfigError, match=r"no module named 'sb_nowhere'.*PYTHONPATH"):
        resolve_norm("sb_nowhere.pkg.MyNorm")


def test_a_class_name_typo_in_an_existing_module_gets_a_suggestion(tmp_path, monkeypatch):
    source = "from torch import nn\n\nclass ScaledNorm(nn.GroupNorm):\n    pass\n"
    _module(tmp_path, monkeypatch, "sb_my_norms", source)
    with pytest.raises(NormConfigError, match=r"has no attribute 'ScaledNrom'; did you mean "
                       r"'ScaledNorm'\?"):  # fmt: skip
        resolve_norm("sb_my_norms.ScaledNrom")


def test_a_plugin_that_fails_to_import_is_named_as_the_cause(monkeypatch):
    def load():
        raise RuntimeError("plugin's import exploded")

    ep = SimpleNamespace(name="brokenplug", value="broken_pkg.norms:Plug", load=load,
                         dist=SimpleNamespace(name="broken-pkg"))  # fmt: skip
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep])
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", False)
    monkeypatch.setattr(registry, "_PLUGIN_FAILURES", {})
    with pytest.warns(UserWarning, match="failed to load"):
        registry.load_plugins()
    with pytest.raises(NormConfigError) as exc:
        resolve_norm("brokenplug")
    text = str(exc.value)
    assert "is a plugin of 'broken-pkg' (broken_pkg.norms:Plug) that failed to import" in text
    assert "RuntimeError: plugin's import exploded" in text and "unknown norm" not in text


def test_a_batch_that_is_no_multiple_of_norm_batch_is_refused_before_the_run(
    fashion_dir, tmp_path, capsys
):
    run = tmp_path / "runs" / "cell"
    args = tiny_fit_args(fashion_dir, run, "--model.norm_batch", "5")  # batch 16
    args.remove("--trainer.enable_model_summary")
    args.remove("false")
    with pytest.raises(NormConfigError, match="batch 16 is not a multiple of norm_batch 5"):
        lightning_main(args)
    out = capsys.readouterr().out
    assert "Total params" not in out  # refused before the model summary
    assert not run.exists() and not (tmp_path / "runs").exists()


def test_norm_batch_on_a_batch_free_norm_is_ignored_with_a_notice(fashion_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny_fit_args(fashion_dir, run, "--model.norm", "gn", "--model.norm_batch", "4")
    args += ["--trainer.limit_train_batches", "2", "--model.precise_images", "0"]
    lightning_main(args)
    err = capsys.readouterr().err
    assert "--model.norm_batch 4 is ignored: gn uses no batch statistics" in err
    result = read_result(run)
    assert result["name"] == "gn-nb16-s0" and result["normalization_batch"] == 16
