"""A rolling deploy: two processes with different YAML on disk against one PostgreSQL.

Both keep recording, advancing and sending while the newer one applies its edit; nothing is
sent twice, no event is left unprocessed, every enrolment stands on a step of its version.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from engine.clock import FrozenClock
from engine.models import (
    Delivery,
    DeliveryStatus,
    Enrolment,
    EnrolmentStatus,
    Event,
    EventStatus,
    VersionMove,
)
from engine.workflow.loading import load_workflows
from engine.workflow.runtime import Runtime
from tests.conftest import POSTGRES_URL, START, _truncate

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"


def edited(folder: Path) -> Path:
    """The shipped workflows with a live edit: a renamed milestone, a new step, a longer wait."""
    shutil.copytree(ROOT / "workflows", folder)
    path = folder / "lead-nurture.yml"
    text = path.read_text()
    text = text.replace("  - id: awareness\n", "  - id: discovery\n    renamed_from: awareness\n")
    text = text.replace(
        "      - wait: 2d\n      - email: case_study\n",
        "      - wait: 3d\n      - email: whats_new\n      - email: case_study\n",
        1,
    )
    path.write_text(text)
    return folder


def test_two_processes_on_different_versions_share_one_database_safely(
    postgres_engine: Engine, tmp_path: Path
) -> None:
    _truncate(postgres_engine)
    env = {**os.environ, "NURTURE_DATABASE_URL": POSTGRES_URL, "NURTURE_TEMPLATES": str(TEMPLATES)}
    env.pop("NURTURE_REDIS_URL", None)
    old, new = ROOT / "workflows", edited(tmp_path / "v2")
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.rolling",
                str(folder),
                str(tmp_path / name),
                "40",
                str(seed),
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for folder, name, seed, extra in (
            (old, "outbox-old", 1, []),
            (new, "outbox-new", 2, ["--apply-at", "20"]),
        )
    ]
    results = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, results, strict=True):
        assert run.returncode == 0, err[-3000:]
    summaries = [json.loads(out.splitlines()[-1]) for out, _ in results]
    assert all(s["sends"] > 0 for s in summaries)
    assert summaries[1]["moved"] > 0  # the new process moved leads the old one had enrolled

    files = Counter(p.stem for p in tmp_path.glob("outbox-*/*/*") if not p.name.startswith("."))
    assert files and max(files.values()) == 1  # no delivery reached a channel twice
    rts = {
        folder: Runtime(
            load_workflows(
                folder,
                {p.stem for p in (TEMPLATES / "email").glob("*")},
                {p.stem for p in (TEMPLATES / "sms").glob("*")},
            ),
            FrozenClock(START),
        )
        for folder in (old, new)
    }
    with postgres_engine.connect() as connection:
        session = Session(connection)
        assert (
            session.scalar(select(func.count()).where(Event.status != EventStatus.PROCESSED)) == 0
        )
        sent = session.execute(
            select(Delivery.id, Delivery.attempts).where(Delivery.status == DeliveryStatus.SENT)
        ).all()
        assert sent and all(attempts == 1 for _, attempts in sent)
        assert set(files) == {delivery_id for delivery_id, _ in sent}
        for enrolment in session.scalars(
            select(Enrolment).where(Enrolment.status == EnrolmentStatus.ACTIVE)
        ):
            sequence = rts[new].pinned(session, enrolment.sequence, enrolment.sequence_version)
            assert sequence is not None and enrolment.milestone in {
                m.id for m in sequence.milestones
            }
        moves = session.scalar(select(func.count()).select_from(VersionMove))
        assert moves == summaries[1]["moved"]
        session.close()
