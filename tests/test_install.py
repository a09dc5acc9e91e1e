"""A new user's path: build the wheel, install it (not editable) into a fresh environment, then
`nurture init acme && cd acme && nurture demo`, far from the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.timeout(900)
def test_the_installed_package_starts_a_project_and_plays_the_demo_anywhere(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NURTURE_", "PYTHON"))}
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        tmp_path, env)
    wheel = next(dist.glob("nurture-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "engine/examples/workflows/scoring.yml" in names
    assert "engine/examples/templates/email/welcome.j2" in names
    assert "engine/http/t.js" in names  # the tracking snippet the API serves

    venv = tmp_path / "fresh"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], tmp_path, env)
    nurture = str(venv / "bin" / "nurture")
    home = tmp_path / "home"
    home.mkdir()

    assert "database ready" in run([nurture, "init", "acme"], home, env)
    acme = home / "acme"
    assert "2 sequence(s) valid" in run([nurture, "validate"], acme, env)
    demo = json.loads(run([nurture, "demo", "--leads", "100", "--days", "14", "--json"], acme, env))
    assert demo["outbox"]["email"] > 0
    assert (acme / "demo" / "nurture.db").is_file()
    # The installed code ran, not the checkout's: nothing of the repository is on its path.
    where = run([str(venv / "bin" / "python"), "-c", "import engine; print(engine.__file__)"],
                home, env)
    assert str(venv) in where
