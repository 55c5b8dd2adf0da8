"""Third-party norms: the `smallbatch.norms` entry-point group, `smallbatch norms`, use by name."""

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from smallbatch.models import create_model
from smallbatch.norms import (
    available_norms,
    builtin_norms,
    create_norm,
    load_plugins,
    unregister_norm,
)


@pytest.fixture
def plugin_path(tmp_path):
    """An installed-looking distribution on a path entry: package + dist-info with entry point."""
    pkg = tmp_path / "sb_plugin_demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            '''
            from torch import nn

            class HalfGroupNorm(nn.GroupNorm):
                """Demo plugin: GroupNorm with channels/2 groups."""

                def __init__(self, num_features, eps=1e-5):
                    super().__init__(max(num_features // 2, 1), num_features, eps=eps)
            '''
        )
    )
    info = tmp_path / "sb_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sb-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[smallbatch.norms]\nhalfgn = sb_plugin_demo:HalfGroupNorm\n"
    )
    return tmp_path


@pytest.mark.slow
def test_plugin_listed_by_smallbatch_norms(plugin_path):
    env = {**os.environ, "PYTHONPATH": str(plugin_path)}
    out = subprocess.run(
        [sys.executable, "-m", "smallbatch.cli", "norms", "--plain"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    rows = {line.split("\t")[0]: line for line in out.splitlines()}
    assert "halfgn" in rows and "plugin: sb-plugin-demo" in rows["halfgn"]
    assert "GroupNorm with channels/2 groups" in rows["halfgn"]
    for name in builtin_norms():
        assert name in rows
    assert "window=4" in rows["cbn"] and "momentum=0.01" in rows["brn"]


def test_plugin_usable_by_name(plugin_path, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_path))
    importlib.invalidate_caches()
    try:
        assert "halfgn" in load_plugins(force=True)
        assert "halfgn" in available_norms()
        layer = create_norm("halfgn", 8)
        assert layer.num_groups == 4
        model = create_model("resnet8", "halfgn", num_classes=10)
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    finally:
        unregister_norm("halfgn")


@pytest.mark.slow
def test_table_output_lists_every_norm():
    out = subprocess.run(
        [sys.executable, "-m", "smallbatch.cli", "norms"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "registered norms" in out and "Cross-Iteration BN" in out


def test_plugin_reusing_a_registered_name_is_an_error_naming_both(plugin_path, monkeypatch):
    from smallbatch.norms import NormConfigError
    from smallbatch.norms import registry as reg

    builtin_gn = reg._REGISTRY["gn"]
    (plugin_path / "sb_plugin_demo-0.1.dist-info" / "entry_points.txt").write_text(
        "[smallbatch.norms]\ngn = sb_plugin_demo:HalfGroupNorm\n"
    )
    monkeypatch.syspath_prepend(str(plugin_path))
    importlib.invalidate_caches()
    try:
        with pytest.raises(NormConfigError, match=r"'gn' from plugin: sb-plugin-demo.*built-in"):
            load_plugins(force=True)
        assert reg._REGISTRY["gn"] is builtin_gn  # nothing replaced
        monkeypatch.setenv("SMALLBATCH_NORM_OVERRIDES", "gn")
        assert "gn" in load_plugins(force=True)
        assert create_norm("gn", 8).num_groups == 4  # the plugin's, explicitly allowed
    finally:
        reg._REGISTRY["gn"] = builtin_gn
        reg._PLUGINS_LOADED = True  # the other plugins stay registered as they were
