"""`smallbatch grid`: grid files, their expansion and validation (nothing or little runs)."""

import json

import pytest
import yaml
from conftest import HELPERS, ROOT
from grid_files import write_grid

from smallbatch.grid import GridSpecError, load_grid


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


@pytest.mark.slow
@pytest.mark.parametrize(
    "grid_file", sorted((ROOT / "configs" / "grid").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_grid_file_validates(grid_file):
    """Every shipped grid validates (the CLI parse of every axis value, each distinct model and
    data module built), or fails only on what a fresh clone lacks, saying so: the ImageNet data
    (issue 37: a dry run checks the data) and the segmentation grid's pretrained encoders."""
    try:
        spec = load_grid(grid_file)
    except GridSpecError as exc:
        lacks = {
            "imagenet_resnet50.yaml": "image folder 'imagenet' not found. Looked in:",
            "seg_fashion.yaml": "does not exist: pretrain the backbone first",
        }
        assert grid_file.name in lacks and lacks[grid_file.name] in str(exc), exc
        return
    assert spec.cells()


BAD_INPUTS = [  # (change to the grid file, what the one line says)
    ({"name": "g" * 300}, "name: is 300 characters long; at most 100"),
    ({"name": "my grid"}, "name: 'my grid' may use letters, digits and . _ + = - only"),
    ({"name": "../up"}, "name: '../up' may use letters, digits"),
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
    (  # issue 37: a SLURM job of 2 nodes for a cell that trains on one
        {"executor": {"kind": "slurm", "cluster": "debug", "nodes": 2, "gpus_per_node": 0}},
        "executor.nodes is 2 but the cell's trainer.num_nodes is 1",
    ),
    (  # one task per node (a CPU job) for a cell that asks for 2 devices a node
        {
            "executor": {"kind": "slurm", "cluster": "debug", "gpus_per_node": 0},
            "args": {"trainer.devices": 2},
        },  # fmt: skip
        "gives 1 task(s) per node but the cell's trainer.devices is 2",
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


def test_an_arrays_jobs_are_polled_like_a_single_job(tmp_path, fashion_dir, monkeypatch):
    """submitit builds the jobs of an array as plain SlurmJob, whose watcher polls sacct (the
    "Bypassing sacct error" warnings of a multi-cell grid on a cluster without accounting);
    submit_cells hands back CellSlurmJob, polled through QueueWatcher, with the same ids."""
    from types import SimpleNamespace

    from submitit.slurm.slurm import SlurmJob

    from smallbatch.grid import slurm

    spec = load_grid(write_grid(tmp_path, fashion_dir, axes={"model.norm": ["bn", "gn"]}))
    array = [SlurmJob(folder=tmp_path / "%j", job_id=f"9_{a}", tasks=(0, 1)) for a in (0, 1)]
    fake = SimpleNamespace(cluster="slurm", _executor=SimpleNamespace(folder=tmp_path / "%j"),
                           map_array=lambda fn, cells: array)  # fmt: skip
    monkeypatch.setattr(slurm, "slurm_executor", lambda spec: fake)
    jobs = slurm.submit_cells(spec, list(spec.cells()))
    assert [type(j) for j in jobs] == [slurm.CellSlurmJob] * 2
    assert [j.job_id for j in jobs] == ["9_0", "9_1"] and jobs[0].num_tasks == 2
    assert isinstance(jobs[0].watcher, slurm.QueueWatcher)


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


def test_ghost_devices_switch_emulates_devices_with_ghost_batches(tmp_path, fashion_dir):
    path = write_grid(tmp_path, fashion_dir, ghost_devices=4)
    cells = load_grid(path).cells()
    bn2 = next(c for c in cells if c.label == "bn-nb4-pb16")
    assert bn2.overrides["data.batch_size"] == 16 and bn2.overrides["model.norm_batch"] == 4
    with pytest.raises(GridSpecError, match="ghost_devices: 0 must be"):
        load_grid(write_grid(tmp_path, fashion_dir, name="h", ghost_devices=0))


def test_an_executor_kind_is_one_class_and_one_map_entry(tmp_path, fashion_dir, monkeypatch):
    """Issue 37: the runner, the dry run and the grid file's checks know executors only through
    ``smallbatch.grid.executors.EXECUTORS``."""
    from smallbatch.grid import executors, run_grid

    ran = []

    class Recording:
        kind = "recording"
        keys = frozenset({"note"})

        def __init__(self, spec, store, wait=True):
            self.spec = spec

        @property
        def cells_at_once(self):
            return 3

        def run(self, todo, on_event, on_progress=None):
            for state in todo:
                on_event("start", state)
                ran.append((state.cell.folder, self.spec.executor["note"]))

    monkeypatch.setitem(executors.EXECUTORS, "recording", Recording)
    path = write_grid(tmp_path, fashion_dir, executor={"kind": "recording", "note": "hi"})
    spec = load_grid(path)  # its kind and key are accepted
    assert executors.executor_for(spec, None).cells_at_once == 3
    assert run_grid(spec, estimate=False) == 1  # nothing ran for real: no results
    assert sorted(ran) == sorted((c.folder, "hi") for c in spec.cells())
    monkeypatch.delitem(executors.EXECUTORS, "recording")
    with pytest.raises(GridSpecError, match=r"executor\.note: unknown"):
        load_grid(path)
