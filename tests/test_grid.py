"""`smallbatch grid`: expansion, validation, local and submitit executors, kill/resume, emit."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import HELPERS, ROOT

from smallbatch.grid import GridSpecError, load_grid, run_grid

TINY_ARGS = {
    "model.backbone": "resnet8",
    "trainer.max_epochs": 1,
    "trainer.logger": False,
    "trainer.enable_model_summary": False,
    "data.train_subset": 64,
    "data.val_subset": 32,
}


def write_grid(tmp_path, fashion_dir, name="g", axes=None, args=None, executor=None, **extra):
    spec = {
        "name": name,
        "base_config": str(ROOT / "configs" / "quickstart.yaml"),
        "axes": axes or {"model.norm": ["bn", "gn"], "data.batch_size": [4, 8]},
        "args": {**TINY_ARGS, "data.data_dir": fashion_dir, **(args or {})},
        "executor": executor or {"kind": "local", "max_parallel": 1, "retries": 1},
        "run_root": str(tmp_path / "runs"),
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def grid_proc(path, *flags):
    env = {**os.environ, "PYTHONPATH": str(HELPERS), "CI": "1"}
    cmd = [sys.executable, "-m", "smallbatch.cli", "grid", "--config", str(path), *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def cell_results(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("cells/*/result.json")}


def test_expansion_overrides_and_stable_folders(tmp_path, fashion_dir):
    path = write_grid(
        tmp_path,
        fashion_dir,
        axes={"model.norm": ["bn", "brn"], "data.batch_size": [2, 4], "seed_everything": [0, 1]},
        overrides=[{"when": {"model.norm": "brn"}, "set": {"model.norm_args": {"rmax": 2.0}}}],
    )
    spec = load_grid(path)
    cells = spec.cells()
    assert len(cells) == 8
    assert {c.label for c in cells} >= {"bn-nb2-s0", "brn-nb4-s1"}
    brn = [c for c in cells if c.overrides["model.norm"] == "brn"]
    assert all(c.overrides["model.norm_args"] == {"rmax": 2.0} for c in brn)
    assert len({c.folder for c in cells}) == 8
    assert [c.folder for c in load_grid(path).cells()] == [c.folder for c in cells]  # stable
    cmd = spec.command(cells[0])
    assert cmd[3] == "fit" and "--group" in cmd and "--run_dir" in cmd


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, r"g\.yaml: colour: unknown key"),
        ({"axes": {"model.norm": []}}, r"g\.yaml: axes\.model\.norm: must be a non-empty list"),
        ({"axes": {"model.norm": ["bn", "nosuchnorm"]}}, r"g\.yaml: model\.norm: unknown norm"),
        ({"axes": {"model.lr": ["fast"]}}, r"g\.yaml: cell .* rejected by the CLI"),
        ({"axes": {"seed_everything": [0, "x"]}}, r"seed_everything: 'x' must be an integer"),
        ({"axes": {"data.batch_size": [0]}}, r"g\.yaml: data\.batch_size: 0 must be"),
        ({"executor": {"kind": "cloud"}}, r"g\.yaml: executor\.kind: 'cloud' is not one of"),
        ({"base_config": "missing.yaml"}, r"g\.yaml: base_config: 'missing\.yaml' not found"),
    ],
)
def test_invalid_grid_files_are_reported_and_nothing_runs(tmp_path, fashion_dir, change, message):
    path = write_grid(tmp_path, fashion_dir)
    spec = {**yaml.safe_load(path.read_text()), **change}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(GridSpecError, match=message):
        load_grid(path)
    assert not (tmp_path / "runs").exists()


def test_two_by_two_grid_runs_to_completion_then_skips(tmp_path, fashion_dir, capsys):
    path = write_grid(tmp_path, fashion_dir)
    spec = load_grid(path)
    assert run_grid(spec) == 0
    results = cell_results(spec.run_dir)
    assert len(results) == 4 and all(r["status"] == "finished" for r in results.values())
    assert {(r["norm"], r["batch_size"]) for r in results.values()} == {
        ("bn", 4),
        ("bn", 8),
        ("gn", 4),
        ("gn", 8),
    }
    assert all(r["group"] == "g" for r in results.values())
    mtimes = {p: p.stat().st_mtime_ns for p in spec.run_dir.glob("cells/*/result.json")}
    assert run_grid(load_grid(path)) == 0  # idempotent: nothing re-runs
    assert mtimes == {p: p.stat().st_mtime_ns for p in spec.run_dir.glob("cells/*/result.json")}
    assert "4 done, 0 to run" in capsys.readouterr().out
    manifest = json.loads((spec.run_dir / "cells.json").read_text())
    assert len(manifest) == 4 and all("smallbatch.cli fit" in c["command"] for c in manifest)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_grid_resumes_without_duplicates_or_losses(tmp_path, fashion_dir, sig):
    path = write_grid(
        tmp_path,
        fashion_dir,
        axes={"model.norm": ["bn", "gn"], "data.batch_size": [2, 4]},
        args={"data.train_subset": 512},
    )
    spec = load_grid(path)
    proc = grid_proc(path)

    def running_cell_started():  # a cell has a result and a later one is training
        done = cell_results(spec.run_dir)
        logs = list(spec.run_dir.glob("cells/*/stderr.log"))
        return done and any(
            "epoch" not in p.read_text() and p.parent.name not in done for p in logs
        )

    deadline = time.time() + 240
    while time.time() < deadline and not running_cell_started():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    time.sleep(2)  # a cell orphaned by SIGKILL gets SIGTERM and exits
    before = {k: v for k, v in cell_results(spec.run_dir).items() if v["status"] == "finished"}
    assert 1 <= len(before) < 4
    mtimes = {k: (spec.run_dir / "cells" / k / "result.json").stat().st_mtime_ns for k in before}
    rerun = grid_proc(path)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:]
    after = cell_results(spec.run_dir)
    assert len(after) == 4 and all(r["status"] == "finished" for r in after.values())
    for k, ns in mtimes.items():  # finished cells were not run again
        assert (spec.run_dir / "cells" / k / "result.json").stat().st_mtime_ns == ns
    assert out.count("[grid] start") == 4 - len(before)
    assert not list(spec.run_dir.rglob("*.tmp"))


def test_failing_cell_is_retried_and_reported_without_stopping_others(tmp_path, fashion_dir):
    failing = {"class_path": "sb_test_helpers.FailingNorm"}
    path = write_grid(
        tmp_path, fashion_dir, axes={"model.norm": ["bn", failing], "data.batch_size": [4]}
    )
    proc = grid_proc(path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    spec = load_grid(path)
    results = cell_results(spec.run_dir)
    ok = [r for r in results.values() if r["norm"] == "bn"]
    bad = [r for r in results.values() if r["norm"] == "FailingNorm"]
    assert ok[0]["status"] == "finished"
    assert bad[0]["status"] == "failed" and "deliberate failure" in bad[0]["error"]
    assert out.count("start FailingNorm") == 2  # first try + 1 retry (retries: 1)
    assert "failed beyond retries: FailingNorm" in out and "deliberate failure" in out


def test_cell_killed_after_a_checkpoint_resumes_in_the_same_run_and_bad_files_are_set_aside(
    tmp_path, fashion_dir
):
    marker = tmp_path / "killed"
    kill = {"class_path": "sb_test_helpers.KillOnceAtStep", "init_args": {"steps": [20, 36]}}
    kill["init_args"]["marker"] = str(marker)
    path = write_grid(
        tmp_path,
        fashion_dir,
        axes={"model.norm": ["bn"], "data.batch_size": [4]},
        args={"trainer.max_epochs": 3, "trainer.callbacks": [kill]},
        executor={"kind": "local", "max_parallel": 1, "retries": 0},
    )
    # 16 steps an epoch: SIGKILLed at step 20 and again at 36, each after a new epoch-end
    # checkpoint; with retries 0 an attempt would count only without progress, so the cell
    # must be resumed twice in this grid run and finish
    proc = grid_proc(path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err[-2000:]
    assert out.count("[grid] start bn-nb4") == 3
    spec = load_grid(path)
    (cell,) = spec.run_dir.glob("cells/*")
    result = json.loads((cell / "result.json").read_text())
    assert result["status"] == "finished" and result["global_step"] == 48
    attempts = json.loads((cell / "attempts.json").read_text())
    assert attempts["attempts"] == 0 and len(attempts["history"]) == 2
    assert all(a["progress"] and a["error"] == "killed by SIGKILL" for a in attempts["history"])

    # a garbage result.json and a truncated last.ckpt: both kept aside, named; the cell falls
    # back to its other (best) checkpoint and finishes again
    (cell / "result.json").write_text("{not json")
    last = cell / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    proc = grid_proc(path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err[-2000:]
    assert "invalid result:" in out and "runs again" in out
    assert "last.ckpt is unreadable" in out and "resuming from best-" in out
    assert len(list(cell.glob("result.json.invalid-*"))) == 1
    assert len(list((cell / "checkpoints").glob("unreadable-*-last.ckpt"))) == 1
    assert json.loads((cell / "result.json").read_text())["status"] == "finished"


def test_unfinished_cells_are_named_with_their_last_error_line(tmp_path, fashion_dir):
    failing = {"class_path": "sb_test_helpers.FailingNorm"}
    path = write_grid(
        tmp_path,
        fashion_dir,
        axes={"model.norm": [failing], "data.batch_size": [4]},
        executor={"kind": "local", "max_parallel": 1, "retries": 0},
    )
    proc = grid_proc(path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1
    (line,) = [x for x in out.splitlines() if "failed beyond retries:" in x]
    assert "RuntimeError: FailingNorm: deliberate failure" in line and "stderr.log" not in line


def test_disk_errors_end_the_grid_with_one_line(tmp_path, fashion_dir, monkeypatch, capsys):
    import errno

    import smallbatch.grid.store as store

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    failing = {"class_path": "sb_test_helpers.FailingNorm"}
    path = write_grid(tmp_path, fashion_dir, axes={"model.norm": [failing], "data.batch_size": [4]})
    monkeypatch.setenv("PYTHONPATH", str(HELPERS))
    spec = load_grid(path)
    monkeypatch.setattr(store, "write_json_atomic", full)
    assert run_grid(spec) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    # the first file the grid writes is named: the lock holder's record
    assert ".grid.lock: No space left on device" in line and "run the grid again" in line


@pytest.mark.parametrize("where", ["read-only", "under a file"])
def test_unwritable_run_root_ends_the_grid_with_one_line(
    where, tmp_path, fashion_dir, monkeypatch, capsys
):
    """A run_root that cannot be written: one `error:` line naming it, no traceback. Tests run
    as root here, which chmod cannot stop, so a read-only mount is simulated (EROFS from the
    first write, the lock file); a run_root below a regular file is the real thing."""
    import errno

    import smallbatch.grid.store as store

    path = write_grid(tmp_path, fashion_dir)
    spec = load_grid(path)
    if where == "read-only":
        real_open = os.open

        def read_only(file, flags, *args, **kwargs):
            if str(file).startswith(str(tmp_path / "runs")) and flags & os.O_CREAT:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
            return real_open(file, flags, *args, **kwargs)

        (tmp_path / "runs" / "g").mkdir(parents=True)
        monkeypatch.setattr(store.os, "open", read_only)
    else:
        (tmp_path / "runs").write_text("a file, not a folder")
    assert run_grid(spec) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    reason = "Read-only file system" if where == "read-only" else "Not a directory"
    assert str(tmp_path / "runs") in line and reason in line, err
    assert "Traceback" not in err


def test_cells_run_under_a_changed_base_config_run_again_with_the_old_results_kept(
    tmp_path, fashion_dir, capsys
):
    """A cell folder's digest covers the grid's args and axes, not the base config file: a
    change to that file (not a comment) makes finished cells stale. They run again afresh, and
    what the old run left is kept aside; a grid whose base config is unchanged skips them."""
    base = tmp_path / "base.yaml"
    base.write_text((ROOT / "configs" / "quickstart.yaml").read_text())
    path = write_grid(tmp_path, fashion_dir, axes={"model.norm": ["bn"], "data.batch_size": [8]},
                      base_config=str(base))  # fmt: skip
    spec = load_grid(path)
    assert run_grid(spec) == 0
    (cell,) = spec.run_dir.glob("cells/*/")
    first = json.loads((cell / "result.json").read_text())
    assert json.loads((cell / "base_config.json").read_text())["digest"] == spec.base_digest()
    base.write_text(base.read_text() + "# a comment changes nothing\n")
    capsys.readouterr()
    assert run_grid(load_grid(path)) == 0
    assert "(1 done, 0 to run" in capsys.readouterr().out
    base.write_text(base.read_text().replace("lr: 0.1", "lr: 0.05"))
    assert run_grid(load_grid(path), dry_run=True) == 0
    out = capsys.readouterr().out
    assert "[stale]" in out and "--ckpt_path" not in out
    assert run_grid(load_grid(path)) == 0
    out = capsys.readouterr().out
    assert "1 cells ran under another version" in out and "running the cell afresh" in out
    second = json.loads((cell / "result.json").read_text())
    assert first["setting"]["model.lr"] == 0.1 and second["setting"]["model.lr"] == 0.05
    kept = {p.name.split(".stale-")[0] for p in cell.glob("*.stale-*")}
    assert kept == {"result.json", "checkpoints"}
    assert json.loads(next(cell.glob("result.json.stale-*")).read_text()) == first


def test_slurm_path_through_submitit_debug_executor(tmp_path, fashion_dir):
    path = write_grid(
        tmp_path,
        fashion_dir,
        axes={"model.norm": ["bn"], "data.batch_size": [4, 8]},
        executor={"kind": "slurm", "cluster": "debug", "timeout_min": 10, "gpus_per_node": 0},
    )
    spec = load_grid(path)
    assert run_grid(spec) == 0
    results = cell_results(spec.run_dir)
    assert sorted(r["batch_size"] for r in results.values()) == [4, 8]
    assert all(r["status"] == "finished" for r in results.values())


def test_emit_and_array_script_select_the_right_cell(tmp_path, fashion_dir):
    path = write_grid(tmp_path, fashion_dir)
    spec = load_grid(path)
    assert run_grid(spec, emit=True) == 0
    lines = (spec.run_dir / "cells.txt").read_text().splitlines()
    assert len(lines) == 4 and all("smallbatch.cli fit" in line for line in lines)
    script = ROOT / "jobs" / "array.sbatch"
    env = {**os.environ, "SMALLBATCH_LAUNCH": "echo", "SLURM_ARRAY_TASK_ID": "2"}
    cells = str(spec.run_dir / "cells.txt")
    done = subprocess.run(["bash", str(script), cells], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip().splitlines()[-1]
    assert printed.split()[-1] == lines[2].split()[-1]  # the --group value ends each line
    assert lines[2].split("--run_dir ")[1].split()[0] in printed
    env["SLURM_ARRAY_TASK_ID"] = "9"
    done = subprocess.run(["bash", str(script), cells], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "no cell 9" in done.stderr


def test_grid_cell_with_the_example_plugin(tmp_path, fashion_dir):
    from smallbatch.norms import available_norms

    if "bcn" not in available_norms():
        pytest.skip(
            "example plugin not installed (scripts/test.sh installs examples/smallbatch-bcn)"
        )
    path = write_grid(tmp_path, fashion_dir, axes={"model.norm": ["bcn"], "data.batch_size": [2]})
    spec = load_grid(path)
    assert run_grid(spec) == 0
    (result,) = cell_results(spec.run_dir).values()
    assert result["status"] == "finished" and result["norm"] == "bcn"


@pytest.mark.parametrize(
    "grid_file", sorted((ROOT / "configs" / "grid").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_grid_file_validates(grid_file):
    spec = load_grid(grid_file)  # includes the CLI parse of every axis value
    assert spec.cells()


def test_ghost_devices_switch_emulates_devices_with_ghost_batches(tmp_path, fashion_dir):
    path = write_grid(tmp_path, fashion_dir, ghost_devices=4)
    cells = load_grid(path).cells()
    bn2 = next(c for c in cells if c.label == "bn-nb4-pb16")
    assert bn2.overrides["data.batch_size"] == 16 and bn2.overrides["model.norm_batch"] == 4
    with pytest.raises(GridSpecError, match="ghost_devices: 0 must be"):
        load_grid(write_grid(tmp_path, fashion_dir, name="h", ghost_devices=0))


def test_grid_sweeping_an_argument_outside_the_name_logs_unique_wandb_runs(tmp_path, fashion_dir):
    """Two cells that share norm, batch and seed and differ in norm_args: distinct W&B run
    names (label + digest), read back from the offline runs with the right config."""
    from smallbatch.run.wandb_offline import read_offline_run

    wandb_logger = {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {}}
    axes = {"model.norm": ["brn"], "model.norm_args": [{"momentum": 0.1}, {"momentum": 0.01}]}
    args = {"trainer.logger": wandb_logger, "data.batch_size": 8, "model.norm_batch": 4}
    path = write_grid(tmp_path, fashion_dir, axes=axes, args=args)
    spec = load_grid(path)
    assert run_grid(spec) == 0
    runs = [read_offline_run(f) for f in spec.run_dir.glob("cells/*/wandb/offline-run-*")]
    assert len(runs) == 2
    names = {r["name"] for r in runs}
    assert len(names) == 2 and all(n.startswith("brn-nb4-pb8-") for n in names)
    assert {r["config"]["norm_args"]["momentum"] for r in runs} == {0.1, 0.01}
    for r in runs:
        assert r["config"]["norm"] == "brn" and r["config"]["normalization_batch"] == 4
        assert r["group"] == "g" and not [k for k in r["config"] if k.startswith("cfg/")]


def test_fixed_total_batch_keeps_the_batch_and_collapses_batch_free_norms(tmp_path, fashion_dir):
    axes = {
        "model.norm": ["bn", "gn", "syncbn"],
        "model.norm_batch": [1, 4, 16],
        "seed_everything": [0],
    }
    spec = load_grid(write_grid(tmp_path, fashion_dir, axes=axes, fixed_total_batch=16))
    cells = {c.label: c.overrides for c in spec.cells()}
    assert sorted(cells) == ["bn-nb1-pb16-s0", "bn-nb16-s0", "bn-nb4-pb16-s0", "gn-nb16-s0",
                             "syncbn-nb16-s0"]  # fmt: skip
    assert all(o["data.batch_size"] == 16 for o in cells.values())
    assert cells["bn-nb4-pb16-s0"]["model.norm_batch"] == 4
    assert cells["gn-nb16-s0"]["model.norm_batch"] is None
    assert cells["syncbn-nb16-s0"]["model.norm_batch"] is None
    with pytest.raises(GridSpecError, match=r"\[3\] do not divide fixed_total_batch 16"):
        axes["model.norm_batch"] = [3, 4]
        load_grid(write_grid(tmp_path, fashion_dir, name="h", axes=axes, fixed_total_batch=16))


@pytest.mark.parametrize("protocol", [{"fixed_total_batch": 16}, {"ghost_devices": 4}])
def test_the_old_spelling_of_the_b_axis_still_runs_with_a_notice(
    tmp_path, fashion_dir, capsys, protocol
):
    """Grid files from before `model.norm_batch` named the b axis `data.batch_size`: the same
    cells (the same folders, so earlier results are found), and one line saying so."""
    axes = {"model.norm": ["bn", "gn"], "model.norm_batch": [2, 4]}
    new = load_grid(write_grid(tmp_path, fashion_dir, name="new", axes=axes, **protocol))
    assert "note:" not in capsys.readouterr().err
    old_axes = {"model.norm": ["bn", "gn"], "data.batch_size": [2, 4]}
    rule = [{"when": {"data.batch_size": 2}, "set": {"model.lr": 0.05}}]
    old = load_grid(write_grid(tmp_path, fashion_dir, name="old", axes=old_axes,
                               overrides=rule, **protocol))  # fmt: skip
    notice = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notice) == 1 and "axes.data.batch_size is read as axes.model.norm_batch" in notice[0]
    old_cells = {c.label: c.overrides for c in old.cells()}
    assert [c.label for c in new.cells()] == list(old_cells)
    assert {c.folder for c in new.cells()} != {c.folder for c in old.cells()}  # the override
    assert all(o.get("model.lr") == 0.05 for label, o in old_cells.items() if "-nb2" in label
               and label.startswith("bn"))  # fmt: skip


def test_emit_and_dry_run_resume_through_the_same_checkpoint_check(tmp_path, fashion_dir):
    """cells.txt never points at an unreadable last.ckpt: --emit sets it aside as the local
    executor would (dry-run only says so and moves nothing)."""
    path = write_grid(tmp_path, fashion_dir, axes={"model.norm": ["bn"], "data.batch_size": [4]})
    spec = load_grid(path)
    (cell,) = spec.cells()
    last = spec.run_dir / "cells" / cell.folder / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"not a checkpoint")
    assert run_grid(spec, dry_run=True) == 0
    assert last.exists()
    assert run_grid(spec, emit=True) == 0
    (line,) = (spec.run_dir / "cells.txt").read_text().splitlines()
    assert "--ckpt_path" not in line and not last.exists()
    assert len(list(last.parent.glob("unreadable-*-last.ckpt"))) == 1


def test_a_killed_and_resumed_cell_is_one_row_with_its_seed(tmp_path, fashion_dir, capsys):
    """A resumed run's config has keys a fresh one lacks (ckpt_path, and in_chans/num_classes
    read back from the checkpoint): they are no part of the setting, so the report averages the
    resumed seed with the others in one row."""
    from smallbatch.analysis.aggregate import aggregate, load_results

    marker = tmp_path / "killed"
    kill = {"class_path": "sb_test_helpers.KillOnceAtStep",
            "init_args": {"steps": [20], "marker": str(marker)}}  # fmt: skip
    path = write_grid(
        tmp_path,
        fashion_dir,
        axes={"model.norm": ["bn"], "data.batch_size": [4], "seed_everything": [0, 1]},
        args={"trainer.max_epochs": 2, "trainer.callbacks": [kill]},
    )
    proc = grid_proc(path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err[-2000:]
    assert out.count("[grid] start bn-nb4-s0") == 2  # killed once, resumed
    run_dir = load_grid(path).run_dir
    logs = [p.read_text() for p in run_dir.glob("cells/*/stdout.log")]
    assert sum("--ckpt_path" in log for log in logs) == 1  # the second attempt resumed
    (row,) = aggregate(load_results(run_dir).results)
    assert sorted(row.seeds) == [0, 1]


def test_refused_second_grid_leaves_the_running_grids_manifest_untouched(tmp_path, fashion_dir):
    from smallbatch.grid import GridBusyError
    from smallbatch.grid.store import ResultsStore

    running = load_grid(write_grid(tmp_path, fashion_dir))
    holder = ResultsStore(running)
    holder.lock()  # the running grid
    try:
        holder.write_manifest()
        before = {p.name: p.read_bytes() for p in running.run_dir.glob("*.json")}
        other = tmp_path / "other"
        other.mkdir()
        axes = {"model.norm": ["ln"], "data.batch_size": [2]}
        second = load_grid(write_grid(other, fashion_dir, axes=axes))
        second.run_root = running.run_root  # same name and run_root, other cells
        with pytest.raises(GridBusyError):
            run_grid(second)
        after = {p.name: p.read_bytes() for p in running.run_dir.glob("*.json")}
        assert after == before and before
    finally:
        holder.unlock()


def test_slurm_jobs_are_polled_with_squeue_where_accounting_is_off():
    """Without accounting submitit's sacct poll fails (a warning per poll, every job UNKNOWN,
    a job that died without a result waited on for ever); squeue's listing is used instead,
    and a job that has left it counts as over."""
    from smallbatch.grid.slurm import GONE, QueueWatcher

    watcher = QueueWatcher()
    watcher._accounting = False
    for job in ("7_0", "7_1", "7_2"):
        watcher.register_job(job)
    command = watcher._make_command()
    assert command[0] == "squeue" and "-r" in command
    info = watcher.read_info(b"7_0|RUNNING|node1\n7_1|PENDING|\n")
    assert info["7_0"]["State"] == "RUNNING" and info["7_1"]["State"] == "PENDING"
    assert info["7_2"]["State"] == GONE
    watcher._info_dict.update(info)
    assert not watcher.is_done("7_0", mode="cache") and watcher.is_done("7_2", mode="cache")


def test_a_deleted_lock_file_frees_nothing_and_busy_names_the_holder(tmp_path, fashion_dir):
    from smallbatch.grid import GridBusyError
    from smallbatch.grid.store import ResultsStore

    spec = load_grid(write_grid(tmp_path, fashion_dir))
    holder = ResultsStore(spec)
    holder.lock()
    holder.write_manifest()  # as run_grid does next
    try:
        (spec.run_dir / ".grid.lock").unlink()  # a user tidying up while the grid runs
        with pytest.raises(GridBusyError, match=rf"PID {os.getpid()} on \S+, since"):
            ResultsStore(spec).lock()
    finally:
        holder.unlock()
    ResultsStore(spec).lock()  # released: a later grid gets it


@pytest.mark.parametrize(
    "content", ['{"attempts": 2, "history": 5}', '{"attempts": "two"}', "[1, 2]", "{not json"]
)
def test_a_wrong_shape_attempts_file_is_named_and_set_aside(tmp_path, fashion_dir, content):
    path = write_grid(tmp_path, fashion_dir, axes={"model.norm": ["bn"], "data.batch_size": [4]})
    spec = load_grid(path)
    (cell,) = spec.cells()
    folder = spec.run_dir / "cells" / cell.folder
    folder.mkdir(parents=True)
    (folder / "attempts.json").write_text(content)
    assert run_grid(spec, dry_run=True) == 0  # no traceback, nothing moved
    assert (folder / "attempts.json").read_text() == content
    from smallbatch.grid.store import ResultsStore

    store = ResultsStore(spec)
    messages = []
    store.prepare_start(store.state(cell), say=messages.append)
    assert any("invalid attempts.json" in m for m in messages), messages
    assert not (folder / "attempts.json").exists()
    assert len(list(folder.glob("attempts.json.invalid-*"))) == 1


def _cell_pids(run_dir: Path) -> list[int]:
    """PIDs of `smallbatch fit` processes writing into ``run_dir``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if " fit " in cmd and str(run_dir) in cmd and proc.name.isdigit():
            pids.append(int(proc.name))
    return pids


