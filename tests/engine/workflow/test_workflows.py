"""Loading workflows/: the shipped examples load, and every mistake is named with file and line."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import textwrap
from datetime import time, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.representer import SafeRepresenter

from engine.errors import WorkflowError
from engine.workflow.loading import load_workflows
from engine.workflow.spec import (
    Branch,
    Goto,
    Limit,
    Match,
    Send,
    Trigger,
    Wait,
    WhenDone,
    Workflows,
)
from tests.shipped import EMAIL_TEMPLATES, SMS_TEMPLATES

SHIPPED = Path(__file__).resolve().parents[3] / "workflows"

TRIAL = """\
name: trial
enrol:
  on: {event: form_submitted}
send:
  from: "Acme <hello@acme.test>"
  sms_from: "+15005550006"
milestones:
  - id: awareness
    steps:
      - email: welcome
      - wait: 2d
  - id: consideration
    enter_when: "score >= 20"
    steps:
      - email: pricing_guide
      - wait: 2d
      - email: case_study
"""


def load(folder: Path) -> Workflows:
    return load_workflows(folder, EMAIL_TEMPLATES, SMS_TEMPLATES)


def problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> list[str]:
    """Write `files` next to the shipped scoring.yml (unless given) and list what is wrong."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    shutil.copy(SHIPPED / "scoring.yml", folder / "scoring.yml")
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WorkflowError) as caught:
        load(Path("workflows"))
    return [str(problem) for problem in caught.value.problems]


def trial(old: str, new: str) -> dict[str, str]:
    """The valid trial sequence with one edit, as the files of a workflows folder."""
    assert old in TRIAL
    return {"trial.yml": TRIAL.replace(old, new)}


# ---- the shipped examples ---------------------------------------------------------------------


def test_the_shipped_scoring_encodes_the_agreed_points_and_thresholds() -> None:
    scoring = load(SHIPPED).scoring
    points = {rule.id: (rule.event, rule.points) for rule in scoring.engagement}
    assert points["form_submission"] == ("form_submitted", 10)
    assert points["newsletter_subscription"] == ("newsletter_subscribed", 5)
    assert points["content_download"] == ("content_downloaded", 8)
    assert points["pricing_page_view"] == ("page_viewed", 7)
    assert points["email_click"] == ("email_clicked", 6)
    assert points["email_open"][1] < points["email_click"][1]
    assert points["demo_request"][1] >= 25
    assert points["unsubscribe"][1] < 0 and points["bounce"][1] < 0
    assert scoring.mql.text == "score >= 20"
    assert "fit >= 15" in scoring.sql.text
    assert Path(scoring.file).resolve() == SHIPPED / "scoring.yml"


def test_the_shipped_scoring_caps_points_so_nobody_farms_them() -> None:
    rules = {rule.id: rule for rule in load(SHIPPED).scoring.engagement}
    pricing = rules["pricing_page_view"]
    assert pricing.where == (("url", Match("contains", "/pricing")),)
    assert pricing.limit == Limit(1, timedelta(days=1))
    assert rules["email_click"].limit == Limit(2, timedelta(days=1))
    assert rules["email_open"].limit == Limit(1, timedelta(days=1))
    assert rules["newsletter_subscription"].limit == Limit(1, None)


def test_the_shipped_fit_rules_reward_senior_big_target_companies_and_not_free_mail() -> None:
    scoring = load(SHIPPED).scoring
    fit = {rule.id: rule for rule in scoring.fit}
    assert fit["senior_title"].match.test("VP of Marketing")
    assert not fit["senior_title"].match.test("Marketing intern")
    assert fit["company_size"].match == Match("at_least", 50.0)
    assert fit["target_industry"].match.op == "one_of"
    assert fit["free_email_domain"].points < 0 and fit["free_email_domain"].match.test("gmail.com")
    assert scoring.decay is not None and scoring.decay.after == timedelta(days=14)
    assert scoring.inactive_after == timedelta(days=45)


def test_the_shipped_lead_nurture_moves_from_awareness_to_decision() -> None:
    sequence = load(SHIPPED).sequences["lead-nurture"]
    assert [m.id for m in sequence.milestones] == ["awareness", "consideration", "decision"]
    assert sequence.enrol.on == (Trigger("event", ("form_submitted", "content_downloaded")),)
    consideration = sequence.milestone("consideration")
    assert consideration.enter_when is not None
    assert consideration.enter_when.text == "score >= 20"
    branch = next(step for step in consideration.steps if isinstance(step, Branch))
    assert branch.condition.text == "clicked within 2d"
    assert branch.then and branch.otherwise
    assert sequence.milestone("awareness").when_done == WhenDone(timedelta(days=14), "exit")
    assert "unsubscribed" in [condition.text for condition in sequence.exit_when]
    assert sequence.send.sms_from == "+15005550006"
    assert sequence.send.window is not None
    assert sequence.send.window.days == frozenset(range(5))
    assert (sequence.send.window.start, sequence.send.window.end) == (time(9), time(18))


