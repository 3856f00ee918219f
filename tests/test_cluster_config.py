"""cluster.yaml / cluster.local.yaml pass Ray's own config checks, and edits that would break a cluster do not.

`check_cluster_config` does what `ray up` does to a config before it calls the cloud (ray/autoscaler/_private/
commands.py `_bootstrap_config`): the JSON schema (ray-schema.json) and Ray's checks in `validate_config`, on the file
as written and after `prepare_config` (defaults merged, node types filled in). No cloud call: `bootstrap_aws` (key
pair, subnets, security group, IAM) needs AWS credentials and is exercised only by a real `ray up`.

Ray does not catch two edits; the helper adds them:
- a misspelled provider key (`regoin:`): the schema lets `provider` hold any key;
- `min_workers > max_workers` of one node type: Ray only checks the sum of min_workers against the global max_workers.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["cluster.yaml", "cluster.local.yaml"]
DOC = REPO / "docs" / "cluster.md"
STORAGE = "/mnt/shared"


def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def check_cluster_config(config: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """The config as `ray up` would hand it to the provider, or an error naming what is wrong."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler._private.util").setLevel(logging.WARNING)
    validate_config(copy.deepcopy(config))  # the file as written: schema (unknown keys, types, required provider)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    known = set(_ray_schema()["properties"]["provider"]["properties"])
    unknown = sorted(set(prepared["provider"]) - known)
    if unknown:
        raise ValueError(f"{where}: provider.{unknown[0]} is not a provider key Ray knows ({', '.join(sorted(known))})")
    for name, node_type in prepared["available_node_types"].items():
        lo, hi = node_type.get("min_workers", 0), node_type.get("max_workers", 0)
        if lo > hi:
            raise ValueError(f"{where}: available_node_types.{name}: min_workers={lo} > max_workers={hi}")
    return prepared


def load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / name).read_text()))


def start_commands(config: dict[str, Any]) -> list[str]:
    return [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_passes_rays_checks(name: str) -> None:
    prepared = check_cluster_config(load(name), name)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _worker(c: dict[str, Any]) -> dict[str, Any]:
    return dict(c["available_node_types"]["gpu_worker"])


BAD_EDITS: dict[str, tuple[str, Callable[[dict[str, Any]], None], str]] = {
    "misspelled top-level key": (
        "cluster.yaml",
        lambda c: c.update(idle_timeout_minute=c.pop("idle_timeout_minutes")),
        "idle_timeout_minute",
    ),
    "misspelled node-type key": (
        "cluster.yaml",
        lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=1),
        "min_worker",
    ),
    "misspelled provider key (our check)": (
        "cluster.yaml",
        lambda c: c["provider"].update(regoin="eu-west-1"),
        "regoin",
    ),
    "missing provider": ("cluster.yaml", lambda c: c.pop("provider"), "provider"),
    "min_workers > max_workers of a node type (our check)": (
        "cluster.yaml",
        lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=3, max_workers=2),
        "min_workers=3 > max_workers=2",
    ),
    "min_workers above the global max_workers": (
        "cluster.yaml",
        lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=c["max_workers"] + 1),
        "max_workers",
    ),
    "head_node_type not a node type": (
        "cluster.yaml",
        lambda c: c.update(head_node_type="head_node"),
        "head_node_type",
    ),
    "fractional resources": (
        "cluster.yaml",
        lambda c: c["available_node_types"]["gpu_worker"].update(resources={"CPU": 16, "GPU": 0.5}),
        "0.5",
    ),
    "node type without resources": (
        "cluster.yaml",
        lambda c: c["available_node_types"]["gpu_worker"].pop("resources"),
        "resources",
    ),
    "local: misspelled provider key (our check)": (
        "cluster.local.yaml",
        lambda c: c["provider"].update(worker_ip=c["provider"].pop("worker_ips")),
        "worker_ip",
    ),
    "local: missing provider": ("cluster.local.yaml", lambda c: c.pop("provider"), "provider"),
    "local: misspelled top-level key": (
        "cluster.local.yaml",
        lambda c: c.update(setup_command=c.pop("setup_commands")),
        "setup_command",
    ),
}


@pytest.mark.parametrize("case", list(BAD_EDITS))
def test_bad_edit_is_rejected(case: str) -> None:
    name, edit, expected = BAD_EDITS[case]
    config = load(name)
    edit(config)
    with pytest.raises(Exception) as info:  # noqa: B017 - Ray raises ValidationError, ValueError or ClickException
        check_cluster_config(config, name)
    assert expected in str(info.value)


def test_local_config_needs_head_and_worker_ips() -> None:
    config = load("cluster.local.yaml")
    del config["provider"]["head_ip"]
    with pytest.raises(Exception, match="head_ip"):  # noqa: B017 - Ray aborts with a click.ClickException
        check_cluster_config(config, "cluster.local.yaml")