def test_a_stopped_orphan_never_overwrites_a_result_a_later_attempt_finished(tmp_path, fashion_dir):
    path = write_grid(
        tmp_path, fashion_dir, axes={"model.norm": ["bn"], "data.batch_size": [4]},
        args={"trainer.max_epochs": 4, "data.train_subset": 256},
    )  # fmt: skip
    spec = load_grid(path)
    grid = grid_proc(path)
    deadline = time.time() + 120
    while time.time() < deadline and not (pids := _cell_pids(spec.run_dir)):
        time.sleep(0.2)
    assert pids, "the cell never started"
    # stop it mid-training: after its first epoch's checkpoint, not after a fixed time (a fast
    # machine finished the whole cell within a fixed 8 s)
    while time.time() < deadline and not list(spec.run_dir.glob("cells/*/**/last.ckpt")):
        time.sleep(0.1)
    assert _cell_pids(spec.run_dir) == pids, "the cell ended before it could be stopped"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    grid.kill()  # SIGKILL: the stopped cell gets its parent-death SIGTERM, pending
    grid.communicate(timeout=60)
    try:
        rerun = grid_proc(path)
        out, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, out + err[-2000:]
        (cell,) = spec.run_dir.glob("cells/*")
        finished = (cell / "result.json").read_text()
        assert json.loads(finished)["status"] == "finished"
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # the orphan wakes up and handles its SIGTERM
    deadline = time.time() + 60
    while time.time() < deadline and _cell_pids(spec.run_dir):
        time.sleep(0.2)
    assert (cell / "result.json").read_text() == finished