def test_the_shipped_re_engagement_wins_back_slipped_leads() -> None:
    sequence = load(SHIPPED).sequences["re-engagement"]
    assert {trigger.kind for trigger in sequence.enrol.on} == {
        "slipped_back",
        "inactive",
        "recycled",
    }
    program = sequence.milestones[0].program
    sends = [step.template for step in program if isinstance(step, Send)]
    assert sends[0] == "win_back" and sends[-1] == "last_chance" and "whats_new" in sends
    assert any(isinstance(step, Branch) for step in sequence.milestones[0].steps)
    rising = sequence.milestones[1].enter_when
    assert rising is not None and "engagement >=" in rising.text
    assert "unsubscribed" in [condition.text for condition in sequence.exit_when]


def test_the_shipped_sequences_use_only_the_shipped_templates() -> None:
    for sequence in load(SHIPPED).sequences.values():
        for milestone in sequence.milestones:
            for step in milestone.program:
                if isinstance(step, Send):
                    shipped = EMAIL_TEMPLATES if step.channel == "email" else SMS_TEMPLATES
                    assert step.template in shipped


def test_versions_are_short_content_hashes(tmp_path: Path) -> None:
    workflows = load(SHIPPED)
    data = (SHIPPED / "lead-nurture.yml").read_bytes()
    assert workflows.sequences["lead-nurture"].version == hashlib.sha256(data).hexdigest()[:12]
    assert len(workflows.version) == 12
    folder = tmp_path / "workflows"
    shutil.copytree(SHIPPED, folder)
    (folder / "re-engagement.yml").write_text(
        (folder / "re-engagement.yml").read_text() + "\n# changed\n"
    )
    changed = load(folder)
    assert changed.version != workflows.version
    assert changed.sequences["lead-nurture"].version == workflows.sequences["lead-nurture"].version


def test_goto_when_done_and_enrol_options_are_read(tmp_path: Path) -> None:
    text = TRIAL.replace("{event: form_submitted}", "recycled\n  again: always")
    text = text.replace("      - email: case_study\n", "      - goto: exit\n")
    text += "    when_done: {goto: awareness}\nexit_when: unsubscribed\n"
    shutil.copy(SHIPPED / "scoring.yml", tmp_path)
    (tmp_path / "trial.yml").write_text(text)
    sequence = load(tmp_path).sequences["trial"]
    assert sequence.milestones[1].steps[-1] == Goto("exit", id="goto:exit")
    assert sequence.milestones[1].when_done == WhenDone(None, "awareness")
    assert sequence.milestones[0].steps[1] == Wait(timedelta(days=2), id="wait")
    assert sequence.enrol.on == (Trigger("recycled"),)
    assert (sequence.enrol.again, sequence.enrol.again_after) == (True, None)
    assert [condition.text for condition in sequence.exit_when] == ["unsubscribed"]


# ---- every mistake, word for word -------------------------------------------------------------


def test_unknown_template_is_reported_with_file_line_and_suggestion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, trial("email: case_study", "email: welcom")) == [
        "workflows/trial.yml:17: milestones[1].steps[2].email: "
        "unknown template 'welcom' (did you mean 'welcome'?)"
    ]


def test_an_sms_step_naming_an_email_template_says_which_step_to_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, trial("email: case_study", "sms: case_study")) == [
        "workflows/trial.yml:17: milestones[1].steps[2].sms: "
        "'case_study' is an email template: use email: case_study"
    ]


def test_an_email_step_naming_an_sms_template_says_which_step_to_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, trial("email: welcome", "email: demo_nudge")) == [
        "workflows/trial.yml:10: milestones[0].steps[0].email: "
        "'demo_nudge' is an SMS template: use sms: demo_nudge"
    ]


def test_an_sms_step_without_a_sender_asks_for_send_sms_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = trial('  sms_from: "+15005550006"\n', "")
    files["trial.yml"] = files["trial.yml"].replace("email: case_study", "sms: quick_question")
    assert problems(tmp_path, monkeypatch, files) == [
        "workflows/trial.yml:16: milestones[1].steps[2].sms: "
        "an sms step needs a sender: add send.sms_from"
    ]


