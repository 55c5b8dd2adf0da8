"""Draw a few FashionScenes training scenes beside their label maps (docs/segmentation.md's
picture): python scripts/plot_scenes.py [OUT.png] — made from the configs/seg_fashion.yaml
setting (found offline, cached under ./data like a run's)."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from smallbatch.data import FashionScenes  # noqa: E402

CLASSES = ["background", "T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
           "sneaker", "bag", "ankle boot"]  # fmt: skip


def main(out: str = "docs/figures/fashion_scenes.png", count: int = 6) -> None:
    scenes = FashionScenes().scenes()
    images, maps = scenes["train_images"][:count], scenes["train_maps"][:count]
    colors = ListedColormap(["black", *plt.get_cmap("tab10").colors])
    fig, axes = plt.subplots(2, count, figsize=(2 * count, 4.4), dpi=100)
    for i in range(count):
        axes[0, i].imshow(images[i, 0], cmap="gray", vmin=0, vmax=255)
        axes[1, i].imshow(maps[i], cmap=colors, vmin=0, vmax=10, interpolation="nearest")
        labels = sorted(set(maps[i].unique().tolist()) - {0})
        axes[1, i].set_title(", ".join(CLASSES[k] for k in labels), fontsize=7)
        for ax in axes[:, i]:
            ax.set_axis_off()
    fig.suptitle("FashionScenes (96×96, seed 0): training scenes and their label maps")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
