"""A real multi-node Ray cluster on this machine: the search spreads folds over nodes and survives losing one.

Each node is a `ray start` of its own (own --temp-dir, own ports, token authentication on, as on a real cluster),
and the search is a separate driver (`python -m search.run --address ...`), exactly as `ray job submit` runs it on
a cloud cluster. Nothing here touches an in-process Ray: every Ray process runs in a subprocess that carries a
marker in its environment, and teardown SIGKILLs exactly the processes with this test's marker (never `ray stop`,
which would stop every Ray on the machine, including other tests' clusters).

Runtime: two small searches (2 trials, 2 folds, test_resnet at 32 px) plus cluster start-up; Ray start-up and the
Ray Train worker groups' start-up dominate. Measured on the 2-core dev machine: ~4 min for both tests when it was
quiet, ~8 min while other jobs kept it at load 20+.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
MARKER = "CELLNET_TEST_CLUSTER"  # every process of one test cluster has MARKER=<its id> in its environment
NODE = "CELLNET_TEST_NODE"  # ... and NODE=<node name>, so one node's processes can be killed alone

# Node loss noticed in ~3 s instead of ~30 s (names checked against ray_config_def in Ray 2.60's binaries).
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}

SPACE = """\
name: multinode
data: {{source: "synthetic:160", image_size: 32, clean: false}}
cv: {{folds: 2, seed: 0}}
train: {{batch_size: 32, warmup_epochs: 0, device: cpu}}
search:
  metric: cv_accuracy
  mode: max
  num_samples: 2
  max_epochs: {max_epochs}
  searcher: tpe
  scheduler: fifo
  seed: 0
  checkpoint_every: 1