def test_an_unknown_key_is_reported_with_a_suggestion_and_no_second_complaint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = trial("    steps:\n      - email: w", "    stpes:\n      - email: w")
    assert problems(tmp_path, monkeypatch, files) == [
        "workflows/trial.yml:9: milestones[0]: unknown key 'stpes' (did you mean 'steps'?)"
    ]


def test_a_missing_required_key_is_named_at_its_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, trial("name: trial\n", "")) == [
        "workflows/trial.yml:1: name: required key is missing"
    ]


def test_a_wrong_type_says_what_was_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = trial("  sms_from", "  sms_max_segments: many\n  sms_from")
    files["trial.yml"] = files["trial.yml"].replace("milestones:\n", "milestones: awareness\n")
    files["trial.yml"] = files["trial.yml"].split("  - id: awareness")[0]
    assert problems(tmp_path, monkeypatch, files) == [
        "workflows/trial.yml:6: send.sms_max_segments: expected a whole number",
        "workflows/trial.yml:8: milestones: expected a list",
    ]


def test_a_bad_duration_shows_the_accepted_forms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, trial("wait: 2d\n  - id: c", "wait: 2x\n  - id: c")) == [
        "workflows/trial.yml:11: milestones[0].steps[1].wait: "
        "bad duration '2x': use a positive whole number and a unit, e.g. 30m, 12h, 2d, 1w"
    ]


def test_a_goto_to_an_unknown_milestone_suggests_the_closest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, trial("email: case_study", "goto: considertion")) == [
        "workflows/trial.yml:17: milestones[1].steps[2].goto: "
        "unknown milestone 'considertion' (did you mean 'consideration'?)"
    ]


def test_a_when_done_to_an_unknown_milestone_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    when_done = "    when_done: {after: 3d, goto: decision}\n"
    files = trial("      - wait: 2d\n  - id: c", f"      - wait: 2d\n{when_done}  - id: c")
    assert problems(tmp_path, monkeypatch, files) == [
        "workflows/trial.yml:12: milestones[0].when_done.goto: unknown milestone 'decision'"
    ]


def test_duplicate_milestone_ids_are_reported_at_the_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, trial("id: consideration", "id: awareness")) == [
        "workflows/trial.yml:12: milestones[1].id: duplicate milestone id 'awareness'"
    ]


def test_two_files_with_the_same_sequence_name_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, {"a.yml": TRIAL, "b.yml": TRIAL}) == [
        "workflows/b.yml:1: name: sequence name 'trial' is already used by workflows/a.yml"
    ]


def test_a_milestone_nobody_can_reach_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, trial('    enter_when: "score >= 20"\n', "")) == [
        "workflows/trial.yml:12: milestones[1].id: milestone 'consideration' is unreachable: "
        "give it enter_when or point a goto at it"
    ]


def test_a_goto_makes_a_milestone_reachable(tmp_path: Path) -> None:
    text = TRIAL.replace('    enter_when: "score >= 20"\n', "").replace(
        "      - wait: 2d\n  - id: c", "      - wait: 2d\n      - goto: consideration\n  - id: c"
    )
    shutil.copy(SHIPPED / "scoring.yml", tmp_path)
    (tmp_path / "trial.yml").write_text(text)
    assert [m.id for m in load(tmp_path).sequences["trial"].milestones][1] == "consideration"


def test_a_condition_that_does_not_parse_gives_the_parser_message_and_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, trial('"score >= 20"', '"score => 20"')) == [
        "workflows/trial.yml:13: milestones[1].enter_when: "
        "unknown operator '=>' (did you mean '>='?) (at column 7)"
    ]


