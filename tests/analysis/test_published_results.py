"""Every results folder committed under docs/results/ regenerates its published tables exactly
(`smallbatch report docs/results/<grid> [--eval MODE] [--attribution]`), from the committed
result.json files alone, and docs/results.md quotes the default table verbatim."""

from pathlib import Path

import pytest
from conftest import ROOT

from smallbatch.analysis.report import main as report_main

PUBLISHED = sorted(p.parents[1] for p in (ROOT / "docs" / "results").glob("*/report/results.md"))


def _flags(name: str) -> list[str]:
    """The report flags that write a published file: results-<mode>.md is `--eval <mode>`,
    differences.md is `--attribution`."""
    stem = name.removesuffix(".md")
    if stem == "differences":
        return ["--attribution"]
    mode = stem.removeprefix("results").removeprefix("-")
    return ["--eval", mode] if mode else []


TABLES = [
    (folder, table.name)
    for folder in PUBLISHED
    for table in sorted((folder / "report").glob("*.md"))
]


@pytest.mark.parametrize("folder, name", TABLES, ids=lambda v: getattr(v, "name", v))
def test_published_table_regenerates_exactly(folder: Path, name: str, tmp_path, capsys):
    assert list(folder.glob("cells/*/result.json")), "a published report needs its results"
    assert report_main([str(folder), "--out", str(tmp_path), *_flags(name)]) == 0
    capsys.readouterr()
    assert (tmp_path / name).read_text() == (folder / "report" / name).read_text()


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_docs_results_quote_the_published_table_verbatim(folder: Path):
    """docs/results.md (or, for a withdrawn run, docs/results-history.md) shows each published
    table exactly as the report prints it."""
    report = (folder / "report" / "results.md").read_text()
    table = "\n".join(line for line in report.splitlines() if line.startswith("|"))
    docs = [(ROOT / "docs" / name).read_text() for name in ("results.md", "results-history.md")]
    assert any(table in doc for doc in docs), folder.name


def test_every_marked_table_in_the_docs_quotes_its_report_file():
    """Tables under a ``<!-- table: ... -->`` marker (scripts/quote_published_tables.py) equal the
    committed report file they name."""
    import runpy

    quote = runpy.run_path(str(ROOT / "scripts" / "quote_published_tables.py"))["quote_tables"]
    doc = ROOT / "docs" / "results.md"
    assert "<!-- table: " in doc.read_text()
    assert quote(doc)[1] == [], "run scripts/quote_published_tables.py docs/results.md"


def test_t_quantiles_are_exact():
    """Two-sided 95% quantiles of Student's t to 9 digits (tables of the t distribution)."""
    from smallbatch.analysis.stats import t975

    exact = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 29: 2.045229642, 100: 1.983971519}
    for df, value in exact.items():
        assert t975(df) == pytest.approx(value, abs=1e-8), df
    for df, value in SCIPY_T975.items():
        assert t975(df) == pytest.approx(value, rel=1e-11), df


# scipy.stats.t.ppf(0.975, df) to 12 digits (computed once with scipy 1.17.1, 2026-12-07)
SCIPY_T975 = {1: 12.7062047362, 2: 4.30265272975, 3: 3.18244630528, 4: 2.7764451052,
              5: 2.57058183564, 6: 2.44691185114, 7: 2.36462425159, 8: 2.3060041352,
              9: 2.2621571628, 10: 2.22813885199}  # fmt: skip


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_every_published_interval_is_the_exact_t_interval(folder):
    """A recomputation of every published CSV row's interval from its own n and std with
    scipy's t quantiles: the half-width is t(0.975, n-1)·s/√n to the printed precision."""
    import csv
    import math

    for path in sorted((folder / "report").glob("results*.csv")):
        with open(path) as f:
            rows = list(csv.DictReader(f))
        assert rows, path
        for row in rows:
            n = int(row["n"])
            if n < 2:
                assert row["ci95"] == "", (path.name, row["row"])
                continue
            expected = SCIPY_T975[n - 1] * float(row["std"]) / math.sqrt(n)
            assert float(row["ci95"]) == pytest.approx(expected, rel=1e-10), (path.name, row)