BAD_INPUTS = [  # (change to the grid file, what the one line says)
    ({"executor": {"max_parallel": "many"}}, "executor.max_parallel: 'many' must be an integer"),
    ({"executor": {"threads_per_job": "one"}}, "executor.threads_per_job: 'one' must be"),
    ({"executor": {"retries": -1}}, "executor.retries: -1 must be an integer >= 0"),
    ({"executor": {"retries": "two"}}, "executor.retries: 'two' must be an integer >= 0"),
    ({"executor": {"timeout_min": 0}}, "executor.timeout_min: 0 must be minutes > 0"),
    ({"ghost_devices": True}, "ghost_devices: True must be an integer >= 1"),
    ({"axes": {"model.norm": ["bn", "bn"]}}, 'axes.model.norm: repeats "bn"'),
    (
        {"axes": {"model.norm": ["bn"], "data.batch_size": [4]}, "args": {"data.batch_size": 8}},
        "args.data.batch_size: is also an axis",
    ),
    (
        {"axes": {"model.norm": ["bn"], "seed_everything": ["zero"]}},
        "seed_everything: 'zero' must be an integer",
    ),
    ({"args": {"trainer.max_epochs": 0}}, "trainer.max_epochs: 0 must be an integer >= 1"),
    ({"axes": {"model.norm": ["bn"], "model.norm_args": [{"eps": -1}]}}, "eps > 0"),
    (
        {"axes": {"model.norm": ["bn"], "model.norm_batch": [3]}, "args": {"data.batch_size": 8}},
        "batch 8 is not a multiple of norm_batch 3",
    ),
    (
        {"axes": {"model.norm": [{"class_path": "sb_test_helpers.BrokenInitNorm"}]}},
        "constructor is broken",
    ),
]