def test_the_first_milestone_may_not_have_enter_when(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = trial("  - id: awareness\n", '  - id: awareness\n    enter_when: "score >= 5"\n')
    assert problems(tmp_path, monkeypatch, files) == [
        "workflows/trial.yml:9: milestones[0].enter_when: "
        "the first milestone is where leads start; enter_when is not allowed here"
    ]


def test_an_unknown_trigger_kind_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = trial("on: {event: form_submitted}", "on: [{evnt: form_submitted}, slipped, signup]")
    assert problems(tmp_path, monkeypatch, files) == [
        "workflows/trial.yml:3: enrol.on[0]: unknown trigger 'evnt' (did you mean 'event'?)",
        "workflows/trial.yml:3: enrol.on[1]: "
        "unknown trigger 'slipped' (did you mean 'slipped_back'?)",
        "workflows/trial.yml:3: enrol.on[2]: "
        "unknown trigger 'signup' (for an event write {event: signup})",
    ]


def test_a_bad_send_window_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = trial("  sms_from", '  window: {days: mon-fryday, hours: "9-6"}\n  sms_from')
    assert problems(tmp_path, monkeypatch, files) == [
        "workflows/trial.yml:6: send.window.hours: "
        "bad hours '9-6': write them like \"09:00-18:00\"",
        "workflows/trial.yml:6: send.window.days: "
        "bad day 'mon-fryday': write days like mon-fri or mon,wed,fri",
    ]


def test_a_window_that_ends_before_it_starts_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = trial("  sms_from", '  window: {days: "sat, sun", hours: "18:00-09:00"}\n  sms_from')
    assert problems(tmp_path, monkeypatch, files) == [
        "workflows/trial.yml:6: send.window.hours: the window must start before it ends"
    ]


def test_a_sender_without_an_address_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, trial('"Acme <hello@acme.test>"', "Acme")) == [
        "workflows/trial.yml:5: send.from: bad address 'Acme': write it like Acme <hello@acme.test>"
    ]


def test_an_unquoted_phone_number_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, trial('"+15005550006"', "+15005550006")) == [
        "workflows/trial.yml:6: send.sms_from: "
        'expected a phone number in quotes, like "+15005550006"'
    ]


def test_a_goto_back_to_its_own_milestone_needs_a_wait_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = trial("      - email: welcome\n", "      - email: welcome\n      - goto: awareness\n")
    assert problems(tmp_path, monkeypatch, files) == [
        "workflows/trial.yml:11: milestones[0].steps[1].goto: "
        "goto 'awareness' loops back to its own milestone at once: add a wait before it",
        "workflows/trial.yml:12: milestones[0].steps[2]: steps after a goto never run",
    ]


def test_two_keys_in_one_step_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = trial("      - email: welcome\n", "      - email: welcome\n        wait: 1d\n")
    assert problems(tmp_path, monkeypatch, files) == [
        "workflows/trial.yml:10: milestones[0].steps[0]: "
        "one step per '-' item, found email and wait"
    ]


def test_a_branch_is_checked_inside_then_and_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    branch = (
        "      - branch:\n"
        "          if: clicked within 2d\n"
        "          then: [{email: demo_invit}]\n"
        "          else: [{wiat: 1d}]\n"
    )
    assert problems(tmp_path, monkeypatch, trial("      - email: case_study\n", branch)) == [
        "workflows/trial.yml:19: milestones[1].steps[2].branch.then[0].email: "
        "unknown template 'demo_invit' (did you mean 'demo_invite'?)",
        "workflows/trial.yml:20: milestones[1].steps[2].branch.else[0]: "
        "unknown step 'wiat' (did you mean 'wait'?)",
    ]


def test_a_yaml_syntax_error_is_a_problem_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, trial("name: trial\n", "name: trial\n  bad: [\n")) == [
        "workflows/trial.yml:2: YAML syntax error: mapping values are not allowed here"
    ]


def test_a_missing_scoring_file_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "workflows").mkdir()
    with pytest.raises(WorkflowError) as caught:
        load(Path("workflows"))
    assert [str(problem) for problem in caught.value.problems] == [
        "workflows/scoring.yml:1: file not found: "
        "the workflows folder needs scoring.yml with the thresholds"
    ]


SCORING = """\
thresholds:
  mql: 20
  sql: "score >= 60 and fit >= 15"
engagement:
  - {id: form, event: form_submitted, points: 10}
fit:
  - {id: senior, attribute: title, matches: "(?i)vp", points: 10}
"""


def scoring(old: str, new: str) -> dict[str, str]:
    assert old in SCORING
    return {"scoring.yml": SCORING.replace(old, new)}


def test_scoring_points_must_be_a_whole_non_zero_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    click = "  - {id: click, event: email_clicked, points: lots}\n"
    files = scoring("points: 10}\nfit", f"points: 0}}\n{click}fit")
    assert problems(tmp_path, monkeypatch, files) == [
        "workflows/scoring.yml:5: engagement[0].points: "
        "points may not be 0: remove the rule instead",
        "workflows/scoring.yml:6: engagement[1].points: expected a whole number of points",
    ]


