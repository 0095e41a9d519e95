"""The benchmarks' command lines: where results go, and a missing extra."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from bench import results_dir

ROOT = Path(__file__).resolve().parents[1]


def test_results_go_to_an_untracked_place_unless_asked() -> None:
    """Runs write bench/results/local/ (git-ignored); --update-results the committed."""
    assert results_dir(False) == ROOT / "bench" / "results" / "local"
    assert results_dir(True) == ROOT / "bench" / "results"
    assert "bench/results/local/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is not None,
    reason="the bench extra is installed",
)
def test_soak_without_the_bench_extra_says_which_extra() -> None:
    """python -m bench.soak without matplotlib: one line naming the extra."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration-s", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    expected = (
        "python -m bench.soak needs the bench extra (matplotlib is missing): "
        ".venv/bin/pip install -e '.[bench]'"
    )
    assert proc.stderr.strip().splitlines() == [expected]
