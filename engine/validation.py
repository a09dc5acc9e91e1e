"""`nurture validate` and start-up: workflows, sending rules and templates checked together."""

from __future__ import annotations

from engine.errors import Problem, WorkflowError
from engine.policy import Policy, load_policy
from engine.rendering import Renderer
from engine.settings import Settings
from engine.spec import Workflows
from engine.workflows import load_workflows


def load(settings: Settings) -> tuple[Workflows, Renderer, Policy]:
    """Load everything a process runs on; one WorkflowError lists every problem found."""
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
    if problems or workflows is None:
        raise WorkflowError(problems)
    return workflows, renderer, policy
