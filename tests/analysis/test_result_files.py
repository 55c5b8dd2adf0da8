"""result.json as a file others read: one validating loader (finite accuracies in [0, 1]) and
the mode an open() would give (shared results folders stay readable)."""

import json
import os
import stat

import pytest
from test_report import write_result

from smallbatch.analysis.report import main as report_main
from smallbatch.results import InvalidResult, validate_result, write_atomic, write_json_atomic


@pytest.mark.parametrize(
    "field, raw, key",
    [
        ("final_val_acc", "NaN", "final_val_acc"),
        ("final_val_acc", "1.5", "final_val_acc"),
        ("best_val_acc", "-0.1", "best_val_acc"),
        ("val_acc_history", "[0.5, Infinity]", "val_acc_history[1]"),
        ("eval_acc", '{"precise": NaN}', "eval_acc.precise"),
    ],
)
def test_a_result_with_an_impossible_accuracy_is_a_named_invalid_file(
    tmp_path, capsys, field, raw, key
):
    run = tmp_path / "runs"
    write_result(run, "good", "bn", 8, 0, 0.80)
    write_result(run, "bad", "bn", 8, 1, 0.90)
    bad = run / "cells" / "bad" / "result.json"
    data = json.loads(bad.read_text())
    data[field] = "__value__"
    bad.write_text(json.dumps(data).replace('"__value__"', raw))  # what json.dumps cannot write
    assert report_main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "| bn | 79.00 | 1 |" in out  # the bad seed is not averaged in
    assert "cells/bad/result.json" in out and key in out


def test_validate_result_accepts_null_and_fractions():
    base = {"norm": "bn", "batch_size": 8, "status": "finished", "setting": {}}
    validate_result({**base, "final_val_acc": None, "best_val_acc": 1, "val_acc_history": [0.0]})
    with pytest.raises(InvalidResult, match="'final_val_acc' must be a acc value in"):
        validate_result({**base, "final_val_acc": float("nan")})


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_written_atomically_honor_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "a.txt", "x")
        write_json_atomic(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    for name in ("a.txt", "b.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
