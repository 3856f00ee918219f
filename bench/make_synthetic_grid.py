"""Draw docs/synthetic_grid.png: a few synthetic examples per class, to judge the generator by eye.

.venv/bin/python -m bench.make_synthetic_grid [--out docs/synthetic_grid.png] [--per-class 8] [--size 96]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cellnet.constants import PBC_CLASSES  # noqa: E402
from cellnet.data.synthetic import render  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "synthetic_grid.png")
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    k = args.per_class
    images = render(np.repeat(np.arange(len(PBC_CLASSES)), k), args.size, args.seed)
    fig, axes = plt.subplots(len(PBC_CLASSES), k, figsize=(k * 1.05 + 1.3, len(PBC_CLASSES) * 1.05), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.imshow(images[i], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if i % k == 0:
            ax.set_ylabel(PBC_CLASSES[i // k], rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(f"cellnet.data.synthetic: {k} examples per class at {args.size} px (seed {args.seed})", fontsize=10)
    fig.subplots_adjust(left=0.13, right=0.99, top=0.95, bottom=0.01, wspace=0.04, hspace=0.04)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=args.out.parent)  # atomic: never leave a half-written PNG
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
