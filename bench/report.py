"""Tables for the terminal, targets, machine info and the JSON results file."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentstream import __version__
from bench import ROOT
from bench.cpu import ROLES
from bench.delay import DelayResult
from bench.memory import MemoryResult
from bench.reaper_cost import ReaperResult
from bench.throughput import IO_CONCURRENCY, IO_WAIT_S, P1, P2, CaseResult, io_case

__all__ = ["Results", "machine_info", "table", "write_json"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def machine_info(redis_version: str) -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis_server": redis_version,
        "agentstream": __version__,
        "git": _git_revision(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        # Other work on the machine skews the numbers: this tells if there was any.
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, its columns padded (right-aligned but the first)."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    dashes = [
        "-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    ]
    rule = "|" + "|".join(dashes) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


@dataclass(slots=True)
class Results:
    """What one run measured; sections that did not run stay empty."""

    throughput: list[CaseResult] = field(default_factory=list)
    delays: list[DelayResult] = field(default_factory=list)
    memory: MemoryResult | None = None
    reaper: list[ReaperResult] = field(default_factory=list)

    def tables(self) -> str:
        parts = [
            _throughput_table(self.throughput),
            _delay_table(self.delays),
            _memory_table(self.memory),
            _reaper_table(self.reaper),
        ]
        checks = self.targets()
        if checks:
            rows = [
                [t["target"], f"{t['value']:g}", "yes" if t["met"] else "NO"]
                for t in checks
            ]
            parts.append(table(["target", "measured", "met"], rows))
        return "\n\n".join(p for p in parts if p)

    def targets(self) -> list[dict[str, Any]]:
        """Each target with the measured value and whether it is met."""
        out: list[dict[str, Any]] = []
        by_case = {r.case: r.median for r in self.throughput}
        raw, p1, p2 = (by_case.get(k) for k in ("raw", P1, P2))
        if raw and p1:
            out.append(_target("processes=1 >= 90% of raw", p1 / raw, p1 / raw >= 0.9))
        if p1 and p2:
            out.append(
                _target("processes=2 >= 1.7x processes=1", p2 / p1, p2 / p1 >= 1.7)
            )
        if raw and p1:
            out.append(
                _target("no-op p=1 c=1 >= 0.64 of raw", p1 / raw, p1 / raw >= 0.64)
            )
        for c in IO_CONCURRENCY:
            rate = by_case.get(io_case(c))
            if rate is not None:
                share = rate / (c / IO_WAIT_S)
                wanted = 0.8 if c <= 256 else 0.0
                name = f"{io_case(c)}: share of the ceiling {c / IO_WAIT_S:,.0f}/s"
                out.append(
                    _target(
                        name + (" >= 0.8" if wanted else ""), share, share >= wanted
                    )
                )
        out.extend(
            _target("p99 delay < 5 ms at 2,000/s", d.p99_ms, d.p99_ms < 5)
            for d in self.delays
            if d.rate == 2000
        )
        if self.memory is not None:
            m = self.memory
            name = f"RSS growth < 10 MB over {m.events:,} events"
            out.append(_target(name, m.growth_mb, m.growth_mb < 10))
        live = sorted((r for r in self.reaper if not r.claimable), key=_pending)
        if len(live) >= 2:
            growth = live[-1].median_ms / live[0].median_ms
            name = (
                "sweep with nothing to claim O(claimable): time grows < 2x "
                f"from {live[0].pending:,} to {live[-1].pending:,} pending"
            )
            out.append(_target(name, growth, growth < 2))
        return out

    def as_json(self, machine: dict[str, Any], sizes: Any) -> dict[str, Any]:
        return {
            "machine": machine,
            "sizes": sizes,
            "throughput": [_case_json(r) for r in self.throughput],
            "delay": [dataclasses.asdict(d) for d in self.delays],
            "memory": None if self.memory is None else dataclasses.asdict(self.memory),
            "reaper": [dataclasses.asdict(r) for r in self.reaper],
            "targets": self.targets(),
        }


def _pending(result: ReaperResult) -> int:
    return result.pending


def _target(name: str, value: float, met: bool) -> dict[str, Any]:
    return {"target": name, "value": round(value, 3), "met": met}


def _case_json(r: CaseResult) -> dict[str, Any]:
    return {
        "case": r.case,
        "events": r.events,
        "seconds": r.seconds,
        "events_per_s": r.rates,
        "median": r.median,
        "min": min(r.rates),
        "max": max(r.rates),
        "cpu_s": r.cpu_s,
        "cpu_us_per_event": {role: r.cpu_us_per_event(role) for role in ROLES},
        "cpu_cores_busy": {role: r.cpu_share(role) for role in ROLES},
    }


def _throughput_table(results: list[CaseResult]) -> str:
    if not results:
        return ""
    raw = next((r.median for r in results if r.case == "raw"), None)
    headers = ["case", "events", "events/s (median)", "min–max", "vs raw"]
    headers += ["consumer CPU µs/event", "Redis CPU µs/event", "others' CPU (cores)"]
    rows = [
        [
            r.case,
            f"{r.events:,}",
            f"{r.median:,.0f}",
            f"{min(r.rates):,.0f}–{max(r.rates):,.0f}",
            "" if raw is None else f"{r.median / raw:.2f}",
            f"{r.cpu_us_per_event('consumer'):.1f}",
            f"{r.cpu_us_per_event('redis'):.1f}",
            f"{max(r.cpu_share('other'), 0.0):.2f}",  # ticks: may read -0.01
        ]
        for r in results
    ]
    return table(headers, rows)


def _delay_table(delays: list[DelayResult]) -> str:
    if not delays:
        return ""
    rows = [
        [f"{d.rate:,}/s", f"{d.events:,}"]
        + [f"{v:.2f}" for v in (d.p50_ms, d.p99_ms, d.max_ms)]
        + [f"{max(d.others_cpu_cores, 0.0):.2f}"]
        for d in delays
    ]
    headers = ["delay at", "events", "p50 ms", "p99 ms", "max ms"]
    return table([*headers, "others' CPU (cores)"], rows)


def _memory_table(m: MemoryResult | None) -> str:
    if m is None:
        return ""
    row = [
        f"{m.rss_after_warmup_mb:.1f} MB ({m.warmup_events:,})",
        f"{m.rss_after_events_mb:.1f} MB (+{m.events:,})",
        f"{m.growth_mb:+.1f} MB",
    ]
    return table(["RSS after warm-up", "after more events", "growth"], [row])


def _reaper_table(reaper: list[ReaperResult]) -> str:
    if not reaper:
        return ""
    rows = [
        [
            r.case,
            f"{r.pending:,}",
            f"{r.median_ms:.1f}",
            f"{r.min_ms:.1f}–{r.max_ms:.1f}",
        ]
        for r in reaper
    ]
    return table(["sweep", "pending", "median ms", "min–max ms"], rows)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
