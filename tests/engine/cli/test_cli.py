"""The nurture command: every command with good and bad input, exit codes scripts can trust."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from engine.cli.main import main
from engine.db import make_engine, make_sessionmaker
from engine.models import Suppression
from tests.engine.faults import MESSAGE, JourneyFault

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "engine" / "fixtures" / "workflows"
# `nurture` in a process of its own whose journey raises, as after an edit it cannot handle:
# what reaches the terminal there is what a person sees (pytest captures no log records).
BROKEN_JOURNEY = f"""
from engine.cli.main import main
from engine.funnel import service

def broken(*args):
    raise RuntimeError({MESSAGE!r})

service._react = broken
main(prog_name="nurture")
"""


@pytest.fixture
def nurture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run `nurture ARGS` on a fresh SQLite database with the test workflows."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("NURTURE_WORKFLOWS", str(FIXTURES))
    monkeypatch.setenv("NURTURE_TEMPLATES", str(ROOT / "templates"))
    monkeypatch.setenv("NURTURE_OUTBOX_DIR", str(tmp_path / "outbox"))
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(main, list(args), catch_exceptions=False)

    assert run("init").exit_code == 0
    return run


def test_validate_accepts_the_shipped_workflows_and_templates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == 0
    assert result.output.startswith("ok: scoring and 2 sequence(s) valid")


def test_validate_lists_every_problem_with_file_and_line_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "workflows"
    shutil.copytree(FIXTURES, folder)
    drip = (folder / "drip.yml").read_text()
    (folder / "drip.yml").write_text(drip.replace("{email: welcome}", "{email: welcom}"))
    (folder / "sending.yml").write_text("quiet_hours: {sms: '25:00-08:00'}\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["--workflows", "workflows", "--templates", str(ROOT / "templates"), "validate"]
    )
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert (
        "workflows/drip.yml:6: milestones[0].steps[0].email: unknown template 'welcom' "
        "(did you mean 'welcome'?)" in lines
    )
    assert (
        "workflows/sending.yml:1: quiet_hours.sms: bad hours '25:00-08:00': use "
        '"HH:MM-HH:MM", e.g. "21:00-08:00"' in lines
    )
    assert lines[-1] == "2 problem(s) found"


def test_validate_renders_every_template_a_step_uses_and_names_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    welcome = templates / "email" / "welcome.j2"
    welcome.write_text(
        welcome.read_text().replace("{{", "{{ lead.favourite_colour.upper() }}{{", 1)
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["--workflows", str(FIXTURES), "--templates", str(templates), "validate"]
    )
    assert result.exit_code == 1
    [problem] = [line for line in result.output.splitlines() if "welcome" in line]
    assert problem.startswith(
        f"{FIXTURES / 'drip.yml'}:6: milestones[0].steps[0].email: template 'welcome'"
    )
    assert "favourite_colour" in problem


def test_track_records_an_event_and_lead_show_explains_the_score(nurture) -> None:  # type: ignore[no-untyped-def]
    result = nurture("track", "ana@northwind.test", "content_downloaded", "--prop", "title=Report")
    assert result.exit_code == 0
    assert result.output.strip() == "content_downloaded recorded: +8 points, stage lead"
    nurture("track", "ana@northwind.test", "page_viewed", "--prop", "url=/pricing", "--id", "v1")
    again = nurture(
        "track", "ana@northwind.test", "page_viewed", "--prop", "url=/pricing", "--id", "v1"
    )
    assert again.output.strip() == "duplicate: event id v1 was already recorded"
    shown = json.loads(nurture("lead", "show", "ana@northwind.test", "--json").output)
    assert shown["score"] == {"total": 15.0, "fit": 0.0, "engagement": 15.0}
    assert [e["rule"] for e in shown["ledger"]] == ["pricing", "download"]
    assert shown["enrolments"][0]["sequence"] == "drip"
    table = nurture("lead", "show", "ana@northwind.test")
    assert "Why (score ledger, newest first)" in table.output and "pricing" in table.output


def test_track_stores_an_event_whose_processing_fails_and_warns_in_one_line_not_a_traceback(
    nurture,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    track = ["track", "ana@northwind.test", "form_submitted", "--id", "f1"]
    done = subprocess.run(
        [sys.executable, "-c", BROKEN_JOURNEY, *track],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"warning: form_submitted recorded as event 1, but processing failed (RuntimeError: "
        f"{MESSAGE}); the scheduler retries it, see `nurture lead show ana@northwind.test`"
    ]
    shown = json.loads(nurture("lead", "show", "ana@northwind.test", "--json").output)
    (event,) = shown["unprocessed_events"]
    assert (event["id"], event["idempotency_key"], event["status"], event["attempts"]) == (
        1,
        "f1",
        "failed",
        1,
    )
    assert event["error"] == f"RuntimeError: {MESSAGE}"
    assert event["retry_at"] is not None
    assert shown["ledger"] == [] and shown["enrolments"] == []
    table = nurture("lead", "show", "ana@northwind.test").output
    assert "Unprocessed events (retried by the scheduler)" in table


def test_track_json_says_processing_failed_and_a_repeat_is_a_duplicate(
    nurture,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    JourneyFault(monkeypatch)
    track = ["track", "ana@northwind.test", "form_submitted", "--id", "f1"]

    first = nurture(*track, "--json")
    again = nurture(*track)

    assert first.exit_code == again.exit_code == 0
    summary = json.loads(first.stdout)
    assert (summary["event_id"], summary["duplicate"], summary["failed"]) == (
        1,
        False,
        f"RuntimeError: {MESSAGE}",
    )
    assert again.stdout.strip() == "duplicate: event id f1 was already recorded"
    assert again.stderr.startswith("warning: form_submitted recorded as event 1, but processing")
    assert json.loads(nurture("lead", "show", "1", "--json").output)["score"]["total"] == 0


def test_bad_input_gets_a_clear_message_and_the_right_exit_code(nurture) -> None:  # type: ignore[no-untyped-def]
    unknown = nurture("lead", "show", "nobody@example.test")
    assert (unknown.exit_code, unknown.output.strip()) == (
        1,
        "error: no lead with email 'nobody@example.test'",
    )
    bad_prop = nurture("track", "a@b.test", "form_submitted", "--prop", "oops")
    assert (bad_prop.exit_code, bad_prop.output.strip()) == (
        2,
        "error: --prop 'oops': use KEY=VALUE",
    )
    bad_email = nurture("track", "not-an-email", "form_submitted")
    assert (bad_email.exit_code, bad_email.output.strip()) == (
        2,
        "error: email: invalid email address 'not-an-email'",
    )
    bad_time = nurture("track", "a@b.test", "form_submitted", "--at", "yesterday")
    assert bad_time.exit_code == 2 and "--at 'yesterday' is not an ISO 8601 time" in bad_time.output


def test_leads_import_lands_good_rows_and_reports_bad_ones_by_row_number(
    nurture,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    csv = tmp_path / "leads.csv"
    csv.write_text(
        "email,first_name,title,phone,sms_consent\n"
        "ann@initech.test,Ann,VP Sales,+14155550100,yes\n"
        "not-an-email,Bob,,,\n"
        "cat@globex.test,Cat,,12,no\n"
        "dan@hooli.test,Dan,,,maybe\n"
        "eve@umbrella.test,Eve,Director,,\n"
    )
    result = nurture("leads", "import", str(csv))
    assert result.exit_code == 1
    assert f"{csv}:3: email: invalid email address 'not-an-email'" in result.output
    assert f"{csv}:4: phone: invalid phone number '12': use digits, e.g. +45 20 12 34 56" in (
        result.output
    )
    assert f"{csv}:5: sms_consent: 'maybe' is not true/false or yes/no" in result.output
    assert "2 lead(s) imported, 3 row(s) rejected" in result.output
    ann = json.loads(nurture("lead", "show", "ann@initech.test", "--json").output)
    assert ann["lead"]["sms_consent"] is True and ann["score"]["fit"] == 10


def test_an_import_row_giving_a_lead_another_leads_phone_is_imported_and_the_pair_listed(
    nurture,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    (tmp_path / "first.csv").write_text("email,phone\nann@initech.test,+14155550100\n")
    assert nurture("leads", "import", str(tmp_path / "first.csv")).exit_code == 0
    csv = tmp_path / "leads.csv"
    csv.write_text("email,phone\nbob@initech.test,+14155550100\ncat@globex.test,+14155550101\n")
    result = nurture("leads", "import", str(csv))
    assert result.exit_code == 0, result.output
    assert "2 lead(s) imported" in result.output
    listed = nurture("leads", "conflicts", "--json")
    (conflict,) = json.loads(listed.output)
    assert (conflict["field"], conflict["value"]) == ("phone", "+14155550100"), conflict
    bob = json.loads(nurture("lead", "show", "bob@initech.test", "--json").output)
    assert bob["lead"]["phone"] is None


def test_jsonl_import_reports_lines_that_are_not_json(nurture, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    jsonl = tmp_path / "leads.jsonl"
    jsonl.write_text('{"email": "a@x.test"}\n{oops\n["list"]\n')
    result = nurture("leads", "import", str(jsonl), "--json")
    summary = json.loads(result.output)
    assert (result.exit_code, summary["imported"], summary["rejected"]) == (1, 1, 2)
    assert [p["row"] for p in summary["problems"]] == [2, 3]


def test_lead_why_prints_the_decision_trace_as_a_table_or_json(nurture) -> None:  # type: ignore[no-untyped-def]
    nurture("track", "ana@northwind.test", "content_downloaded", "--prop", "title=Report")
    nurture("track", "ana@northwind.test", "page_viewed", "--prop", "url=/pricing")
    shown = json.loads(nurture("lead", "why", "ana@northwind.test", "--json").output)
    assert shown["lead"] == {"id": 1, "email": "ana@northwind.test", "stage": "lead", "score": 15.0}
    trace = shown["trace"]
    assert set(trace[0]) == {"at", "kind", "text", "reason", "ref"}
    scores = [e["text"].split(" (")[0] for e in trace if e["kind"] == "score"]
    assert scores == ["+8 engagement download", "+7 engagement pricing"]
    assert [e["text"] for e in trace if e["kind"] == "event"] == [
        "content_downloaded (title=Report)",
        "page_viewed (url=/pricing)",
    ]
    kinds = [e["kind"] for e in trace]
    assert kinds == ["event", "score", "milestone", "event", "score"]
    assert trace[2]["text"].startswith("drip: awareness (")
    assert [e["at"] for e in trace] == sorted(e["at"] for e in trace)
    assert json.loads(nurture("lead", "why", "1", "--json").output) == shown  # by id too
    table = nurture("lead", "why", "ana@northwind.test")
    assert table.exit_code == 0
    header = table.output.splitlines()[0]
    assert header.strip() == "ana@northwind.test: stage lead, score 15"
    for word in ("time (UTC)", "kind", "what", "reason", "download", "pricing", "milestone"):
        assert word in table.output
    unknown = nurture("lead", "why", "nobody@example.test")
    assert (unknown.exit_code, unknown.output.strip()) == (
        1,
        "error: no lead with email 'nobody@example.test'",
    )
    assert nurture("lead", "why", "999").output.strip() == "error: no lead with id 999"


def test_stats_handoffs_recycle_and_won_follow_a_lead_to_sales_and_back(nurture) -> None:  # type: ignore[no-untyped-def]
    nurture("track", "vp@x.test", "demo_requested")
    result = nurture("track", "vp@x.test", "form_submitted")
    assert "stage mql" in result.output  # 40 points, fit 0: not sales-ready
    handoffs = json.loads(nurture("handoffs", "--json").output)
    assert handoffs == []
    stats = json.loads(nurture("stats", "--json").output)
    assert stats["stages"]["mql"] == 1 and stats["sequences"]["drip"]["enrolled"] == 1
    assert nurture("recycle", "vp@x.test").output.strip() == "vp@x.test: stage recycled"
    refused = nurture("recycle", "vp@x.test")
    assert refused.exit_code == 1
    assert "only an mql, sql or customer can be recycled" in refused.output
    assert nurture("won", "vp@x.test").output.strip() == "vp@x.test: stage customer"


def test_simulate_prints_the_timeline_of_a_scripted_lead(
    nurture,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    script = tmp_path / "script.yml"
    script.write_text(
        "lead: {email: sam@initech.test, first_name: Sam}\n"
        "events:\n"
        "  - {day: 0, event: form_submitted}\n"
        "  - {day: 1, event: email_clicked, of: welcome}\n"
        "  - {day: 1, time: '11:00', event: content_downloaded}\n"
    )
    result = nurture("simulate", "drip", "--script", str(script), "--days", "10", "--json")
    assert result.exit_code == 0, result.output
    timeline = json.loads(result.output)
    kinds = [(e["kind"], e["text"].split(":")[0]) for e in timeline]
    assert ("sent", "email welcome") in kinds
    assert ("milestone", "drip") in kinds
    texts = [e["text"] for e in timeline]
    assert any("consideration (enter_when: score >= 20)" in t for t in texts)
    assert any(t.startswith("email pricing_guide") for t in texts)
    broken = tmp_path / "broken.yml"
    broken.write_text("lead: {email: a@b.test}\nevents: [{day: -1, event: x}]\n")
    bad = nurture("simulate", "drip", "--script", str(broken))
    assert bad.exit_code == 2
    assert f"{broken}: events[0].day: expected a number of days from the start" in bad.output


def test_preview_renders_every_step_and_writes_html_files(nurture, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = nurture("preview", "drip", "--out", str(tmp_path / "preview"))
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "preview").glob("*.html"))
    assert (
        "drip-awareness-welcome.html" in written
        and "drip-consideration-demo_invite.html" in written
    )
    assert "GSM-7" in result.output
    unknown = nurture("preview", "nope")
    assert unknown.exit_code == 2 and "unknown sequence 'nope'" in unknown.output


def test_lead_show_lists_suppressed_addresses_and_unsubscribed_topics(  # type: ignore[no-untyped-def]
    nurture, tmp_path: Path
) -> None:
    nurture("track", "ana@northwind.test", "form_submitted")
    left = nurture("track", "ana@northwind.test", "topic_unsubscribed", "--prop", "topic=webinars")
    assert left.exit_code == 0, left.output
    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    with make_sessionmaker(engine).begin() as s:
        reason, at = "bounced: mailbox unavailable", datetime(2026, 3, 2, tzinfo=UTC)
        s.add(
            Suppression(channel="email", address="ana@northwind.test", reason=reason, created_at=at)
        )
    engine.dispose()

    shown = json.loads(nurture("lead", "show", "ana@northwind.test", "--json").output)
    table = nurture("lead", "show", "ana@northwind.test").output

    assert [(s["channel"], s["address"], s["reason"]) for s in shown["suppressions"]] == [
        ("email", "ana@northwind.test", "bounced: mailbox unavailable")
    ]
    assert [(t["topic"], t["source"]) for t in shown["unsubscribed_topics"]] == [
        ("webinars", "cli")
    ]
    assert "Suppressed addresses" in table and "mailbox" in table
    assert "Unsubscribed topics" in table and "webinars" in table
    assert "email consent yes" in table
