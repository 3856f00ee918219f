"""How a search uses the cluster: what each trial's pieces ask for and how many trials run at once.

A trial is three kinds of Ray processes:
- the Tune trial driver (our function trainable): CPU 0, pinned to the head node by a tiny share of the
  `node:__internal_head__` resource (Tune needs a non-empty request; pinning keeps it alive as long as the search
  driver, so Tune-level retries are never needed, see trainable.py);
- the Ray Train V2 controller actor: `num_cpus=0`, on the node of the trial driver (ray/train/v2/api/
  data_parallel_trainer.py);
- k fold workers (k = cv.folds), each `cpus_per_fold` CPUs (may be fractional) and `gpus_per_fold` GPUs, SPREAD.

Only the fold workers hold resources, so `max_concurrent = floor(cluster CPUs / (k * cpus_per_fold))` (and the same
for GPUs) trials can always all start: no trial driver ever waits for workers that others' drivers crowd out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from cellnet.config import ExperimentConfig
from cellnet.errors import ConfigError

HEAD_RESOURCE = "node:__internal_head__"
DRIVER_RESOURCES: dict[str, float] = {"CPU": 0, HEAD_RESOURCE: 0.001}
_EPS = 1e-9


@dataclass(frozen=True)
class Cluster:
    """Per-node totals of what the search may use (alive nodes)."""

    nodes: tuple[dict[str, float], ...]
    source: str  # "ray" (a running cluster) or "local machine (Ray not started)"

    @property
    def cpus(self) -> float:
        return sum(n.get("CPU", 0.0) for n in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(n.get("GPU", 0.0) for n in self.nodes)


@dataclass(frozen=True)
class ResourcePlan:
    folds: int
    cpus_per_fold: float
    gpus_per_fold: float
    threads_per_fold: int
    max_concurrent: int
    cluster: Cluster
    driver: dict[str, float] = field(default_factory=lambda: dict(DRIVER_RESOURCES))
    notes: tuple[str, ...] = ()

    @property
    def worker_resources(self) -> dict[str, float]:
        out = {"CPU": self.cpus_per_fold}
        if self.gpus_per_fold > 0:
            out["GPU"] = self.gpus_per_fold
        return out

    def describe(self) -> list[str]:
        c = self.cluster
        lines = [
            f"  cluster          {len(c.nodes)} node(s), {c.cpus:g} CPU, {c.gpus:g} GPU ({c.source})",
            f"  trial driver     {self.driver} (Tune function; the Ray Train controller asks for 0 CPU)",
            f"  fold worker      {self.worker_resources} x {self.folds} folds, SPREAD, "
            f"{self.threads_per_fold} thread(s)",
            f"  concurrent       {self.max_concurrent} trial(s) at once",
        ]
        lines += [f"  note             {n}" for n in self.notes]
        return lines


def local_cluster() -> Cluster:
    """This machine, without starting Ray (for --dry-run)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = 0
    try:
        import torch  # ~1.5 s, only to count this machine's GPUs for a plan made before Ray starts

        gpus = torch.cuda.device_count()
    except Exception:  # pragma: no cover - torch is a dependency; a broken CUDA setup just means no GPUs
        gpus = 0
    return Cluster(({"CPU": float(cpus), "GPU": float(gpus)},), "local machine, Ray not started")


def ray_cluster() -> Cluster:
    """The alive nodes of the connected Ray cluster."""
    import ray  # the search extra: search.run imports this module before it checks the extra is installed

    nodes = tuple(
        {k: float(v) for k, v in n["Resources"].items() if k in ("CPU", "GPU")} for n in ray.nodes() if n.get("Alive")
    )
    return Cluster(nodes, "ray")


