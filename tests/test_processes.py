"""The production processes: `nurture run` end to end, `serve` refusing an open API, and
docker-compose services that run real CLI commands."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from engine.cli.main import main
from engine.safety import new_secret
from engine.settings import QUEUES

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "engine" / "fixtures" / "workflows"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _http(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`nurture run` as its own process on a fresh SQLite file; yields its URL and outbox."""
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")},
        "NURTURE_WORKFLOWS": str(FIXTURES),
        "NURTURE_TEMPLATES": str(ROOT / "templates"),
        "NURTURE_OUTBOX_DIR": str(tmp_path / "outbox"),
    }
    command = [sys.executable, "-m", "engine.cli", "run", "--port", str(port), "--interval", "0.2"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if _http("GET", f"{url}/healthz") == {"database": "ok", "broker": "ok"}:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("nurture run did not answer /healthz within 10 s")
        yield url, tmp_path / "outbox"
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0].decode()
    assert process.returncode == 0, output
    assert f"nurture running on {url}" in output


def test_run_records_an_event_enrols_the_lead_and_sends_through_the_outbox(
    running: tuple[str, Path],
) -> None:
    url, outbox = running
    recorded = _http(
        "POST",
        f"{url}/v1/events",
        {"lead": {"email": "ana@northwind.test"}, "type": "form_submitted"},
    )
    assert recorded["stage"] == "lead"
    for _ in range(100):
        lead = _http("GET", f"{url}/v1/leads/ana@northwind.test")
        if [d["status"] for d in lead["deliveries"]] == ["sent"]:
            break
        time.sleep(0.1)
    assert [(e["sequence"], e["milestone"]) for e in lead["enrolments"]] == [("drip", "awareness")]
    assert [(d["template"], d["status"]) for d in lead["deliveries"]] == [("welcome", "sent")]
    [eml] = outbox.rglob("*.eml")
    message = message_from_bytes(eml.read_bytes())
    assert message["To"] == "ana@northwind.test"
    assert message["Subject"] == lead["deliveries"][0]["subject"]


def test_serve_refuses_to_start_an_api_without_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NURTURE_API_KEYS", raising=False)
    monkeypatch.setenv("NURTURE_SECRET_KEY", new_secret())
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{tmp_path / 'serve.db'}")
    monkeypatch.setenv("NURTURE_REDIS_URL", "redis://127.0.0.1:6379/15")
    monkeypatch.setenv("NURTURE_WORKFLOWS", str(FIXTURES))
    monkeypatch.setenv("NURTURE_TEMPLATES", str(ROOT / "templates"))
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2
    assert "NURTURE_API_KEYS is not set" in result.output


def test_run_refuses_an_open_api_beyond_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NURTURE_API_KEYS", raising=False)
    monkeypatch.setenv("NURTURE_SECRET_KEY", new_secret())
    monkeypatch.delenv("NURTURE_REDIS_URL", raising=False)
    monkeypatch.setenv("NURTURE_WORKFLOWS", str(FIXTURES))
    monkeypatch.setenv("NURTURE_TEMPLATES", str(ROOT / "templates"))
    result = CliRunner().invoke(main, ["run", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "NURTURE_API_KEYS is not set" in result.output


def test_compose_runs_each_process_with_a_command_the_cli_accepts() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    commands = {
        name: service["command"] for name, service in services.items() if "build" in service
    }
    assert {name: command[0] for name, command in commands.items()} == {
        "migrate": "init",
        "apply": "apply",
        "api": "serve",
        "worker": "worker",
        "sender": "worker",
        "scheduler": "scheduler",
    }
    queues = [
        set(command[command.index("--queues") + 1].split(","))
        for command in commands.values()
        if "--queues" in command
    ]
    assert sorted(q for group in queues for q in group) == sorted(QUEUES)  # each taken once
    for name, command in commands.items():
        subcommand = main.commands[command[0]]
        try:
            subcommand.make_context(command[0], list(command[1:]))
        except click.UsageError as error:
            pytest.fail(f"docker-compose service {name}: {error}")
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name], f"{name} has no health check"
    processes = {"api", "worker", "sender", "scheduler"}
    for name in processes:
        assert services[name]["depends_on"]["apply"] == {
            "condition": "service_completed_successfully"
        }
        assert services[name]["environment"]["NURTURE_REDIS_URL"].startswith("redis://")
    assert services["apply"]["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"
    }
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["nurture"]' in dockerfile
