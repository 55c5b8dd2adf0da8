"""Reading W&B's offline run files (``run-*.wandb``) back without W&B's servers: what a run
logged (config, summary, history, artifacts). Used in production by the W&B logger to skip the
steps an earlier attempt of a cell already logged, and by tests and scripts to check runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

_BLOCK, _HEADER = 32768, 7


def _offline_records(path: Path):
    """Records of a ``run-*.wandb`` file (W&B's LevelDB-style log of protobuf records)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:  # block trailer padding
            pos += left_in_block
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        if kind == 0 and length == 0:
            pos += left_in_block
            continue
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            yield pending
            pending = b""


def read_offline_run(run_folder: str | Path, wait_s: float = 30.0) -> dict[str, Any]:
    """Read an offline W&B run folder back: name, group, tags, id, project, config, summary, the
    keys logged in history and the artifacts logged (type, name, files). For tests and for
    checking a run before ``wandb sync``.

    W&B's service process may still be writing the file when ``run.finish()`` has returned, so
    this waits up to ``wait_s`` seconds for the run's exit record (its last) before parsing.
    """
    files = sorted(Path(run_folder).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_folder}")
    deadline = time.monotonic() + wait_s
    while True:
        out = parse_offline_run(files[0])
        if out["finished"] or time.monotonic() >= deadline:
            return out
        time.sleep(0.2)


def parse_offline_run(path: Path) -> dict[str, Any]:
    import json

    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    out: dict[str, Any] = {
        "config": {},
        "summary": {},
        "history_keys": set(),
        "history": [],
        "artifacts": [],
        "finished": False,
    }
    for raw in _offline_records(path):
        rec = pb.Record()
        try:
            rec.ParseFromString(raw)
        except DecodeError:  # a record W&B is still writing (or never finished): stop here
            break
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.update(
                name=rec.run.display_name,
                group=rec.run.run_group,
                tags=list(rec.run.tags),
                id=rec.run.run_id,
                project=rec.run.project,
            )
            for item in rec.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item
            }
            out["history"].append(row)
            out["history_keys"].update(row)
        elif kind == "artifact":
            files = [entry.path for entry in rec.artifact.manifest.contents]
            out["artifacts"].append(
                {"type": rec.artifact.type, "name": rec.artifact.name, "files": files}
            )
        elif kind == "exit":
            out["finished"] = True
    return out
