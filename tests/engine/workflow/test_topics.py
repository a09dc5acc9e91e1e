"""A sequence's `topic:`: read when declared, `marketing` when not, mistakes named by file:line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.errors import WorkflowError
from engine.workflow.loading import load_workflows
from engine.workflow.spec import DEFAULT_TOPIC

SHIPPED = Path(__file__).resolve().parents[3] / "workflows"
EMAIL, SMS = {"welcome"}, set[str]()
TRIAL = """\
name: trial
description: "A trial nurture."
enrol: {on: {event: form_submitted}}
send: {from: "Acme <hello@acme.test>"}
milestones:
  - id: awareness
    steps: [{email: welcome}]
"""


def _load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, topic_line: str) -> list[str]:
    """Load the trial with `topic_line` after its description: its topic, or the problems."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    shutil.copy(SHIPPED / "scoring.yml", folder / "scoring.yml")
    text = TRIAL.replace('nurture."\n', f'nurture."\n{topic_line}')
    (folder / "trial.yml").write_text(text)
    monkeypatch.chdir(tmp_path)
    try:
        workflows = load_workflows(Path("workflows"), EMAIL, SMS)
    except WorkflowError as error:
        return [str(problem) for problem in error.problems]
    return [workflows.sequences["trial"].topic]


def test_a_declared_topic_is_what_the_sequence_sends_under(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _load(tmp_path, monkeypatch, "topic: product-news\n") == ["product-news"]


def test_a_sequence_without_a_topic_sends_under_marketing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert DEFAULT_TOPIC == "marketing"
    assert _load(tmp_path, monkeypatch, "") == ["marketing"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "topic: Product News\n",
            "topic: bad topic 'Product News': use lower-case letters, digits and -,"
            " at most 100, like product-news",
        ),
        (
            "topic: -news\n",
            "topic: bad topic '-news': use lower-case letters, digits and -,"
            " at most 100, like product-news",
        ),
        (
            f"topic: {'n' * 101}\n",
            f"topic: bad topic '{'n' * 101}': use lower-case letters, digits and -,"
            " at most 100, like product-news",
        ),
        ("topic: [news, webinars]\n", "topic: expected a topic"),
        ("topic: 2026\n", "topic: expected a topic"),
        ('topic: ""\n', "topic: expected a topic"),
        ("topics: news\n", "unknown key 'topics' (did you mean 'topic'?)"),
    ],
)
def test_a_bad_topic_is_reported_with_file_line_and_the_accepted_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, message: str
) -> None:
    assert _load(tmp_path, monkeypatch, line) == [f"workflows/trial.yml:3: {message}"]


def test_the_shipped_sequences_send_under_the_marketing_topic() -> None:
    templates = {p.stem for p in (SHIPPED.parent / "templates" / "email").glob("[!_]*.j2")}
    sms = {p.stem for p in (SHIPPED.parent / "templates" / "sms").glob("*.j2")}
    workflows = load_workflows(SHIPPED, templates, sms)
    assert {s.name: s.topic for s in workflows.sequences.values()} == {
        "lead-nurture": "marketing",
        "re-engagement": "marketing",
    }
