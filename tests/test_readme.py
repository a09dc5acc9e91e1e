"""The README's two set-up commands, run as a newcomer would: on a copy of the project, each in
a shell, the first printing the demo's funnel, the second passing the tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
NESTED = "NURTURE_README_NESTED"  # set for the test run the second command starts
pytestmark = [
    pytest.mark.skipif(
        os.environ.get(NESTED) == "1", reason="already inside the README's test command"
    ),
    pytest.mark.skipif(
        not (IN_CI or os.environ.get("NURTURE_README_TEST") == "1"),
        reason="installs the project twice and runs the whole suite again (minutes): "
        "runs under CI=true or NURTURE_README_TEST=1",
    ),
]


def setup_commands() -> list[str]:
    """The commands of the first shell block under '## Set up'."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README's Set up section has no sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _copy_project(target: Path) -> Path:
    """The project's own files, as a clean clone has them (no venv, caches or outputs)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in listed:
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _run(command: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NURTURE_", "VIRTUAL_ENV"))}
    env.update({NESTED: "1", "NO_COLOR": "1", "COLUMNS": "120"})
    for name in ("NURTURE_TEST_POSTGRES_URL", "NURTURE_TEST_REDIS_URL"):
        if name in os.environ:
            env[name] = os.environ[name]
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(4200)
def test_the_two_set_up_commands_run_the_demo_and_pass_the_tests(tmp_path: Path) -> None:
    demo, tests = setup_commands()
    assert "nurture demo" in demo and "pytest" in tests
    project = _copy_project(tmp_path / "nurture")

    shown = _run(demo, project, timeout=900)
    assert shown.returncode == 0, shown.stdout[-3000:] + shown.stderr[-3000:]
    numbers = re.search(
        r"MQLs: (\d+) · handoffs to sales: (\d+) · re-engaged leads: (\d+)", shown.stdout
    )
    assert numbers is not None, shown.stdout[-3000:]
    mqls, handoffs, re_engaged = (int(n) for n in numbers.groups())
    assert mqls > 0 and handoffs > 0 and re_engaged > 0
    assert "Stages" in shown.stdout and "lead-nurture: steps" in shown.stdout
    emails = list((project / "demo" / "outbox" / "email").glob("*.eml"))
    assert emails, "the demo wrote no .eml files"

    tested = _run(tests, project, timeout=3600)
    assert tested.returncode == 0, tested.stdout[-5000:] + tested.stderr[-3000:]
    assert re.search(r"\d+ passed", tested.stdout), tested.stdout[-3000:]
