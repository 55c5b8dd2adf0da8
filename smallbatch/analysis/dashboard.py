"""The grid's W&B dashboard (``smallbatch report RUN --wandb``).

- **One summary run per grid**: a fixed id derived from (project, group), resumed and updated
  by every report, never a second run. It holds the report's table, its plot (top-1 error
  against the normalization batch b on a log2 axis, largest b left, with the 95 % intervals) and
  one summary number per table cell (``error/<row>/nb<b>``, ``error_ci95/<row>/nb<b>``).
- **A workspace view of the grid's group** (online only: it is saved on the W&B server through
  ``wandb-workspaces``): the final error against ``normalization_batch`` (log2 axis) averaged
  over the runs of each norm with a standard-error band (each cell run logs one history row holding
  both), every cell run's error as a point, the summary run's plot with the 95 % intervals, and
  the training curves averaged per norm. ``workspace_spec`` builds it without a network, so it
  is tested offline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..naming import stable_digest
from ..results import NORMALIZATION_BATCH, metric_labels

ERROR_KEY = (  # each cell run's summary: 100 · (1 − final metric) (run/result_writer.py)
    "val/error_final"
)
PLOT_KEY = "error_vs_batch"  # the summary run's image of the report's plot
NORM_BATCH_KEY = NORMALIZATION_BATCH  # each cell run's config (run.wandb_logger): b
NORM_KEY = "norm"


def curves(measure: str = "acc") -> tuple[tuple[str, str], ...]:
    """(title, logged key) of the training curves: the task's validation metric and the loss."""
    title = (
        "validation top-1 accuracy" if measure == "acc" else f"validation {measure_word(measure)}"
    )
    return ((title, f"val/{measure}"), ("training loss", "train/loss_step"))


def measure_word(measure: str) -> str:
    return metric_labels(measure)[2]


def summary_run_id(project: str, group: str) -> str:
    """The summary run's id: the same for every report of one grid in one project."""
    return f"summary-{stable_digest([project, group], 12)}"


def workspace_spec(
    entity: str, project: str, group: str, max_runs: int = 500, measure: str = "acc"
):
    """The workspace view of ``group`` (a ``wandb_workspaces`` Workspace, not yet saved); its
    error is 100 · (1 − ``measure``): top-1 error, 1 − mIoU."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    error = metric_labels(measure)[1]
    error_panels = [
        wr.LinePlot(
            title=f"final {error} (%) vs normalization batch (log2), mean ± s.e. over seeds",
            x=NORM_BATCH_KEY,
            y=[ERROR_KEY],
            log_x=True,
            groupby=wr.Config(NORM_KEY),
            groupby_aggfunc="mean",
            groupby_rangefunc="stderr",
        ),
        wr.ScatterPlot(
            title=f"final {error} (%) of every cell vs normalization batch (log2)",
            x=wr.Config(NORM_BATCH_KEY),
            y=wr.SummaryMetric(ERROR_KEY),
            log_x=True,
        ),
        wr.MediaBrowser(
            title="mean ± 95% interval over seeds, largest batch left (smallbatch report)",
            media_keys=[PLOT_KEY],
        ),
    ]
    curve_panels = [
        wr.LinePlot(
            title=f"{title}, mean ± s.e. over the runs of each norm",
            x="trainer/global_step",
            y=[key],
            groupby=wr.Config(NORM_KEY),
            groupby_aggfunc="mean",
            groupby_rangefunc="stderr",
        )
        for title, key in curves(measure)
    ]
    return ws.Workspace(
        entity=entity,
        project=project,
        name=f"{group}: error vs normalization batch",
        sections=[
            ws.Section(name="Error vs normalization batch", panels=error_panels, is_open=True),
            ws.Section(name="Training curves by norm", panels=curve_panels, is_open=True),
        ],
        settings=ws.WorkspaceSettings(max_runs=max_runs),
        runset_settings=ws.RunsetSettings(filters=[ws.Metric("Group") == group]),
    )


def grid_project(results: Sequence[dict[str, Any]], base_config: Path | None) -> str | None:
    """The W&B project the grid's cells logged to: recorded in their result.json, else the
    base config's WandbLogger ``project``; None when neither says."""
    projects = [r["wandb"]["project"] for r in results if isinstance(r.get("wandb"), dict)]
    if projects:
        return max(set(projects), key=projects.count)
    if base_config is not None and base_config.is_file():
        import yaml

        cfg = yaml.safe_load(base_config.read_text()) or {}
        loggers = (cfg.get("trainer") or {}).get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("Logger"):
                project = (logger.get("init_args") or {}).get("project")
                if project:
                    return str(project)
    return None


def log_summary_run(
    rows: Sequence[dict[str, Any]], png: Path, project: str, group: str, metric: str
) -> Any:
    """Create or update the grid's summary run; returns the (finished) run.

    ``rows``: one dict per table cell with ``row``, ``norm``, ``normalization_batch``, ``mean`` and
    ``ci95`` (accuracy in %) and ``n`` (seeds)."""
    import wandb

    from ..run.wandb_logger import wandb_has_credentials

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_credentials() else "offline")
    run = wandb.init(
        project=project,
        group=group,
        id=summary_run_id(project, group),
        resume="allow",
        name=f"{group}-summary",
        job_type="report",
        mode=mode,
        dir=str(png.parent),
        config={"metric": metric, "grid": group},
    )
    columns = ["row", "norm", "normalization_batch", "error_mean", "error_ci95", "seeds"]
    data = [
        [r["row"], r["norm"], r["normalization_batch"], 100 - r["mean"], r["ci95"], r["n"]]
        for r in rows
    ]
    run.log({"results": wandb.Table(columns=columns, data=data), PLOT_KEY: wandb.Image(str(png))})
    for r in rows:
        run.summary[f"error/{r['row']}/nb{r['normalization_batch']}"] = 100 - r["mean"]
        if r["ci95"] is not None:
            run.summary[f"error_ci95/{r['row']}/nb{r['normalization_batch']}"] = r["ci95"]
    run.finish()
    return run


def save_workspace(project: str, group: str, measure: str = "acc") -> str:
    """Save the workspace view on the W&B server (needs a key); returns its URL."""
    import wandb

    entity = wandb.Api().default_entity
    workspace = workspace_spec(entity, project, group, measure=measure)
    workspace.save()
    return workspace.url
