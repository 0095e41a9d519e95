"""The README's commands run as written (those that need no network but Redis)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text("utf-8")
BIN = Path(sys.executable).parent


def console_commands() -> list[str]:
    """Every command line of the README's ```console blocks (``$ `` stripped)."""
    commands = []
    for block in re.findall(r"```console\n(.*?)```", README, re.DOTALL):
        lines = block.splitlines()
        prompted = any(line.startswith("$ ") for line in lines)
        for line in lines:
            if prompted and not line.startswith("$ "):
                continue  # sample output
            command = line.removeprefix("$ ").split("  #")[0].strip()
            if command:
                commands.append(command)
    return commands


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # a continued line ("... \\"): not a whole command
        return []


def _offline(command: str) -> bool:
    words = _words(command)
    if not words or words[0] not in ("agentstream", "agentstream-worker"):
        return False
    if "--help" in words or "--check" in words:
        return "/etc/" not in command
    return any(w in ("stats", "list") for w in words)


OFFLINE = [c for c in console_commands() if _offline(c)]


def test_the_readme_has_offline_commands() -> None:
    """The extraction finds the stats, dlq list and --check commands."""
    joined = "\n".join(OFFLINE)
    for part in ("stats", "dlq list", "--check"):
        assert part in joined, OFFLINE


def test_commands_use_files_that_exist() -> None:
    """Every --config of a command a newcomer runs names a file in the clone."""
    for command in OFFLINE:
        words = _words(command)
        if "--config" in words:
            path = words[words.index("--config") + 1]
            assert (ROOT / path).is_file(), command


@pytest.mark.redis
@pytest.mark.parametrize("command", OFFLINE)
def test_command_runs_as_written(command: str, fresh_redis: RedisServer) -> None:
    """After the quick start (venv active, AGENTSTREAM_REDIS__URL exported)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env["AGENTSTREAM_REDIS__URL"] = fresh_redis.url
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # source .venv/bin/activate
    if "AGENTSTREAM_REDIS__URL=" in command:
        pytest.skip("points at another Redis on purpose")
    proc = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
