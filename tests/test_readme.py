"""The README's commands exist: every `make` target, `cellnet` subcommand and flag, and `search.retrain` flag it shows.

(`ray` and `python -m search.run` lines are checked against Ray's CLI and our parser in test_cluster_config.py.)
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def shell_lines() -> list[list[str]]:
    """Words of every command line in the README's bash blocks (continuations joined, comments dropped)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(shlex.split(line))
    return lines


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def used_flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("-") and not w.startswith("---")]


def test_make_targets_exist() -> None:
    targets = set(re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    shown = {w[1] for w in shell_lines() if w[0] == "make"}
    shown |= set(re.findall(r"`make ([a-z-]+)`", README.read_text()))
    assert {"demo", "test"} <= shown
    assert shown <= targets, f"README shows make targets the Makefile lacks: {shown - targets}"


def test_cellnet_commands_and_flags_exist() -> None:
    from cellnet.cli import build_parser

    commands = subparsers(build_parser())
    shown = [w[w.index(c) + 1 :] for w in shell_lines() for c in w if c.endswith("cellnet") and c != w[-1]]
    assert {w[0] for w in shown} >= {"train", "predict", "evaluate", "export", "clean"}
    for words in shown:
        assert words[0] in commands, f"README: cellnet has no command {words[0]!r}"
        missing = set(used_flags(words[1:])) - flags_of(commands[words[0]])
        assert not missing, f"README: `cellnet {words[0]}` has no {missing}"


def test_retrain_flags_exist() -> None:
    from search.retrain import build_parser

    lines = [w for w in shell_lines() if "search.retrain" in w]
    assert lines
    for words in lines:
        missing = set(used_flags(words[words.index("search.retrain") + 1 :])) - flags_of(build_parser())
        assert not missing, f"README: search.retrain has no {missing}"
