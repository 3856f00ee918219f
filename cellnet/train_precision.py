"""`train.precision: auto` resolved: the precision a backbone trains faster in on this machine, measured once.

    training_precision(config, device, size) ─ fp32 / bf16 as given; auto: CUDA -> bf16 (as always); a CPU without
        bf16 (`cellnet.precision.cpu_has_bf16`) -> fp32; a CPU with bf16 -> probe(...).choice
    probe(backbone, size, batch size, threads) ─ cached per those four in this process and, with the CPU's name and
        torch's version, on this machine (PROBES_FILE) ─ measure: a warm-up step each way, then a few training steps
        of one random batch in fp32 and in bf16 autocast ─ Probe (images/s, choice)
    resolve_precisions(cfg, device, threads) ─ every backbone a search can train, one line each: search/run.py calls
        it before any trial runs, so every trial and the refit get the same answer (`ExperimentConfig.precisions`)

Why measure instead of a table: on a CPU with bf16 instructions (2 threads, batch 64, 96 px) resnet18 trained 1.64x
faster in bf16, EfficientNet-Lite0 not at all (104 images/s fp32, 97 bf16: its depthwise convolutions gain nothing),
and another CPU, size or thread count may answer differently. bf16 must win by BF16_MIN_SPEEDUP: a near tie is
timing noise, and then fp32 stays (decision 0014).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cellnet.config import ExperimentConfig, TrainConfig
from cellnet.constants import PBC_CLASSES
from cellnet.files import write_json
from cellnet.model import build_model
from cellnet.precision import AUTO, BF16, FP32, autocast, cpu_has_bf16
from cellnet.weights import cache_dir

STEPS, ROUNDS = 2, 2  # the probe: ROUNDS x STEPS timed training steps per precision, after a warm-up step each
PROBES_FILE = "precision-probes.json"  # under the weights' cache directory: one probe per machine, CPU and torch
BF16_MIN_SPEEDUP = 1.1  # bf16 is chosen only when it trains at least this much faster


@dataclass(frozen=True)
class Probe:
    """Training images/s of one backbone at one size, batch size and thread count, fp32 and bf16 autocast."""

    backbone: str
    size: int
    batch_size: int
    threads: int
    fp32: float
    bf16: float

    @property
    def choice(self) -> str:
        return BF16 if self.bf16 >= BF16_MIN_SPEEDUP * self.fp32 else FP32

    def describe(self) -> str:
        return (
            f"precision: {self.backbone} at {self.size} px, batch {self.batch_size}, {self.threads} thread(s): "
            f"{self.fp32:.0f} images/s fp32, {self.bf16:.0f} bf16 -> {self.choice} (train.precision: auto)"
        )


def measure(
    config: TrainConfig, size: int, *, threads: int, steps: int = STEPS, rounds: int = ROUNDS
) -> dict[str, list[float]]:
    """Training images/s on the CPU of `config`'s model (random weights; its head and batch size; AdamW) at `size`
    px with `threads` threads, per precision (fp32, bf16) and round: after a warm-up step in each precision, `rounds`
    rounds of `steps` steps each way, interleaved (a busy spell of the machine hits both). Leaves torch's random state
    and thread count as it found them."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            plain = dataclasses.replace(config, pretrained=False, weights_file=None, init_checkpoint=None)
            model = build_model(plain, len(PBC_CLASSES)).to(memory_format=torch.channels_last).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
            x = torch.randn(config.batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, len(PBC_CLASSES), (config.batch_size,))
            per_s: dict[str, list[float]] = {FP32: [], BF16: []}
            for precision in per_s:  # warm-up: oneDNN builds its kernels for each precision on first use
                _step(model, optimizer, x, y, precision)
            for _ in range(rounds):
                for precision, measured in per_s.items():
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        _step(model, optimizer, x, y, precision)
                    measured.append(steps * config.batch_size / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(before)
    return per_s


def _step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, precision: str
) -> None:
    """One training step as `cellnet.train.Trainer` takes it: the forward pass under autocast, the loss in float32."""
    with autocast(precision, "cpu"):
        loss = F.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


