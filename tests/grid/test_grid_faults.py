"""`smallbatch grid` under faults: kills, failures, full or unwritable disks, locks, orphans."""

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from conftest import HELPERS, ROOT
from grid_files import cell_results, grid_proc, write_grid

from smallbatch.grid import load_grid, run_grid


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
