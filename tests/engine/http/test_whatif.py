"""What-if through the API: the plan with its rescore, and backtests as jobs that a worker runs
(or the scheduler hands to one again when the message is lost) and that are read back by id."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from engine.app import App
from engine.clock import FrozenClock
from engine.http.api import create_api
from engine.models import BacktestJob, JobStatus
from engine.runner.actors import Tasks
from engine.runner.jobs import QUEUED_GRACE, RUN_LEASE, run_job
from engine.runner.scheduler import MAX_JOB_ATTEMPTS
from tests.apps import FIXTURES, outbox_app

PRICING = {"url": "https://acme.test/pricing"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A workflows folder the test may edit."""
    copy = tmp_path / "workflows"
    shutil.copytree(FIXTURES, copy)
    return copy


@pytest.fixture
def nurture(db: Engine, clock: FrozenClock, tmp_path: Path, folder: Path) -> App:
    return outbox_app(db, clock, tmp_path, folder)


class Worker:
    """An in-process broker and worker that run backtest jobs, as `nurture worker` does."""

    def __init__(self, app: App) -> None:
        self.broker = StubBroker()
        self.tasks = Tasks(self.broker, app, jobs=run_job)
        self.worker = dramatiq.Worker(self.broker, worker_threads=1, worker_timeout=50)

    def settle(self) -> None:
        self.broker.join("maintenance", timeout=60_000)
        self.worker.join()


@pytest.fixture
def worker(nurture: App) -> Iterator[Worker]:
    running = Worker(nurture)
    running.worker.start()
    yield running
    running.worker.stop()


def _client(app: App, tasks: Tasks | None) -> TestClient:
    return TestClient(create_api(app, tasks, allow_no_auth=True, environ={}))


def _track(client: TestClient, email: str, kind: str, **properties: Any) -> None:
    body = {"lead": {"email": email}, "type": kind, "properties": properties}
    assert client.post("/v1/events", json=body).status_code == 200


def test_the_plan_shows_what_changed_points_would_do_to_the_past(
    nurture: App, folder: Path
) -> None:
    client = _client(nurture, None)
    _track(client, "ana@northwind.test", "content_downloaded")
    _track(client, "ana@northwind.test", "page_viewed", **PRICING)  # 15 points
    _track(client, "ben@contoso.test", "content_downloaded")
    scoring = folder / "scoring.yml"
    scoring.write_text(scoring.read_text().replace("points: 7,", "points: 20,"))  # pricing
    edited = _client(outbox_app(nurture.engine, nurture.rt.clock, folder.parent, folder), None)

    answer = edited.post("/v1/plan")
    assert answer.status_code == 200, answer.text
    rescore = answer.json()["rescore"]
    assert (rescore["leads"], rescore["changed"], rescore["new_mql"]) == (2, 1, 1)
    [mover] = rescore["movers"]
    assert (mover["key"], mover["change"], mover["rules"]) == (
        "ana@northwind.test",
        13,
        {"pricing": 13},
    )
    assert {"from": 10, "to": 20, "before": 1, "after": 0} in rescore["histogram"]
    assert answer.json()["stranded"] == []
    assert edited.post("/v1/plan", json={"rescore": False}).json()["rescore"] is None


def test_a_backtest_is_queued_run_by_a_worker_and_read_back_with_its_report(
    nurture: App, worker: Worker, clock: FrozenClock
) -> None:
    client = _client(nurture, worker.tasks)
    _track(client, "ana@northwind.test", "form_submitted")
    clock.advance(timedelta(days=1))

    started = client.post("/v1/backtests", json={"sequence": "drip", "since": "7d"})
    assert started.status_code == 202, started.text
    assert started.json()["status"] == "queued"
    worker.settle()
    done = client.get(f"/v1/backtests/{started.json()['id']}").json()
    assert (done["status"], done["attempts"], done["error"]) == ("done", 1, None)
    report = done["report"]
    assert (report["sequence"], report["leads"]) == ("drip", 1)
    assert report["backtest"] and report["live"]


def test_a_backtest_names_the_field_it_cannot_take_and_an_unknown_id_is_404(
    nurture: App,
) -> None:
    client = _client(nurture, None)
    unknown = client.post("/v1/backtests", json={"sequence": "nope"})
    assert unknown.status_code == 422
    [problem] = unknown.json()["detail"]
    assert problem["loc"] == ["body", "sequence"] and "drip" in problem["msg"]
    bad_since = client.post("/v1/backtests", json={"sequence": "drip", "since": "0d"})
    assert bad_since.status_code == 422
    assert bad_since.json()["detail"][0]["loc"] == ["body", "since"]
    assert client.get("/v1/backtests/nope").status_code == 404
    with nurture.sessions() as s:
        assert list(s.scalars(select(BacktestJob))) == []


def test_a_job_whose_message_was_lost_is_sent_again_by_the_scheduler_and_given_up_at_last(
    nurture: App, worker: Worker, clock: FrozenClock
) -> None:
    client = _client(nurture, None)  # no broker: the message is never sent
    job_id = client.post("/v1/backtests", json={"sequence": "drip"}).json()["id"]
    assert worker.tasks.scheduler_pass()[0] == 0  # within its grace, the message may come
    clock.advance(QUEUED_GRACE)
    assert worker.tasks.scheduler_pass()[0] == 1
    worker.settle()
    assert client.get(f"/v1/backtests/{job_id}").json()["status"] == "done"

    died = client.post("/v1/backtests", json={"sequence": "drip"}).json()["id"]
    with nurture.sessions.begin() as s:  # a worker took it and died
        job = s.get_one(BacktestJob, died)
        job.status, job.attempts, job.started_at = JobStatus.RUNNING, 1, clock.now()
        job.due_at = clock.now() + RUN_LEASE
    clock.advance(RUN_LEASE)
    assert worker.tasks.scheduler_pass()[0] == 1
    worker.settle()
    again = client.get(f"/v1/backtests/{died}").json()
    assert (again["status"], again["attempts"]) == ("done", 2)

    stuck = client.post("/v1/backtests", json={"sequence": "drip"}).json()["id"]
    with nurture.sessions.begin() as s:  # a worker took it and died, every time
        job = s.get_one(BacktestJob, stuck)
        job.status, job.attempts = JobStatus.RUNNING, MAX_JOB_ATTEMPTS
        job.due_at = clock.now() + RUN_LEASE
    clock.advance(RUN_LEASE)
    assert worker.tasks.scheduler_pass()[0] == 0
    failed = client.get(f"/v1/backtests/{stuck}").json()
    assert failed["status"] == "failed" and "gave up after 3 attempts" in failed["error"]