resources: {{cpus_per_fold: 1, gpus_per_fold: 0}}
retrain: {{epochs: best}}
space:
  backbone: test_resnet
  lr: {{loguniform: [1.0e-3, 1.0e-2]}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def marked_pids(cluster_id: str, node: str | None = None) -> list[int]:
    """Pids of live processes started for this test cluster (optionally: one node of it), found by environment."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if f"{MARKER}={cluster_id}".encode() not in env:
            continue
        if node is None or f"{NODE}={node}".encode() in env:
            pids.append(int(proc.name))
    return pids


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class LocalCluster:
    """Ray nodes on this machine, each a `ray start` with its own temp dir and ports, sharing one auth token."""

    def __init__(self) -> None:
        # short: Ray's unix socket paths live under --temp-dir and must stay under ~107 characters
        self.root = Path(tempfile.mkdtemp(prefix="cn-ray-"))
        self.id = secrets.token_hex(8)
        self.token_file = self.root / "auth_token"
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)
        self.port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.node_ids: dict[str, str] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(
            FAST_HEALTH_CHECKS,
            RAY_AUTH_MODE="token",  # explicit: `ray start --head` only turns auth on by itself if a token exists
            RAY_AUTH_TOKEN_PATH=str(self.token_file),  # the supported way to share a token (not ~/.ray)
            RAY_USAGE_STATS_ENABLED="0",
            CELLNET_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        self.env[MARKER] = self.id

    def _start(self, name: str, args: list[str]) -> None:
        temp = self.root / name
        cmd = [RAY, "start", f"--temp-dir={temp}", f"--dashboard-agent-listen-port={free_port()}", *args]
        env = {**self.env, NODE: name}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"ray start {name} failed:\n{done.stdout}\n{done.stderr}"
        self.node_ids[name] = node_id_of(temp)

    def start_head(self, num_cpus: int) -> None:
        self._start(
            "head",
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",  # as in cluster.yaml: reached through a port-forward only
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
                "--disable-usage-stats",
            ],
        )

    def add_node(self, name: str, num_cpus: int) -> None:
        self._start(
            name,
            [
                f"--address={self.address}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                "--disable-usage-stats",
            ],
        )

    def lose_node(self, name: str) -> int:
        """SIGKILL every process of one node (raylet, agents, workers): a machine that vanished, not a clean stop."""
        pids = marked_pids(self.id, name)
        kill_all(pids)
        return len(pids)

    def teardown(self) -> None:
        for _ in range(5):  # workers forked while we kill get another pass
            pids = marked_pids(self.id)
            if not pids:
                break
            kill_all(pids)
            time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)

    def search(self, space: Path, storage: Path, *extra: str) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "search.run", str(space), "--address", self.address, "--storage", str(storage)]
        log = open(storage.parent / f"{storage.name}.log", "w")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            [*cmd, *extra], cwd=REPO, env={**self.env, NODE: "driver"}, stdout=log, stderr=subprocess.STDOUT, text=True
        )


def node_id_of(temp_dir: Path) -> str:
    """The node id Ray gave the node started with this --temp-dir (it names per-node port files after it)."""
    session = temp_dir / "session_latest"
    for _ in range(100):
        ids = {p.name.rsplit("_", 1)[1] for p in session.glob("*_port_*")}
        if len(ids) == 1:
            return ids.pop()
        time.sleep(0.2)
    raise AssertionError(f"no node id under {session}")


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster()
    try:
        yield c
    finally:
        c.teardown()
    assert not marked_pids(c.id), "teardown left Ray processes behind"


def write_space(tmp_path: Path, max_epochs: int) -> Path:
    path = tmp_path / "multinode.yaml"
    path.write_text(SPACE.format(max_epochs=max_epochs))
    return path


def wait(proc: subprocess.Popen[str], storage: Path, timeout: float = 480) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (storage.parent / f"{storage.name}.log").read_text()
    assert proc.returncode == 0, f"search failed (exit {proc.returncode}):\n{log[-6000:]}"
    return log


def epoch_rows(storage: Path) -> pd.DataFrame:
    """Every result Tune recorded (one row per reported epoch, restarts included), in the order reported."""
    rows = []
    for path in sorted((storage / "tune").glob("*/result.json")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            rows.append({"trial_id": r["trial_id"], "epoch": r["epoch"], "nodes": tuple(r["node_ids"].split(","))})
    return pd.DataFrame(rows)


def dashboard_status(port: int, token: str | None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/jobs/")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_search_spreads_folds_over_nodes(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster.start_head(num_cpus=2)
    cluster.add_node("worker", num_cpus=2)
    # token auth is on: the Jobs API (what `ray job submit` talks to) refuses requests without the token
    token = cluster.token_file.read_text()
    assert dashboard_status(cluster.dashboard_port, None) == 401
    assert dashboard_status(cluster.dashboard_port, "not-the-token") == 403
    assert dashboard_status(cluster.dashboard_port, token) == 200

    storage = tmp_path / "run"
    proc = cluster.search(write_space(tmp_path, max_epochs=2), storage, "--max-concurrent", "2")
    wait(proc, storage)

    trials = pd.read_csv(storage / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == 2 and (trials["status"] == "completed").all()
    nodes_of = {t: set(str(n).split(",")) for t, n in zip(trials["trial_id"], trials["node_ids"])}
    known = set(cluster.node_ids.values())
    assert all(len(n) == 2 and n <= known for n in nodes_of.values()), (nodes_of, cluster.node_ids)
    # SPREAD: a trial's two folds ran on two different nodes, so the search used the head and the worker
    assert set().union(*nodes_of.values()) == known
    summary = json.loads((storage / "summary.json").read_text())
    assert summary["best"]["trial_id"] in nodes_of
    from cellnet.checkpoint import load_checkpoint

    best = load_checkpoint(storage / "best")
    assert best.classes and best.image_size == 32


def test_search_survives_losing_a_worker_node(cluster: LocalCluster, tmp_path: Path) -> None:
    # head big enough to take every fold once the worker is gone; SPREAD still puts one fold of each trial there
    cluster.start_head(num_cpus=4)
    cluster.add_node("worker", num_cpus=2)
    worker_id = cluster.node_ids["worker"]

    storage = tmp_path / "run"
    proc = cluster.search(write_space(tmp_path, max_epochs=5), storage, "--max-concurrent", "2", "--no-retrain")
    try:
        deadline = time.monotonic() + 420
        # Lose the worker as soon as a trial has a checkpoint that Ray Train has registered (its controller writes
        # checkpoint_manager_snapshot.json then; a checkpoint directory alone may be one the controller never
        # took in, and a restart would not use it). SPREAD has put one of the trial's two folds on the worker, the
        # only other node.
        while not any((storage / "train").glob("*/checkpoint_manager_snapshot.json")):
            assert proc.poll() is None, (storage.parent / f"{storage.name}.log").read_text()[-6000:]
            assert time.monotonic() < deadline, "no trial ever registered a checkpoint"
            time.sleep(0.2)
        assert cluster.lose_node("worker") > 0
    except BaseException:
        proc.kill()
        raise
    wait(proc, storage)

    trials = pd.read_csv(storage / "trials.csv", dtype={"trial_id": str})
    assert len(trials) == 2 and (trials["status"] == "completed").all(), trials[["trial_id", "status", "error"]]
    assert (trials["epochs"] == 5).all()
    rows = epoch_rows(storage)
    resumed = []
    for trial_id, h in rows.groupby("trial_id", sort=False):
        lost_at = [i for i, n in enumerate(h["nodes"]) if worker_id in n]
        after = h.iloc[lost_at[-1] + 1 :] if lost_at else h.iloc[0:0]
        if lost_at and len(after):
            # the restarted worker group ran on the surviving node only, and went on from the checkpoint
            assert all(worker_id not in n for n in after["nodes"])
            assert int(after["epoch"].iloc[0]) > 1
            resumed.append(trial_id)
        assert int(h["epoch"].iloc[-1]) == 5
    assert resumed, rows