def test_an_invalid_regex_in_matches_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, scoring('"(?i)vp"', '"(vp"')) == [
        "workflows/scoring.yml:7: fit[0].matches: "
        "invalid regex: missing ), unterminated subpattern at position 0"
    ]


def test_a_fit_rule_needs_exactly_one_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = scoring('matches: "(?i)vp", ', "at_least: 5, at_most: 9, ")
    assert problems(tmp_path, monkeypatch, files) == [
        "workflows/scoring.yml:7: fit[0]: expected one test, found at_least and at_most"
    ]


def test_a_bad_limit_shows_the_accepted_forms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, scoring("10}\nfit", "10, limit: twice}\nfit")) == [
        "workflows/scoring.yml:5: engagement[0].limit: "
        'bad limit \'twice\': use once, "once per day", "3 per 7d" or {count: 3, per: 7d}'
    ]


def test_a_duplicate_rule_id_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems(tmp_path, monkeypatch, scoring("id: senior", "id: form")) == [
        "workflows/scoring.yml:7: fit[0].id: duplicate rule id 'form'"
    ]


def test_decay_takes_points_or_percent_not_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"scoring.yml": SCORING + "decay: {after: 14d, every: 7d, points: 5, percent: 10}\n"}
    assert problems(tmp_path, monkeypatch, files) == [
        "workflows/scoring.yml:8: decay: give either points or percent"
    ]


def test_a_threshold_must_be_a_number_or_a_condition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, scoring("mql: 20", "mql: [20]")) == [
        "workflows/scoring.yml:2: thresholds.mql: expected a number or a condition"
    ]


def test_every_problem_of_a_file_is_reported_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = TRIAL.replace("email: welcome", "email: welcom")
    text = text.replace("wait: 2d\n  - id", "wait: 2x\n  - id")
    text = text.replace('"score >= 20"', '"score >="')
    found = problems(tmp_path, monkeypatch, {"trial.yml": text})
    assert len(found) == 3
    assert [line.split(":")[1] for line in found] == ["10", "11", "13"]


def test_problems_from_several_files_come_together_sorted_by_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {
        "scoring.yml": SCORING.replace("mql: 20", "mql: twenty"),
        "trial.yml": TRIAL.replace("wait: 2d\n  - id", "wait: soon\n  - id"),
    }
    found = problems(tmp_path, monkeypatch, files)
    assert [line.split(": ")[0] for line in found] == [
        "workflows/scoring.yml:2",
        "workflows/trial.yml:11",
    ]


# ---- robustness -------------------------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["2d", "exit", "welcome", "mon-fri", "score >= 20", "once", "09:00-18:00"]),
)
_VALUES = st.one_of(
    _SCALARS,
    st.lists(_SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=8), _SCALARS, max_size=2),
)
_MUTATION = st.tuples(
    st.integers(min_value=0), st.sampled_from(["delete", "replace", "replace"]), _VALUES
)


def _slots(node: Node) -> list[tuple[Node, int]]:
    """Every (parent, index) where a value sits, depth first."""
    slots: list[tuple[Node, int]] = []
    if isinstance(node, MappingNode | SequenceNode):
        for index, item in enumerate(node.value):
            slots.append((node, index))
            slots.extend(_slots(item[1] if isinstance(node, MappingNode) else item))
    return slots


def _mutate(root: Node, pick: int, action: str, value: object) -> None:
    slots = _slots(root)
    if not slots:
        return
    parent, index = slots[pick % len(slots)]
    if action == "delete":
        del parent.value[index]
        return
    replacement = SafeRepresenter().represent_data(value)
    if isinstance(parent, MappingNode):
        parent.value[index] = (parent.value[index][0], replacement)
    else:
        parent.value[index] = replacement


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(["scoring.yml", "lead-nurture.yml", "re-engagement.yml"]),
    st.lists(_MUTATION, min_size=1, max_size=3),
)
def test_mutated_shipped_workflows_load_or_raise_workflow_error_only(
    name: str, mutations: list[tuple[int, str, object]]
) -> None:
    root = yaml.compose((SHIPPED / name).read_text(), Loader=yaml.SafeLoader)
    for pick, action, value in mutations:
        _mutate(root, pick, action, value)
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        for path in SHIPPED.glob("*.yml"):
            shutil.copy(path, folder)
        (folder / name).write_text(yaml.serialize(root, Dumper=yaml.SafeDumper))
        try:
            load(folder)
        except WorkflowError as err:
            assert err.problems
            assert all(problem.line >= 1 for problem in err.problems)
