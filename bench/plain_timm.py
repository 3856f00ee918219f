"""The hand-written baseline the search must beat: a plain timm script, no cellnet training code.

resnet18 from scratch, AdamW (lr 1e-3, weight decay 0.05), one-cycle LR, random flips, batch 64, cross-entropy; trains
on an npz (images N×S×S×3 uint8, labels) and is scored once on a test npz. `--budget-s W` gives it as many epochs as
fit in W seconds of wall time: it times a few batches first (counted in W) and sizes the one-cycle schedule to the
epochs left.

    python -m bench.plain_timm --train train.npz --test test.npz (--epochs 12 | --budget-s 600) [--json out.json]
"""

from __future__ import annotations

import json
import time

import numpy as np
import timm
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

from bench.common import bench_parser, dump_json

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def batches(x: torch.Tensor, y: torch.Tensor, size: int, shuffle: bool, g: torch.Generator):
    order = torch.randperm(len(x), generator=g) if shuffle else torch.arange(len(x))
    for i in range(0, len(x) - (size - 1 if shuffle else 0), size):  # drop the last partial batch when training
        idx = order[i : i + size]
        yield (x[idx].permute(0, 3, 1, 2).float() - MEAN) / STD, y[idx]


def flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    h = torch.rand(len(x), generator=g) < 0.5
    v = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(h.view(-1, 1, 1, 1), x.flip(3), x)
    return torch.where(v.view(-1, 1, 1, 1), x.flip(2), x)


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__, quick_help=None, json_help="also write the result here")
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--epochs", type=int)
    p.add_argument("--budget-s", type=float, help="wall-time budget; epochs = as many as fit")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    tr, te = np.load(args.train), np.load(args.test)
    x, y = torch.from_numpy(tr["images"]), torch.from_numpy(tr["labels"].reshape(-1).astype(np.int64))
    classes = int(max(y.max().item(), te["labels"].max()) + 1)
    model = timm.create_model(args.model, pretrained=False, num_classes=classes)
    steps_per_epoch = len(x) // 64

    epochs = args.epochs
    if epochs is None:  # time 8 training steps on a throw-away copy, then fill the budget
        probe = timm.create_model(args.model, pretrained=False, num_classes=classes)
        popt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.05)
        t0, n = time.perf_counter(), 0
        for xb, yb in batches(x, y, 64, True, g):
            popt.zero_grad()
            F.cross_entropy(probe(flip(xb, g)), yb).backward()
            popt.step()
            n += 1
            if n == 8:
                break
        per_epoch = (time.perf_counter() - t0) / n * steps_per_epoch
        epochs = max(1, int((args.budget_s - (time.perf_counter() - start)) / per_epoch))
        del probe, popt

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        for xb, yb in batches(x, y, 64, True, g):
            opt.zero_grad()
            F.cross_entropy(model(flip(xb, g)), yb).backward()
            opt.step()
            sched.step()
    model.eval()
    xt, yt = torch.from_numpy(te["images"]), torch.from_numpy(te["labels"].reshape(-1).astype(np.int64))
    with torch.inference_mode():
        pred = torch.cat([model(xb).argmax(1) for xb, _ in batches(xt, yt, 256, False, g)]).numpy()
    result = {
        "model": args.model,
        "epochs": epochs,
        "accuracy": float(accuracy_score(yt.numpy(), pred)),
        "macro_f1": float(f1_score(yt.numpy(), pred, average="macro")),
        "wall_s": time.perf_counter() - start,
        "n_train": len(x),
        "n_test": len(xt),
    }
    print(json.dumps(result))
    dump_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