def test_gpu_workers_autoscale_from_zero() -> None:
    config = load("cluster.yaml")
    prepared = check_cluster_config(config, "cluster.yaml")
    worker = _worker(prepared)
    assert config["provider"]["type"] == "aws"
    assert worker["min_workers"] == 0 < worker["max_workers"] <= prepared["max_workers"]
    assert worker["resources"]["GPU"] >= 1 and worker["resources"]["CPU"] >= 1
    assert prepared["available_node_types"]["head"]["resources"] == {"CPU": 0}  # folds never land on the head
    assert 0 < config["idle_timeout_minutes"] <= 30


@pytest.mark.parametrize("name", CONFIGS)
def test_no_port_open_to_the_world_and_token_auth_on(name: str) -> None:
    config = load(name)
    text = json.dumps(config)  # what Ray reads (comments may name what is avoided)
    assert "0.0.0.0" not in text and "::/0" not in text
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert all("RAY_AUTH_MODE=token" in c for c in start_commands(config))
    assert "RAY_AUTH_MODE=disabled" not in text
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # one token on every node
    if config["provider"]["type"] == "aws":
        # Ray's default security group opens SSH to 0.0.0.0/0; giving every node type our own group avoids it
        assert "security_group" not in config["provider"]
        for node_type in config["available_node_types"].values():
            assert node_type["node_config"]["SecurityGroupIds"]


@pytest.mark.parametrize("name", CONFIGS)
def test_setup_installs_this_checkout_with_the_local_ray_version(name: str) -> None:
    import ray

    config = load(name)
    assert config["file_mounts"]["~/cellnet"] == "."
    setup = " ".join(config["setup_commands"])
    assert 'pip install -q -e "$HOME/cellnet[search]"' in setup
    pins = set(re.findall(r"ray\[[a-z,]+\]==([0-9.]+)", setup))
    assert pins == {ray.__version__}, f"{name} pins Ray {pins}; the cluster must run the client's Ray {ray.__version__}"
    assert ".gitignore" in config["rsync_filter"]  # .venv/ and runs/ stay home


@pytest.mark.parametrize("name", CONFIGS)
def test_shared_storage_is_mounted_on_every_node(name: str) -> None:
    config = load(name)
    init = " ".join(config["initialization_commands"])  # runs on the head and on every worker
    assert f"mountpoint -q {STORAGE}" in init and "mount -t nfs4" in init
    assert f"--storage {STORAGE}/runs/" in DOC.read_text()
    # only the search's account may write the run directories (Tune's state there is unpickled on --resume)
    assert f"chmod 700 {STORAGE}/runs" in init
    assert "Write access to the shared storage is code execution" in DOC.read_text()


# ---------------------------------------------------------------------------------------------------------------
# docs/cluster.md: every command it shows exists, with the flags it uses


def doc_commands(doc: Path = DOC) -> list[list[str]]:
    """The `ray ...` and `python -m search.run ...` command lines of the doc's shell blocks (continuations joined)."""
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", doc.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line)
            while words and "=" in words[0] and not words[0].startswith("-"):  # leading VAR=value
                words = words[1:]
            for start, word in enumerate(words):
                if word == "ray" or (word == "python" and words[start + 1 : start + 3] == ["-m", "search.run"]):
                    commands.append(words[start:])
                    break
    return commands


def _split_entrypoint(words: list[str]) -> tuple[list[str], list[str]]:
    if "--" in words:
        i = words.index("--")
        return words[:i], words[i + 1 :]
    return words, []


def check_ray_command(words: list[str]) -> None:
    import click
    from ray.scripts.scripts import cli

    command: click.Command = cli
    args = words[1:]
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        sub = command.get_command(click.Context(command), args[0])
        assert sub is not None, f"`{' '.join(words)}`: ray has no command {args[0]!r}"
        command, args = sub, args[1:]
    options = {opt for p in command.params for opt in [*p.opts, *p.secondary_opts]}
    for arg in _split_entrypoint(args)[0]:
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            assert flag in options, f"`{' '.join(words)}`: {flag} is not an option of ray {command.name}"


def check_search_command(words: list[str]) -> None:
    from search.run import build_parser

    parser = build_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    for arg in words[3:]:
        if arg.startswith("-"):
            assert arg.split("=", 1)[0] in flags, f"`{' '.join(words)}`: search.run has no {arg}"


@pytest.mark.parametrize("doc", [DOC, REPO / "README.md"], ids=["cluster.md", "README"])
def test_doc_commands_exist(doc: Path) -> None:
    commands = doc_commands(doc)
    shown = {" ".join(c[:3]) for c in commands}
    for needed in ["ray up cluster.yaml", "ray job submit", "ray dashboard cluster.yaml", "ray down cluster.yaml"]:
        assert any(s.startswith(needed) for s in shown), f"{doc.name} shows no `{needed}`"
    for words in commands:
        if words[0] == "ray":
            check_ray_command(words)
            _, entry = _split_entrypoint(words)
            if entry[:3] == ["python", "-m", "search.run"]:
                check_search_command(entry)
            for remote in (w for w in words if "python -m search.run" in w):  # ray exec cluster.yaml "... search.run"
                inner = shlex.split(remote)
                check_search_command(inner[inner.index("python") :])
        else:
            check_search_command(words)