@pytest.mark.parametrize("change, message", BAD_INPUTS, ids=[m[:24] for _, m in BAD_INPUTS])
def test_bad_grid_inputs_are_one_line_before_anything_is_written(
    tmp_path, fashion_dir, capsys, monkeypatch, change, message
):
    """Each rejected by `grid --dry-run` with one `error:` line, exit 2, no traceback and no
    file written (a grid run would otherwise spend attempts on them)."""
    from smallbatch.cli import main

    monkeypatch.syspath_prepend(str(HELPERS))
    path = write_grid(tmp_path, fashion_dir)
    spec = yaml.safe_load(path.read_text())
    for key, value in change.items():
        spec[key] = {**spec[key], **value} if key == "args" else value
    path.write_text(yaml.safe_dump(spec))
    assert main(["grid", "--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert 1 <= len(err) <= 3 and err[-1].startswith("error: ") and message in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "runs").exists()


def test_an_override_that_matches_no_cell_is_a_notice(tmp_path, fashion_dir, capsys):
    rule = [{"when": {"model.norm": "brn"}, "set": {"model.norm_args": {"rmax": 2}}}]
    load_grid(write_grid(tmp_path, fashion_dir, overrides=rule, axes={"model.norm": ["bn"]}))
    err = capsys.readouterr().err
    assert "overrides[0].when {'model.norm': 'brn'} matches no cell" in err


def test_a_cell_past_its_time_limit_is_stopped_and_resumes(tmp_path, fashion_dir):
    """executor.timeout_min locally, as SLURM's time limit: the cell is stopped and resumed
    from its checkpoint until it finishes."""
    # the first attempt checkpoints its first epoch (16 steps), then hangs
    slow = {"class_path": "sb_test_helpers.StallAfterStep", "init_args": {"step": 16, "seconds": 5}}
    path = write_grid(
        tmp_path, fashion_dir, axes={"model.norm": ["bn"], "data.batch_size": [4]},
        args={"trainer.max_epochs": 3, "trainer.callbacks": [slow]},
        executor={"kind": "local", "max_parallel": 1, "retries": 1, "timeout_min": 0.5},
    )  # fmt: skip
    proc = grid_proc(path)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, out + err[-2000:]
    assert "time limit of 0.5 min reached" in out
    (cell,) = load_grid(path).run_dir.glob("cells/*")
    result = json.loads((cell / "result.json").read_text())
    assert result["status"] == "finished" and result["global_step"] == 48


def test_a_base_config_edited_while_the_grid_runs_is_stamped_as_run(tmp_path, fashion_dir):
    """Cells started after an edit of the base config record the edited digest, so restoring
    the original makes exactly those cells stale (they ran with the edited values)."""
    base = tmp_path / "base.yaml"
    base.write_text((ROOT / "configs" / "quickstart.yaml").read_text())
    path = write_grid(tmp_path, fashion_dir, axes={"model.norm": ["bn", "gn"]},
                      base_config=str(base))  # fmt: skip
    spec = load_grid(path)
    proc = grid_proc(path)
    deadline = time.time() + 120
    while time.time() < deadline and not list(spec.run_dir.glob("cells/*/base_config.json")):
        time.sleep(0.1)
    original = base.read_text()
    base.write_text(original.replace("lr: 0.1", "lr: 0.05"))  # while the first cell runs
    proc.communicate(timeout=300)
    edited = spec.base_digest()
    base.write_text(original)
    unedited = spec.base_digest()
    from smallbatch.grid import ResultsStore

    states = {s.cell.folder: s.status for s in ResultsStore(load_grid(path)).states()}
    for cell in spec.run_dir.glob("cells/*"):
        # each cell's stamp is the base config it read (its saved config says which)
        lr = yaml.safe_load((cell / "config.yaml").read_text())["model"]["lr"]
        stamp = json.loads((cell / "base_config.json").read_text())["digest"]
        assert stamp == (unedited if lr == 0.1 else edited), (cell.name, lr)
        assert states[cell.name] == ("done" if lr == 0.1 else "stale")
    assert any(s == "stale" for s in states.values())  # the last cell ran after the edit


def test_a_batch_statistics_plugin_without_ghost_batches_is_named_not_dropped(
    tmp_path, fashion_dir
):
    """Under fixed_total_batch a norm with batch statistics that cannot split them (a plain
    torch BatchNorm2d by class path) cannot form its b < T cells: one line names it, where
    before its b = 4 cells vanished from --dry-run and the report. SyncBN and batch-free norms
    are still one cell per seed."""
    plain = {"class_path": "torch.nn.BatchNorm2d"}
    axes = {"model.norm": ["gn", "syncbn", plain], "model.norm_batch": [16, 4]}
    with pytest.raises(GridSpecError, match=r"'BatchNorm2d' keeps batch statistics"):
        load_grid(write_grid(tmp_path, fashion_dir, axes=axes, fixed_total_batch=16))
    axes["model.norm"] = ["gn", "syncbn", "bn", json.dumps({"class_path": "brn"})]
    spec = load_grid(write_grid(tmp_path, fashion_dir, name="h", axes=axes, fixed_total_batch=16))
    labels = sorted(c.label for c in spec.cells())
    assert labels == ["bn-nb16", "bn-nb4-pb16", "brn-nb16", "brn-nb4-pb16", "gn-nb16",
                      "syncbn-nb16"]  # fmt: skip


def test_a_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """ENOSPC during an atomic write: the error names the file; no temporary file is left and
    the old file stays whole."""
    import errno

    from smallbatch import results

    target = tmp_path / "result.json"
    results.write_json_atomic(target, {"status": "finished"})

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "fsync", full)
    with pytest.raises(OSError) as info:
        results.write_json_atomic(target, {"status": "interrupted"})
    assert info.value.filename == str(target) and info.value.errno == errno.ENOSPC
    assert json.loads(target.read_text()) == {"status": "finished"}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_truncated_checkpoints_of_any_name_are_set_aside_before_a_cell_runs(tmp_path, fashion_dir):
    from smallbatch.grid.store import ResultsStore

    path = write_grid(tmp_path, fashion_dir, axes={"model.norm": ["bn"], "data.batch_size": [4]})
    spec = load_grid(path)
    (cell,) = spec.cells()
    ckpts = spec.run_dir / "cells" / cell.folder / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "best-epoch=0-step=16.ckpt").write_bytes(b"")  # 0 bytes: the disk was full
    store = ResultsStore(spec)
    messages = []
    store.prepare_start(store.state(cell), say=messages.append)
    assert any("best-epoch=0-step=16.ckpt is unreadable" in m for m in messages), messages
    assert [p.name.split("-", 2)[0] for p in ckpts.iterdir()] == ["unreadable"]
