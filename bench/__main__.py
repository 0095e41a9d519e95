"""``python -m bench``: agentstream against the raw Redis limit, in one run."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from agentstream.config import LogSettings
from agentstream.logging import configure_logging
from bench import results_dir
from bench.delay import run_delay
from bench.memory import run_memory
from bench.reaper_cost import run_reaper
from bench.redis_server import BenchRedis, clear_agentstream_env
from bench.report import Results, machine_info, write_json
from bench.throughput import cases, run_cases

SECTIONS = ("throughput", "delay", "memory", "reaper")


@dataclass(frozen=True, slots=True)
class Sizes:
    events: int = 200_000
    repeats: int = 3
    sync_events: int = 20_000
    sleep_events: int = 5_000
    io_ceiling_s: float = 3.0
    delay_rates: tuple[int, ...] = (500, 2000)
    delay_s: float = 10.0
    memory_warmup: int = 50_000
    memory_events: int = 1_000_000
    reaper_live: tuple[int, ...] = (10_000, 100_000)
    reaper_claim: int = 10_000
    reaper_repeats: int = 5


QUICK = Sizes(
    events=20_000,
    repeats=1,
    sleep_events=2_000,
    io_ceiling_s=0.5,
    delay_s=3.0,
    memory_events=200_000,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--events", type=int, help="events per throughput run")
    parser.add_argument("--repeats", type=int, help="runs of each throughput case")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument(
        "--only",
        metavar="SECTIONS",
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where the JSON results go (default: bench/results/local/latest.json)",
    )
    parser.add_argument(
        "--update-results",
        action="store_true",
        help="write bench/results/latest.json, the committed results",
    )
    return parser


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else Sizes()
    if args.events is not None:
        sizes = dataclasses.replace(sizes, events=args.events)
    if args.repeats is not None:
        sizes = dataclasses.replace(sizes, repeats=args.repeats)
    return sizes


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Run:
    """One benchmark run: its server, sizes and what it measured."""

    def __init__(self, server: BenchRedis, tmp: Path, sizes: Sizes) -> None:
        self.server = server
        self.client = server.client()
        self.tmp = tmp
        self.sizes = sizes
        self.results = Results()

    def run(self, sections: Sequence[str]) -> None:
        s, url, out = self.sizes, self.server.url, self.results
        if "throughput" in sections:
            _progress(f"throughput ({s.repeats} repeats, interleaved)")
            selected = cases(s.events, s.sync_events, s.sleep_events, s.io_ceiling_s)
            out.throughput = run_cases(
                self.client, url, self.server.pid, self.tmp, selected, s.repeats
            )
        if "delay" in sections:
            for rate in s.delay_rates:
                _progress(f"delay at {rate}/s for {s.delay_s:g} s")
                delay = run_delay(
                    self.client, url, self.server.pid, self.tmp, rate, s.delay_s
                )
                out.delays.append(delay)
        if "memory" in sections:
            _progress("memory")
            out.memory = run_memory(
                self.client, url, self.tmp, s.memory_warmup, s.memory_events
            )
        if "reaper" in sections:
            _progress("reaper sweeps")
            out.reaper = run_reaper(
                self.client, url, list(s.reaper_live), s.reaper_claim, s.reaper_repeats
            )

    def as_json(self) -> dict[str, Any]:
        machine = machine_info(self.server.describe())
        return self.results.as_json(machine, dataclasses.asdict(self.sizes))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Ctrl-C or SIGTERM unwinds through every `with`: workers and Redis stop.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    sections = SECTIONS if args.only is None else tuple(args.only.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        _parser().error(f"--only: unknown section(s) {sorted(unknown)}")
    clear_agentstream_env()
    configure_logging(LogSettings(level="warning"), stream=sys.stderr)
    with (
        tempfile.TemporaryDirectory(prefix="agentstream-bench-") as tmp,
        BenchRedis(Path(tmp)) as server,
    ):
        _progress(
            f"redis-server {server.describe()} on {server.url} (pid {server.pid})"
        )
        run = Run(server, Path(tmp), _sizes(args))
        run.run(sections)
        results = run.as_json()
    print(run.results.tables())
    output = args.output or results_dir(args.update_results) / "latest.json"
    write_json(output, results)
    _progress(f"results written to {output}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
