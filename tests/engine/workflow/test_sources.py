"""sources.yml: the shipped mapping names event types scoring.yml scores, the file is optional,
and every mistake in it is named with file, line and field."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from engine.errors import WorkflowError
from engine.workflow.loading import load_previous, load_workflows
from engine.workflow.spec import SegmentMapping, Unmapped, Workflows
from tests.engine.conftest import EMAIL_TEMPLATES, SHIPPED, SMS_TEMPLATES


def _folder(tmp_path: Path, sources: str | None) -> Path:
    """A workflows folder with the shipped scoring.yml and, when given, this sources.yml."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    shutil.copy(SHIPPED / "scoring.yml", folder / "scoring.yml")
    if sources is not None:
        (folder / "sources.yml").write_text(textwrap.dedent(sources))
    return folder


def _load(folder: Path) -> Workflows:
    return load_workflows(folder, EMAIL_TEMPLATES, SMS_TEMPLATES)


def _problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sources: str) -> list[str]:
    folder = _folder(tmp_path, sources)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WorkflowError) as caught:
        _load(folder.relative_to(tmp_path))
    return [str(problem) for problem in caught.value.problems]


def test_the_shipped_mapping_names_only_event_types_the_shipped_scoring_scores() -> None:
    workflows = _load(SHIPPED)
    scored = {rule.event for rule in workflows.scoring.engagement}
    mapping = workflows.segment

    assert mapping.events["Form Submitted"] == "form_submitted"
    assert mapping.events["Whitepaper Downloaded"] == "content_downloaded"
    assert set(mapping.events.values()) <= scored
    assert mapping.unmapped == Unmapped.KEEP
    assert mapping.traits["employees"] == "company_size"  # the field a fit rule reads
    assert "company_size" in {rule.attribute for rule in workflows.scoring.fit}


def test_without_sources_yml_event_names_are_kept_and_traits_take_their_defaults(
    tmp_path: Path,
) -> None:
    assert _load(_folder(tmp_path, None)).segment == SegmentMapping()


def test_a_mapping_with_drop_and_trait_overrides_is_read_as_written(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        """\
        segment:
          events: {Signed Up: newsletter_subscribed}
          unmapped: drop
          traits: {jobTitle: title, seats: seat_count}
        """,
    )
    assert _load(folder).segment == SegmentMapping(
        events={"Signed Up": "newsletter_subscribed"},
        unmapped=Unmapped.DROP,
        traits={"jobTitle": "title", "seats": "seat_count"},
    )


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        (
            """\
            segment:
              events:
                Signed Up: Newsletter Subscribed
            """,
            "workflows/sources.yml:3: segment.events.Signed Up: bad event type "
            "'Newsletter Subscribed': use lower_snake_case like form_submitted",
        ),
        (
            """\
            segment:
              unmapped: ignore
            """,
            "workflows/sources.yml:2: segment.unmapped: unknown option 'ignore' "
            "(use one of keep, drop)",
        ),
        (
            """\
            segment:
              traits:
                optIn: email_consent
            """,
            "workflows/sources.yml:3: segment.traits.optIn: 'email_consent' cannot come from "
            "a trait",
        ),
        (
            """\
            segment:
              traits:
                size: Company Size
            """,
            "workflows/sources.yml:3: segment.traits.size: bad field 'Company Size'",
        ),
        (
            """\
            segment:
              event: {Signed Up: newsletter_subscribed}
            """,
            "workflows/sources.yml:2: segment: unknown key 'event' (did you mean 'events'?)",
        ),
        (
            """\
            segmnet: {}
            """,
            "workflows/sources.yml:1: unknown key 'segmnet' (did you mean 'segment'?)",
        ),
        (
            """\
            segment:
              events: [Signed Up]
            """,
            "workflows/sources.yml:2: segment.events: expected a mapping",
        ),
        (
            """\
            segment:
              events: {Signed Up: newsletter_subscribed
            """,
            "workflows/sources.yml:3: YAML syntax error",
        ),
    ],
)
def test_a_mistake_in_sources_yml_is_named_with_file_line_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sources: str, expected: str
) -> None:
    found = _problems(tmp_path, monkeypatch, sources)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_sources_yml_is_no_sequence_to_compare_against(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "segment: {unmapped: drop}\n")
    assert load_previous(folder) == {}