def plan(cfg: ExperimentConfig, cluster: Cluster, *, autoscaling: bool = False, strict: bool = True) -> ResourcePlan:
    """The resource plan, or a ConfigError naming the key when a fold or a trial can never be placed.

    strict=False (--dry-run, which may describe a run meant for another cluster): the problem becomes a note.
    """
    if not strict:
        try:
            return plan(cfg, cluster, autoscaling=autoscaling)
        except ConfigError as e:
            lenient = plan(cfg, cluster, autoscaling=True)
            msg = str(e).removeprefix(f"{cfg.path}: ")
            return dataclasses.replace(lenient, notes=(*lenient.notes, f"NOT runnable here: {msg}"))
    r, k, where = cfg.resources, cfg.cv.folds, cfg.path
    cpf, gpf = float(r.cpus_per_fold), float(r.gpus_per_fold)
    max_cpu = max((n.get("CPU", 0.0) for n in cluster.nodes), default=0.0)
    max_gpu = max((n.get("GPU", 0.0) for n in cluster.nodes), default=0.0)
    if gpf > 1 and not float(gpf).is_integer():
        raise ConfigError(f"{where}: resources.gpus_per_fold must be <= 1 or a whole number, got {gpf:g}")
    notes: list[str] = []
    if not autoscaling:
        if cpf > max_cpu + _EPS:
            raise ConfigError(
                f"{where}: resources.cpus_per_fold={cpf:g} but the largest node has {max_cpu:g} CPUs ({cluster.source})"
            )
        if gpf > max_gpu + _EPS:
            raise ConfigError(
                f"{where}: resources.gpus_per_fold={gpf:g} but the largest node has {max_gpu:g} GPUs "
                f"({cluster.source}); set gpus_per_fold: 0 to train on CPU"
            )
    fits = [math.floor(cluster.cpus / (k * cpf) + _EPS)]
    if gpf > 0:
        fits.append(math.floor(cluster.gpus / (k * gpf) + _EPS) if cluster.gpus > 0 else 0)
    fit = min(fits)
    if fit < 1 and not autoscaling and r.max_concurrent is None:
        need = f"{k} folds x {cpf:g} CPU" + (f" and {k} x {gpf:g} GPU" if gpf > 0 else "")
        raise ConfigError(
            f"{where}: one trial needs {need} but the cluster has {cluster.cpus:g} CPU / {cluster.gpus:g} GPU "
            f"({cluster.source}); lower resources.cpus_per_fold / gpus_per_fold or cv.folds"
        )
    if r.max_concurrent is not None:
        concurrent = r.max_concurrent
        if fit >= 1 and r.max_concurrent > fit:
            notes.append(
                f"max_concurrent={r.max_concurrent} > {fit} that fit now: the rest wait for (autoscaled) nodes"
            )
    else:
        concurrent = max(1, fit)
    threads = max(1, math.ceil(cpf - _EPS))
    return ResourcePlan(k, cpf, gpf, threads, concurrent, cluster, notes=tuple(notes))


def storage_probe(run_dir: str) -> None:
    """Check that every alive node can write and read `run_dir` (a shared filesystem on a cluster).

    One zero-CPU task per node writes a probe file and reads it back; the driver then reads every node's probe, so a
    node-local path that merely exists everywhere is caught too. ConfigError names the node that cannot.
    """
    import ray  # the search extra, as in ray_cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def probe(path: str, node: str) -> str | None:
        target = os.path.join(path, f".probe-{node}")
        try:
            os.makedirs(path, exist_ok=True)
            with open(target, "w") as f:
                f.write(node)
            with open(target) as f:
                return None if f.read() == node else "read back different content"
        except OSError as e:
            return str(e)

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {
        n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            run_dir, n["NodeID"]
        )
        for n in nodes
    }
    ips = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes}
    problems = []
    for node, ref in refs.items():
        err = ray.get(ref)
        probe_file = os.path.join(run_dir, f".probe-{node}")
        if err is None and not os.path.isfile(probe_file):
            err = "its file is not visible from the driver (not a shared filesystem?)"
        if err is not None:
            problems.append(f"node {node[:12]} ({ips[node]}): {err}")
        with contextlib.suppress(OSError):
            os.remove(probe_file)
    if problems:
        raise ConfigError(
            f"--storage {run_dir} must be a directory every node can write (a shared filesystem on a cluster); "
            + "; ".join(problems)
        )


def summary(p: ResourcePlan) -> dict[str, Any]:
    """The plan as plain data (for search_config / summary provenance)."""
    return {
        "folds": p.folds,
        "cpus_per_fold": p.cpus_per_fold,
        "gpus_per_fold": p.gpus_per_fold,
        "threads_per_fold": p.threads_per_fold,
        "max_concurrent": p.max_concurrent,
        "cluster_cpus": p.cluster.cpus,
        "cluster_gpus": p.cluster.gpus,
        "nodes": len(p.cluster.nodes),
    }
