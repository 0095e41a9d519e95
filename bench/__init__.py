"""Benchmarks of agentstream against the raw Redis limit: ``python -m bench``.

Every run starts its own throwaway ``redis-server`` on a free loopback port and
writes its results to ``bench/results/local/`` (not tracked by git), or with
``--update-results`` to the committed ``bench/results/``. See the README's
"Performance" section for what is measured and the latest numbers.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["GROUP", "ROOT", "results_dir"]

#: The repository root: subprocesses run ``python -m bench.<module>`` from here.
ROOT = Path(__file__).resolve().parent.parent
#: The consumer group every case reads through (the worker's default).
GROUP = "agents"


def results_dir(update_results: bool) -> Path:
    """Where results go: the committed ``bench/results/`` only when asked."""
    committed = ROOT / "bench" / "results"
    return committed if update_results else committed / "local"
