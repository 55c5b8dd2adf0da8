"""Fashion-MNIST scenes: a semantic segmentation set built offline from real garment images.

Each scene is a ``canvas``×``canvas`` grey image holding ``garments`` Fashion-MNIST garments,
each scaled by a factor drawn from ``scale`` (bilinear, antialiased, in float64 so that
rounding to uint8 does not hang on a CPU's last bit), placed at a uniform
random position (overlaps happen; a later garment covers an earlier one) on a black
background. A pixel's label is the class + 1 of the garment that covers it (garment pixels:
intensity > ``threshold``), 0 for background: 11 classes. Training scenes draw garments from
the training split only, test scenes from the test split only. Generation is deterministic
from ``seed`` (torch's CPU generator) and cached as one file per setting with its SHA-256,
checked on every load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from ..results import write_atomic, write_json_atomic

SCENES_VERSION = 2  # bump when the generator changes: a new cache file


@dataclass(frozen=True)
class SceneSetting:
    """What a scene set is made from; its digest names the cache file."""

    canvas: int = 96
    garments: tuple[int, int] = (2, 4)  # inclusive range per scene
    scale: tuple[float, float] = (1.0, 2.0)  # garment size 28·s pixels
    threshold: int = 40  # garment pixels: intensity above this (of 255)
    train_scenes: int = 4000
    test_scenes: int = 1000
    seed: int = 0

    def digest(self) -> str:
        text = json.dumps({**asdict(self), "version": SCENES_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def check(self) -> None:
        lo, hi = self.garments
        if not 1 <= lo <= hi:
            raise ValueError(f"garments must be a range [lo, hi] with 1 <= lo <= hi, got {self.garments}")
        if not 0 < self.scale[0] <= self.scale[1] or round(28 * self.scale[1]) > self.canvas:
            raise ValueError(
                f"scale {self.scale} must be 0 < lo <= hi with 28·hi <= canvas {self.canvas}"
            )
        if self.train_scenes < 1 or self.test_scenes < 1:
            raise ValueError("train_scenes and test_scenes must be >= 1")


def make_scenes(images: Tensor, labels: Tensor, count: int, setting: SceneSetting,
                stream: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``count`` scenes from garments ``images`` (N, 28, 28) uint8 with ``labels`` (N,):
    (scene images (count, 1, canvas, canvas) uint8, label maps (count, canvas, canvas) uint8).
    ``stream`` separates the random draws of the splits."""
    g = torch.Generator().manual_seed(setting.seed * 1000 + stream)
    c = setting.canvas
    out = torch.zeros(count, 1, c, c, dtype=torch.uint8)
    maps = torch.zeros(count, c, c, dtype=torch.uint8)
    lo, hi = setting.garments
    for i in range(count):
        k = int(torch.randint(lo, hi + 1, (1,), generator=g))
        picks = torch.randint(0, images.shape[0], (k,), generator=g)
        scales = torch.empty(k).uniform_(*setting.scale, generator=g)
        for j in range(k):
            size = round(28 * float(scales[j]))
            garment = images[picks[j]].double()[None, None]  # float64: no rounding ties
            if size != 28:
                garment = F.interpolate(garment, size=(size, size), mode="bilinear",
                                        antialias=True, align_corners=False)  # fmt: skip
            garment = garment[0, 0].round().clamp(0, 255).to(torch.uint8)
            top = int(torch.randint(0, c - size + 1, (1,), generator=g))
            left = int(torch.randint(0, c - size + 1, (1,), generator=g))
            covered = garment > setting.threshold
            window = out[i, 0, top : top + size, left : left + size]
            window[covered] = garment[covered]
            maps[i, top : top + size, left : left + size][covered] = int(labels[picks[j]]) + 1
    return out, maps


def _sha256(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def load_or_make_scenes(folder: str | os.PathLike, setting: SceneSetting, garments) -> dict[str, Tensor]:
    """The scene set of ``setting`` from its cache in ``folder`` (checksum verified), or made
    from ``garments()`` — a callable returning ((train images, labels), (test images, labels))
    — and cached (atomic writes). Keys: train_images, train_maps, test_images, test_maps."""
    setting.check()
    folder = Path(folder)
    data_file = folder / f"scenes-{setting.digest()}.pt"
    meta_file = data_file.with_suffix(".json")
    if data_file.exists() and meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text())
            tensors = torch.load(data_file, weights_only=True)
            if _sha256(tensors) == meta.get("sha256"):
                return tensors
            reason = "its checksum does not match"
        except (OSError, ValueError, RuntimeError) as exc:
            reason = f"it cannot be read ({exc})"
        rank_zero_info(f"scenes cache {data_file} is set aside: {reason}; making it again")
    (train_x, train_y), (test_x, test_y) = garments()
    train_images, train_maps = make_scenes(train_x, train_y, setting.train_scenes, setting, 0)
    test_images, test_maps = make_scenes(test_x, test_y, setting.test_scenes, setting, 1)
    tensors = {"train_images": train_images, "train_maps": train_maps,
               "test_images": test_images, "test_maps": test_maps}  # fmt: skip
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    write_atomic(data_file, buffer.getvalue())
    meta = {"setting": asdict(setting), "version": SCENES_VERSION, "sha256": _sha256(tensors),
            "statistics": scene_statistics(train_maps)}  # fmt: skip
    write_json_atomic(meta_file, meta)
    rank_zero_info(f"scenes: made {setting.train_scenes} + {setting.test_scenes} scenes, "
                   f"cached in {data_file}")  # fmt: skip
    return tensors


def scene_statistics(maps: Tensor, num_classes: int = 11) -> dict[str, object]:
    """Share of pixels per label (0: background) and the mean number of labels per scene."""
    counts = torch.bincount(maps.flatten().long(), minlength=num_classes).double()
    present = torch.stack([torch.bincount(m.flatten().long(), minlength=num_classes) > 0
                           for m in maps]).sum(1).double()  # fmt: skip
    return {
        "pixel_share": [round(float(v), 4) for v in counts / counts.sum()],
        "labels_per_scene": round(float(present.mean()), 3),
    }