_PROBES: dict[tuple[str, int, int, int], Probe] = {}


def probe(backbone: str, size: int, batch_size: int, threads: int, say: Callable[[str], object] | None = None) -> Probe:
    """The `measure` of `backbone` at `size` px, `batch_size`, `threads` threads, its best round each way: once per
    process, and once per machine (`machine_probes`: the file under the weights' cache directory, keyed by the CPU
    and torch); `say` gets its one line, and where it came from the machine's file."""
    key = (backbone, int(size), int(batch_size), int(threads))
    if key in _PROBES:
        return _PROBES[key]
    saved, disk_key = machine_probes(), "|".join([cpu_name(), torch.__version__, *map(str, key)])
    found = saved.get(disk_key)
    if isinstance(found, dict) and {FP32, BF16} <= set(found):
        _PROBES[key] = Probe(*key, fp32=float(found[FP32]), bf16=float(found[BF16]))
        where = f" (measured on this machine before: {probes_file()})"
    else:
        per_s = measure(TrainConfig(backbone=backbone, batch_size=batch_size), size, threads=threads)
        _PROBES[key] = Probe(*key, fp32=max(per_s[FP32]), bf16=max(per_s[BF16]))  # the best round: least disturbed
        saved[disk_key] = {FP32: _PROBES[key].fp32, BF16: _PROBES[key].bf16}
        where = _save_probes(saved)
    if say is not None:
        say(_PROBES[key].describe() + where)
    return _PROBES[key]


def probes_file() -> Path:
    return cache_dir() / PROBES_FILE


def machine_probes() -> dict[str, Any]:
    """This machine's earlier probes ({} when none or unreadable: measured again)."""
    try:
        found = json.loads(probes_file().read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _save_probes(saved: dict[str, Any]) -> str:
    """Write the machine's probes (atomically); a cache that cannot be written costs only the next run's probe."""
    try:
        probes_file().parent.mkdir(parents=True, exist_ok=True)
        write_json(probes_file(), saved)
    except OSError as e:
        return f" (not cached: {e})"
    return ""


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else the platform's word for it): a probe holds for that CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def training_precision(
    config: TrainConfig,
    device: torch.device | str,
    size: int,
    *,
    threads: int | None = None,
    say: Callable[[str], object] | None = None,
) -> str:
    """The precision `config` trains in on `device` at `size` px (`input_size or image_size`): its `precision`
    when fp32 or bf16; for auto, bf16 on CUDA, fp32 on a CPU without bf16, else what `probe` measured faster (at
    `threads` threads, default torch's)."""
    if config.precision != AUTO:
        return config.precision
    kind = torch.device(device).type
    if kind == "cuda":
        return BF16
    if kind != "cpu" or not cpu_has_bf16():
        return FP32
    return probe(config.backbone, size, config.batch_size, threads or torch.get_num_threads(), say).choice


def resolve_precisions(
    cfg: ExperimentConfig, device: str, threads: int, say: Callable[[str], object] | None = print
) -> ExperimentConfig:
    """`cfg` with `precisions` filled: what `precision: auto` trains each of its backbones in on `device` with
    `threads` threads per fold, decided here once (search/run.py, before any trial runs)."""
    p = cfg.space.get("precision")
    if AUTO not in (set(p.values) if p is not None else {cfg.fixed_values().get("precision", AUTO)}):
        return cfg  # every trial's precision is given: nothing to decide
    resolved = {}
    for backbone in cfg.backbones():
        config = cfg.train_config({"backbone": backbone}, precision=AUTO)
        size = config.input_size or cfg.data.image_size
        resolved[backbone] = training_precision(config, device, size, threads=threads, say=say)
    return dataclasses.replace(cfg, precisions=resolved)
