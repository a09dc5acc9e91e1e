"""One process's wiring: settings, database, validated workflows, renderer, channels, policy."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from channels import build_channels
from channels.base import Channel
from engine.clock import Clock, SystemClock
from engine.contacts import use_region
from engine.db import make_engine, make_sessionmaker
from engine.delivery.confirmation import check_confirmations
from engine.delivery.pacing import LocalPacer, Pacer, RedisPacer
from engine.delivery.process import CrmTarget
from engine.delivery.rendering import Renderer
from engine.errors import Problem, WorkflowError
from engine.settings import Settings
from engine.workflow.loading import load_workflows
from engine.workflow.reader import display
from engine.workflow.runtime import Runtime
from engine.workflow.sending_rules import load_policy
from engine.workflow.spec import Policy, Workflows


def load(settings: Settings) -> tuple[Workflows, Renderer, Policy]:
    """Load everything a process runs on; one WorkflowError lists every problem found."""
    missing = [
        Problem(
            display(folder),
            1,
            "",
            f"{what} folder not found: run `nurture init` to create a project with the "
            f"example {what}, or point NURTURE_{what.upper()} at yours",
        )
        for what, folder in (
            ("workflows", settings.workflows_dir),
            ("templates", settings.templates_dir),
        )
        if not folder.is_dir()
    ]
    if missing:
        raise WorkflowError(missing)
    renderer = Renderer(settings.templates_dir)
    problems: list[Problem] = []
    workflows = None
    try:
        workflows = load_workflows(
            settings.workflows_dir, renderer.email_templates(), renderer.sms_templates()
        )
    except WorkflowError as error:
        problems.extend(error.problems)
    try:
        policy = load_policy(settings.workflows_dir)
    except WorkflowError as error:
        problems.extend(error.problems)
    if workflows is not None:
        limits = {s.file: s.send.sms_max_segments for s in workflows.sequences.values()}
        problems.extend(renderer.check(workflows.template_uses, sms_max_segments=limits))
        problems.extend(check_confirmations(renderer, settings, workflows.forms.values()))
    if problems or workflows is None:
        raise WorkflowError(problems)
    return workflows, renderer, policy


@dataclass
class App:
    """Everything an API process, scheduler or worker needs, built once at start-up."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    rt: Runtime
    renderer: Renderer
    channels: Mapping[str, Channel]
    crm: CrmTarget
    pacer: Pacer | None

    @classmethod
    def create(
        cls,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        channels: Mapping[str, Channel] | None = None,
        engine: Engine | None = None,
        paced: bool = True,
    ) -> App:
        """Validate workflows and templates (all problems at once), connect what is configured."""
        env = dict(os.environ if environ is None else environ)
        settings = settings or Settings.from_env(env)
        use_region(settings.default_region)
        clock = clock or SystemClock()
        workflows, renderer, policy = load(settings)
        if channels is None:
            channels = build_channels(env, clock=clock)
        engine = engine or make_engine(settings.database_url)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            rt=Runtime(workflows, clock, policy.assignment, policy.send, settings.merge),
            renderer=renderer,
            channels=channels,
            crm=CrmTarget(
                url=env.get("NURTURE_CRM_WEBHOOK_URL") or None,
                secret=env.get("NURTURE_CRM_WEBHOOK_SECRET") or settings.secret_key,
            ),
            pacer=_pacer(settings) if paced else None,
        )


def _pacer(settings: Settings) -> Pacer:
    """Send slots shared through Redis across processes, or kept in this process."""
    if settings.redis_url:
        return RedisPacer(redis.Redis.from_url(settings.redis_url))
    return LocalPacer()
