"""``smallbatch bench``: training-step and inference time, images/s and memory per norm, with the
ratio to BN measured in the same run, interleaved (each round times every norm once, in a
rotating order, so drift on a shared machine hits all norms alike)."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..hardware import seconds_per_call
from ..models import COMPILE_MODES, compile_backbone, create_model, to_channels_last
from ..norms import NormConfigError, resolve_norm
from ..norms.registry import factory_defaults
from ..results import write_json_atomic
from ..tasks import TASKS, create_task


def default_norms() -> list[str]:
    """Every built-in norm that runs on one device as it would per device under DDP (ghost
    batches or batch-free): all but SyncBN."""
    from ..norms.traits import builtin_norms, probe_norm

    return [n for n in builtin_norms() if (t := probe_norm(n)).ghost_batches or t.batch_free]


REFERENCE_CBN = "cbn_autograd"
BACKBONES = {"resnet20": {}, "resnet18": {"cifar_stem": True}}
TARGETS = [  # (norm, reference, max ratio of training-step times), checked at batch 8 and 32
    ("brn", "bn", 1.15),
    ("cbn", "bn", 1.5),
    ("cbn", REFERENCE_CBN, 0.7),
]
COMPILED = "+compiled"  # suffix of a norm's compiled variant (``--compile MODE``)
COMPILE_TARGETS = [  # compiled / eager step time, checked at batch 1 on a GPU
    ("bn" + COMPILED, "bn", 0.5),
    ("gn" + COMPILED, "gn", 0.5),
]


@dataclass
class Measurement:
    backbone: str
    batch_size: int
    norm: str
    train_step_ms: float
    infer_ms: float
    train_images_per_s: float
    train_ratio_to_bn: float | None = None
    infer_ratio_to_bn: float | None = None
    peak_memory_mb: float | None = None
    norm_state_mb: float = 0.0
    ratio_to_eager: float | None = None  # compiled variants: step time / the eager norm's
    first_step_s: float | None = None  # compiled variants: the first step (compilation)
    grad_diff_to_eager: float | None = None  # compiled: max |Δgrad| / max |grad|, first step


def norm_spec(norm: str) -> Any:
    """The spec ``create_model`` takes for a benchmarked name (``cbn_autograd``: the autograd
    reference of CBN's window statistics)."""
    if norm == REFERENCE_CBN:
        return {"class_path": "smallbatch.norms.cbn_autograd.AutogradCrossIterationBatchNorm2d"}
    return norm


SEGMENTATION_CLASSES = 11  # as FashionScenes: 10 garments and background


def build(backbone: str, norm: str, window: int, device: torch.device, channels_last: bool,
          task: str = "classification"):  # fmt: skip
    """The backbone with ``norm`` in its steady regime; ``window`` goes to norms that take one
    (CBN's window of iterations). ``task``: a classifier, or a segmentation model (the
    backbone as encoder, an FCN head with the same norm)."""
    torch.manual_seed(0)
    factory = resolve_norm(norm_spec(norm))[0]
    extra = {"window": window} if "window" in factory_defaults(factory) else {}
    # time each norm in its steady regime (BRN with live r, d; MABN with its moving averages),
    # not its BN-like warm-up: the contract's steady_state_args
    extra |= getattr(factory, "steady_state_args", {})
    if task == "classification":
        model = create_model(
            backbone, norm_spec(norm), num_classes=10, **BACKBONES.get(backbone, {}), **extra
        )
    else:
        model = create_task(task, SEGMENTATION_CLASSES).build_model(
            backbone=backbone, norm=norm_spec(norm), in_chans=3, backbone_args=None,
            norm_act="replace", cifar_stem=BACKBONES.get(backbone, {}).get("cifar_stem", False),
            **extra,
        )  # fmt: skip
    model = model.to(device)
    if channels_last:
        to_channels_last(model)
    return model


def machine_load_warning() -> str:
    """A line when other work keeps the CPUs busy (1-minute load average above a quarter of the
    cores): ratios measured then can be several times off; '' otherwise."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    cores = os.cpu_count() or 1
    if load <= max(0.25 * cores, 0.5):
        return ""
    return (f"warning: the machine is loaded (1-minute load {load:.1f} on {cores} cores): the "
            "ratios below may be far from those of a quiet machine")  # fmt: skip


def norm_state_bytes(model: nn.Module) -> int:
    """Extra memory held by stateful norms (``state_bytes`` of the contract: CBN windows, MABN
    histories, a plugin's own)."""
    return sum(
        m.state_bytes() for m in model.modules() if callable(getattr(m, "state_bytes", None))
    )


class Runner:
    """One model's training step and inference pass on a fixed batch."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> None:
        self.model, self.x, self.y = model, x, y
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16)

    def _backward(self) -> None:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        with self.autocast:
            loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()

    def train_step(self) -> None:
        self._backward()
        self.opt.step()

    def infer(self) -> None:
        self.model.eval()
        with torch.no_grad(), self.autocast:
            self.model(self.x)

    def gradients(self) -> list[torch.Tensor]:
        """Gradients of one training forward/backward (no optimizer step)."""
        self._backward()
        grads = [p.grad.detach().clone() for p in self.model.parameters() if p.grad is not None]
        self.opt.zero_grad(set_to_none=True)
        return grads


def _grad_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max |a − b| / max |a| over all parameters' gradients."""
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    return diff / max(max(float(x.abs().max()) for x in a), 1e-30)


def bench_config(
    backbone: str,
    batch: int,
    norms: list[str],
    device: torch.device,
    steps: int,
    warmup: int,
    rounds: int,
    window: int,
    channels_last: bool = False,
    bf16: bool = False,
    image_size: int = 32,
    compile_mode: str | None = None,
    task: str = "classification",
) -> list[Measurement]:
    """Interleaved timing of every norm for one (backbone, batch); with ``compile_mode`` also
    each norm's compiled variant (norms with Python-side state are skipped), checked against
    the eager model's first-step gradients."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device)
    if task == "classification":
        y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    else:  # a label per pixel
        shape = (batch, image_size, image_size)
        y = torch.randint(0, SEGMENTATION_CLASSES, shape, generator=gen).to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    runners = {
        n: Runner(build(backbone, n, window, device, channels_last, task), x, y, bf16)
        for n in norms
    }
    grad_diff: dict[str, float] = {}
    first_step: dict[str, float] = {}
    if compile_mode:
        for n in list(norms):
            model = build(backbone, n, window, device, channels_last, task)
            try:
                compile_backbone(model, compile_mode)
            except NormConfigError:
                continue  # Python-side state (BRN, CBN): eager only
            runners[n + COMPILED] = compiled = Runner(model, x, y, bf16)
            # same initial weights and data: the first step's gradients must agree
            eager_grads = runners[n].gradients()
            compiled_grads: list[torch.Tensor] = []
            first_step[n + COMPILED] = seconds_per_call(  # the call that compiles
                lambda c=compiled, out=compiled_grads: out.extend(c.gradients()), 1, device
            )
            grad_diff[n + COMPILED] = _grad_diff(eager_grads, compiled_grads)
    norms = list(runners)
    peak: dict[str, float | None] = {}
    for name, r in runners.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(max(warmup, window)):  # also fills CBN windows
            r.train_step()
        peak[name] = (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        )
        r.infer()
    train = {n: [] for n in norms}
    infer = {n: [] for n in norms}
    order = list(norms)
    for i in range(rounds):
        rotated = order[i % len(order) :] + order[: i % len(order)]
        for name in rotated:
            train[name].append(seconds_per_call(runners[name].train_step, steps, device))
            infer[name].append(seconds_per_call(runners[name].infer, steps, device))
    out = []
    for name in norms:
        t, inf = statistics.median(train[name]), statistics.median(infer[name])
        out.append(
            Measurement(
                backbone,
                batch,
                name,
                1000 * t,
                1000 * inf,
                batch / t,
                peak_memory_mb=peak[name],
                norm_state_mb=norm_state_bytes(runners[name].model) / 2**20,
            )
        )
    bn = next((m for m in out if m.norm == "bn"), None)
    if bn is not None:
        for m in out:
            m.train_ratio_to_bn = m.train_step_ms / bn.train_step_ms
            m.infer_ratio_to_bn = m.infer_ms / bn.infer_ms
    by_norm = {m.norm: m for m in out}
    for m in out:
        if m.norm.endswith(COMPILED):
            m.ratio_to_eager = m.train_step_ms / by_norm[m.norm[: -len(COMPILED)]].train_step_ms
            m.first_step_s = first_step[m.norm]
            m.grad_diff_to_eager = grad_diff[m.norm]
    return out


def check_targets(results: list[Measurement], gpu: bool = False) -> list[dict[str, Any]]:
    """The speed targets at batch 8 and 32, from ratios measured in this run; on a GPU also the
    compiled path's (at least twice eager's batch-1 step rate for BN and GN)."""
    by = {(m.backbone, m.batch_size, m.norm): m for m in results}
    targets = [(*t, (8, 32)) for t in TARGETS]
    if gpu:
        targets += [(*t, (1,)) for t in COMPILE_TARGETS]
    checks = []
    for norm, ref, limit, batches in targets:
        for (backbone, batch, name), m in by.items():
            r = by.get((backbone, batch, ref))
            if name != norm or r is None or batch not in batches:
                continue
            ratio = m.train_step_ms / r.train_step_ms
            checks.append(
                {
                    "backbone": backbone,
                    "batch_size": batch,
                    "check": f"{norm} / {ref} train step",
                    "ratio": ratio,
                    "limit": limit,
                    "ok": ratio <= limit,
                }
            )
    return checks


def print_table(results: list[Measurement], checks: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="smallbatch bench (medians; ratios to BN from the same interleaved run)")
    cols = ["backbone", "batch", "norm", "train ms", "×BN", "infer ms", "×BN", "img/s", "peak MB"]
    for col in [*cols, "norm state MB"]:
        table.add_column(col, justify="right" if col not in ("backbone", "norm") else "left")
    for m in results:
        table.add_row(
            m.backbone,
            str(m.batch_size),
            m.norm,
            f"{m.train_step_ms:.2f}",
            f"{m.train_ratio_to_bn:.2f}" if m.train_ratio_to_bn else "-",
            f"{m.infer_ms:.2f}",
            f"{m.infer_ratio_to_bn:.2f}" if m.infer_ratio_to_bn else "-",
            f"{m.train_images_per_s:.0f}",
            f"{m.peak_memory_mb:.0f}" if m.peak_memory_mb is not None else "-",
            f"{m.norm_state_mb:.2f}",
        )
    console = Console(width=150)
    console.print(table)
    for m in results:
        if m.ratio_to_eager is not None:
            console.print(
                f"{m.backbone} b={m.batch_size} {m.norm}: step {m.ratio_to_eager:.2f} x eager, "
                f"first step (compiling) {m.first_step_s:.1f} s, first-step gradients "
                f"max|diff|/max|grad| = {m.grad_diff_to_eager:.1e}"
            )
    for c in checks:
        mark = "within" if c["ok"] else "missed"
        console.print(
            f"{mark}  {c['backbone']} b={c['batch_size']}: {c['check']} = {c['ratio']:.3f} "
            f"(target <= {c['limit']})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smallbatch bench", description=" ".join(__doc__.split()).replace("``", "")
    )
    parser.add_argument("--norms", nargs="+", default=None, help="default: every built-in norm")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 8, 32])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--window", type=int, default=4, help="CBN window")
    parser.add_argument(
        "--reference-cbn", action="store_true", help="also time CBN with autograd weight-gradients"
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default=None,
        help="also time each norm's torch.compile'd variant (reduce-overhead: CUDA graphs)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--task",
        choices=list(TASKS),
        default="classification",
        help="time a classifier, or a segmentation model (encoder + FCN head, per-pixel loss)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input side in pixels (default 32; 96 for segmentation, FashionScenes' canvas)",
    )
    parser.add_argument("--json", default="bench.json", help="where to write the results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if load_warning := machine_load_warning():
        print(load_warning)
    device = torch.device(args.device)
    norms = list(dict.fromkeys(["bn", *(args.norms or default_norms())]))
    if args.reference_cbn:
        norms.append(REFERENCE_CBN)
    results: list[Measurement] = []
    for backbone in args.backbones:
        for batch in args.batch_sizes:
            results += bench_config(
                backbone,
                batch,
                norms,
                device,
                args.steps,
                args.warmup,
                args.rounds,
                args.window,
                args.channels_last,
                args.bf16,
                image_size=args.image_size or (32 if args.task == "classification" else 96),
                compile_mode=args.compile,
                task=args.task,
            )
    checks = check_targets(results, gpu=device.type == "cuda")
    print_table(results, checks)
    meta = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": argv,
        **{k: v for k, v in vars(args).items() if k != "json"},
    }
    write_json_atomic(
        Path(args.json), {"meta": meta, "results": [asdict(m) for m in results], "targets": checks}
    )
    print(f"wrote {args.json}")
    missed = [c for c in checks if not c["ok"]]
    if missed:  # a measurement, not a test: say so, and exit 0
        print(f"{len(missed)} of {len(checks)} ratios missed their targets on this machine")
    return 0


if (
    __name__ == "__main__"
):  # python -m smallbatch.analysis.bench: no Lightning CLI dependencies needed
    raise SystemExit(main())
