"""Every results folder committed under docs/results/ regenerates its published table exactly
(`smallbatch report docs/results/<grid>`), from the committed result.json files alone."""

from pathlib import Path

import pytest
from conftest import ROOT

from smallbatch.analysis.report import main as report_main

PUBLISHED = sorted(p.parents[1] for p in (ROOT / "docs" / "results").glob("*/report/results.md"))


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_published_table_regenerates_exactly(folder: Path, tmp_path, capsys):
    assert list(folder.glob("cells/*/result.json")), "a published report needs its results"
    assert report_main([str(folder), "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    published = (folder / "report" / "results.md").read_text()
    assert (tmp_path / "results.md").read_text() == published


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_docs_results_quote_the_published_table_verbatim(folder: Path):
    """docs/results.md shows each published table exactly as the report prints it."""
    report = (folder / "report" / "results.md").read_text()
    table = "\n".join(line for line in report.splitlines() if line.startswith("|"))
    assert table in (ROOT / "docs" / "results.md").read_text(), folder.name
