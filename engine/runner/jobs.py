"""Backtests asked for through the API: stored as jobs, run by a worker, read back by id.

The database holds the job, so a lost message or a killed worker loses nothing: the
scheduler hands a job whose time ran out to a worker again (`scheduler.claim_due_jobs`).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.app import App
from engine.models import BacktestJob, JobStatus
from engine.runner.backtest import backtest
from engine.runner.simulation import sequences_named
from engine.workflow.durations import parse_duration
from engine.workflow.runtime import Runtime

log = logging.getLogger(__name__)

# A queued job's message has this long to reach a worker before the scheduler sends another.
QUEUED_GRACE = timedelta(minutes=1)
# A running job past this is taken for dead (its worker killed) and run again; the actor's
# time limit (`actors.JOB_TIME_LIMIT_MS`) ends a run before.
RUN_LEASE = timedelta(hours=1, minutes=5)
ERROR_CHARS = 500


def create_job(
    session: Session, rt: Runtime, sequence: str, since: str, leads: int | None, seed: int
) -> BacktestJob:
    """Store a backtest to run; UnknownSequenceError or ValueError (a bad `since`) first."""
    sequences_named(rt.workflows, [sequence])
    parse_duration(since)
    now = rt.clock.now()
    job = BacktestJob(
        id=str(uuid.uuid4()),
        sequence=sequence,
        since=since,
        leads=leads,
        seed=seed,
        status=JobStatus.QUEUED,
        attempts=0,
        due_at=now + QUEUED_GRACE,
        created_at=now,
    )
    session.add(job)
    session.flush()
    return job


def run_job(app: App, job_id: str) -> None:
    """Run a job unless it is done, or running elsewhere within its lease; its report, or its
    error, is stored (also when the actor's time limit stops it)."""
    with app.sessions.begin() as session:
        job = session.scalars(
            select(BacktestJob).where(BacktestJob.id == job_id).with_for_update()
        ).one_or_none()
        now = app.rt.clock.now()
        if job is None or job.status in (JobStatus.DONE, JobStatus.FAILED):
            return
        alive = job.started_at is not None and job.started_at + RUN_LEASE > now
        if job.status == JobStatus.RUNNING and alive:
            return  # another worker runs it now
        job.status, job.started_at, job.due_at = JobStatus.RUNNING, now, now + RUN_LEASE
        job.attempts += 1
        sequence, since, leads, seed = job.sequence, job.since, job.leads, job.seed
    try:
        report = backtest(app, sequence, parse_duration(since), leads, seed=seed).as_dict()
    except BaseException as failure:  # Dramatiq's time limit is not an Exception
        log.exception("backtest %s of %s failed", job_id, sequence)
        _finish(app, job_id, None, " ".join(str(failure).split())[:ERROR_CHARS] or repr(failure))
        if not isinstance(failure, Exception):
            raise
        return
    _finish(app, job_id, report, None)


def _finish(app: App, job_id: str, report: dict[str, Any] | None, error: str | None) -> None:
    """Store how a run ended."""
    with app.sessions.begin() as session:
        job = session.get_one(BacktestJob, job_id)
        job.status = JobStatus.DONE if error is None else JobStatus.FAILED
        job.report, job.error = report, error
        job.finished_at, job.due_at = app.rt.clock.now(), None


def job_view(job: BacktestJob) -> dict[str, Any]:
    """A job as the API shows it."""
    return {
        "id": job.id,
        "status": job.status,
        "sequence": job.sequence,
        "since": job.since,
        "leads": job.leads,
        "seed": job.seed,
        "attempts": job.attempts,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "report": job.report,
        "error": job.error,
    }
