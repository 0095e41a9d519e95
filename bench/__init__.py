"""Benchmarks of agentstream against the raw Redis limit: ``python -m bench``.

Every run starts its own throwaway ``redis-server`` on a free loopback port and
writes its results to ``bench/results/latest.json``. See the README's
"Performance" section for what is measured and the latest numbers.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["GROUP", "ROOT"]

#: The repository root: subprocesses run ``python -m bench.<module>`` from here.
ROOT = Path(__file__).resolve().parent.parent
#: The consumer group every case reads through (the worker's default).
GROUP = "agents"
