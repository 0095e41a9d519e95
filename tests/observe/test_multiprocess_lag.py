"""An unknown lag in one process of several is not exported as its last number.

A process of a multi-process parent writes its metrics to value files that the
parent reads; a series cannot be removed from them. The lag series must still
vanish next to ``lag_unknown 1``, as it does with one process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agentstream.observe.metrics import (
    MULTIPROC_ENV,
    CollectorRegistry,
    GroupStats,
    Metrics,
    multiprocess_registry,
)

CHILD = """
import sys
from agentstream.observe.metrics import GroupStats, Metrics, CollectorRegistry
metrics = Metrics(CollectorRegistry())
for lag in sys.argv[1:]:
    stats = GroupStats(10, None if lag == "none" else int(lag), 1, 0.5, 2, 0)
    metrics.record_group_stats("s", "g", stats)
"""

LABELS = {"stream": "s", "group": "g"}


def run_child(directory: Path, *lags: str) -> None:
    env = {MULTIPROC_ENV: str(directory), "PATH": ""}
    subprocess.run([sys.executable, "-c", CHILD, *lags], env=env, check=True)


def lag_samples(registry: CollectorRegistry) -> tuple[float | None, float | None]:
    return (
        registry.get_sample_value("agentstream_group_lag", LABELS),
        registry.get_sample_value("agentstream_group_lag_unknown", LABELS),
    )


def test_one_process_removes_the_lag_series() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.record_group_stats("s", "g", GroupStats(10, 4, 1, 0.5, 2, 0))
    metrics.record_group_stats("s", "g", GroupStats(10, None, 1, 0.5, 2, 0))
    assert lag_samples(registry) == (None, 1)


def test_a_child_process_lag_turned_unknown_is_not_kept_by_the_parent(
    tmp_path: Path,
) -> None:
    run_child(tmp_path, "4", "none")
    registry = multiprocess_registry(str(tmp_path))
    assert lag_samples(registry) == (None, 1)


def test_a_known_lag_after_an_unknown_one_is_exported_again(tmp_path: Path) -> None:
    run_child(tmp_path, "none")
    run_child(tmp_path, "7")
    assert lag_samples(multiprocess_registry(str(tmp_path))) == (7, 0)
