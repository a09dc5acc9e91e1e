"""Every benchmark runs at its small (CI) size through `python -m bench --small --only NAME`:
it exits 0, prints its table and writes bench/results/<name>.json with figures.

Benchmarks run on a PostgreSQL database of their own beside the test database (its name plus
`_bench`, which they empty and migrate) and on the test Redis, passed as
NURTURE_BENCH_DATABASE_URL and NURTURE_BENCH_REDIS_URL.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _benchmarks() -> list[str]:
    """The names `python -m bench` runs (bench/ is a folder of the checkout, not installed)."""
    spec = importlib.util.spec_from_file_location("bench_main", ROOT / "bench" / "__main__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.BENCHMARKS)


def _bench_database(test_url: str) -> str:
    """The benchmarks' own database: the test database's name with `_bench` appended."""
    url = make_url(test_url)
    return url.set(database=f"{url.database}_bench").render_as_string(hide_password=False)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", _benchmarks())
def test_each_benchmark_runs_at_its_small_size_and_reports_its_figures(
    name: str, postgres_engine: Engine, redis_url: str
) -> None:
    from tests.conftest import POSTGRES_URL

    started = time.time()
    environ = {
        **os.environ,
        "NURTURE_BENCH_DATABASE_URL": _bench_database(POSTGRES_URL),
        "NURTURE_BENCH_REDIS_URL": redis_url,
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--small", "--only", name],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=570,
        check=False,
    )
    output = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    assert done.returncode == 0, output
    header = [line.split() for line in done.stdout.splitlines() if line.startswith("figure")]
    assert ["figure", "nurture", "baseline", "ratio", "goal"] in header, output
    result = ROOT / "bench" / "results" / f"{name}.json"
    assert result.exists() and result.stat().st_mtime >= started, f"{result} not written"
    record = json.loads(result.read_text())
    assert record["figures"], f"{result} has no figures"
    assert all({"name", "value", "baseline", "ratio"} <= set(f) for f in record["figures"])
