"""`python -m bench`: every benchmark one after the other, each as `python -m bench.<name>` in
its own process, so none inherits another's memory, caches or threads. `--small` gives each the
flags of its CI size, `--only NAME...` picks some. Exits non-zero when any benchmark fails
(a missing benchmark module counts as a failure)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each benchmark, in the order they run, with the flags of its small (CI) size.
BENCHMARKS: dict[str, list[str]] = {
    "ingest": ["--events", "200", "--leads", "50"],
    "render": ["--seconds", "0.05"],
    "dispatch": ["--deliveries", "200"],
    "scheduler_scale": ["--enrolled", "20000", "--due", "1000"],
    "reaction": ["--crossings", "20"],
    "egress": ["--seconds", "3"],
    "simulation": ["--leads", "50", "--days", "21"],
    "backtest": ["--leads", "100", "--days", "30"],
    "rescore": ["--leads", "100", "--days", "30"],
    "experiments": ["--sends", "200"],
    "stitching": ["--visitors", "100"],
    "soak": ["--seconds", "10"],
    "dashboard": ["--leads", "100", "--seed-leads", "50", "--rounds", "2"],
}


def command(name: str, small: bool) -> list[str]:
    """The command line that runs one benchmark, at its small size when asked."""
    return [sys.executable, "-m", f"bench.{name}", *(BENCHMARKS[name] if small else [])]


def run(name: str, small: bool) -> tuple[int, float]:
    """Run one benchmark with its output passed through; its exit code and wall seconds."""
    argv = command(name, small)
    print(f"== {name}: {' '.join(argv[1:])}", flush=True)
    started = time.perf_counter()
    code = subprocess.run(argv, cwd=ROOT, check=False).returncode
    return code, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks and print a one-line verdict per benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--small", action="store_true", help="CI sizes: a quick check that all run")
    parser.add_argument(
        "--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME", help="run only these"
    )
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    results = {name: run(name, args.small) for name in names}
    print("== summary")
    for name, (code, seconds) in results.items():
        print(f"{name:16} {'ok' if code == 0 else f'FAILED (exit {code})':16} {seconds:8.1f} s")
    return 0 if all(code == 0 for code, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
