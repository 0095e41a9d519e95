"""A time-boxed atheris (libFuzzer) run over ``decode_event``; see atheris_decode.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuzz

FUZZER = Path(__file__).with_name("atheris_decode.py")
RUNS = 50_000


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (it has wheels for x86-64 Linux only)",
)
def test_atheris_finds_no_crash_in_decode_event(tmp_path: Path) -> None:
    """50,000 coverage-guided inputs (fixed seed, capped at 60 s) never make decode_event raise or lie."""
    argv = [
        sys.executable,
        str(FUZZER),
        f"-runs={RUNS}",
        "-seed=1",
        "-max_len=2048",
        "-max_total_time=60",
        f"-artifact_prefix={tmp_path}/",
    ]
    proc = subprocess.run(
        argv,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = proc.stdout + proc.stderr
    tail = "\n".join(output.splitlines()[-40:])
    assert proc.returncode == 0, tail
    assert f"Done {RUNS} runs" in output, tail
    assert not list(tmp_path.glob("crash-*")), tail
