"""`nurture leads import`: every good row kept, every bad one reported by its row number with
the API's rules, the file streamed in flat memory."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from engine.cli import imports
from engine.cli.main import main
from engine.errors import InvalidLeadError
from engine.funnel import service
from engine.funnel.lead_files import LeadFile, Rejected, Row
from engine.funnel.leads import Identity
from engine.models import Lead, LeadConflict

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "engine" / "fixtures" / "workflows"
Nurture = Callable[..., Result]


def _runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str) -> Nurture:
    """`nurture ARGS` against the database at `url`, with the test workflows."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NURTURE_DATABASE_URL", url)
    monkeypatch.setenv("NURTURE_WORKFLOWS", str(FIXTURES))
    monkeypatch.setenv("NURTURE_TEMPLATES", str(ROOT / "templates"))
    monkeypatch.setenv("NURTURE_OUTBOX_DIR", str(tmp_path / "outbox"))
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(main, list(args), catch_exceptions=False)

    return run


@pytest.fixture
def nurture(db: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Nurture:
    """Run `nurture ARGS` on the empty test database (SQLite, then PostgreSQL)."""
    return _runner(monkeypatch, tmp_path, db.url.render_as_string(hide_password=False))


@pytest.fixture
def nurture_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Nurture:
    """Run `nurture ARGS` on a fresh SQLite file made by `nurture init`."""
    run = _runner(monkeypatch, tmp_path, f"sqlite:///{tmp_path / 'cli.db'}")
    assert run("init").exit_code == 0
    return run


def _report(result: Result) -> dict[str, object]:
    report = json.loads(result.stdout)
    assert isinstance(report, dict)
    return report


def _emails(nurture: Nurture, *emails: str) -> list[str | None]:
    """Which of these emails name a stored lead (the email back) or nobody (None)."""
    found = []
    for email in emails:
        shown = nurture("lead", "show", email, "--json")
        found.append(json.loads(shown.stdout)["lead"]["email"] if shown.exit_code == 0 else None)
    return found


def test_a_10_mb_field_is_reported_by_its_row_and_the_good_rows_around_it_are_imported(
    nurture: Nurture, tmp_path: Path
) -> None:
    csv = tmp_path / "leads.csv"
    csv.write_text(
        "email,first_name,notes\n"
        "ann@initech.test,Ann,likes tea\n"
        f"bob@initech.test,Bob,{'x' * 10_000_000}\n"
        "cat@globex.test,Cat,\n"
    )

    result = nurture("leads", "import", str(csv), "--json")

    assert result.exit_code == 1
    assert _report(result) == {
        "imported": 2,
        "rejected": 1,
        "problems": [{"row": 3, "field": "notes", "error": "must be at most 2000 characters"}],
    }
    assert _emails(nurture, "ann@initech.test", "bob@initech.test", "cat@globex.test") == [
        "ann@initech.test",
        None,
        "cat@globex.test",
    ]


def test_a_time_zone_the_api_refuses_is_refused_with_its_row_number_not_stored_as_utc(
    nurture: Nurture, tmp_path: Path
) -> None:
    csv = tmp_path / "leads.csv"
    csv.write_text(
        "email,timezone\nann@initech.test,Europe/Berlin\nbob@initech.test,Mars/Olympus\n"
    )

    result = nurture("leads", "import", str(csv))

    assert result.exit_code == 1
    assert (
        f"{csv}:3: timezone: unknown time zone 'Mars/Olympus': use an IANA name, "
        "e.g. Europe/Berlin" in result.output
    )
    assert "1 lead(s) imported, 1 row(s) rejected" in result.output
    assert _emails(nurture, "bob@initech.test") == [None]


def test_a_lead_named_twice_in_one_file_keeps_the_first_row_and_names_it_in_the_later_ones(
    nurture: Nurture, tmp_path: Path
) -> None:
    csv = tmp_path / "leads.csv"
    csv.write_text(
        "email,first_name,phone,external_id\n"
        "ann@initech.test,Ann,,\n"
        "bob@initech.test,Bob,+1 415 555 0100,crm-7\n"
        " ANN@Initech.test ,Annie,,\n"
        "cat@globex.test,Cat,+14155550100,\n"
        "dan@hooli.test,Dan,,crm-7\n"
    )

    result = nurture("leads", "import", str(csv), "--json")

    assert result.exit_code == 1
    assert _report(result)["problems"] == [
        {"row": 4, "field": "email", "error": "duplicate of row 2"},
        {"row": 5, "field": "phone", "error": "duplicate of row 3"},
        {"row": 6, "field": "external_id", "error": "duplicate of row 3"},
    ]
    ann = json.loads(nurture("lead", "show", "ann@initech.test", "--json").stdout)
    assert ann["lead"]["first_name"] == "Ann"


def test_bad_emails_phones_and_consents_are_each_reported_and_the_exit_code_is_1(
    nurture: Nurture, tmp_path: Path
) -> None:
    csv = tmp_path / "leads.csv"
    csv.write_text(
        "email,phone,sms_consent,company_size\n"
        "not-an-email,,,\n"
        "ann@initech.test,555-CALL-NOW,,\n"
        "bob@initech.test,+14155550100,maybe,\n"
        "cat@globex.test,0044 20 7946 0958,yes,250\n"
    )

    result = nurture("leads", "import", str(csv), "--json")

    assert result.exit_code == 1
    assert _report(result) == {
        "imported": 1,
        "rejected": 3,
        "problems": [
            {"row": 2, "field": "email", "error": "invalid email address 'not-an-email'"},
            {
                "row": 3,
                "field": "phone",
                "error": "invalid phone number '555-CALL-NOW': use digits, e.g. +45 20 12 34 56",
            },
            {"row": 4, "field": "sms_consent", "error": "'maybe' is not true/false or yes/no"},
        ],
    }
    cat = json.loads(nurture("lead", "show", "cat@globex.test", "--json").stdout)["lead"]
    assert (cat["phone"], cat["sms_consent"], cat["fields"]) == (
        "+442079460958",
        True,
        {"company_size": "250"},
    )


def test_a_crm_export_in_national_formats_reads_each_number_in_its_rows_country(
    nurture: Nurture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NURTURE_DEFAULT_REGION", "DK")
    csv = tmp_path / "crm-export.csv"
    csv.write_text(
        "email,first_name,phone,country\n"
        "Jens.Hansen@Blåbær.dk,Jens,20 12 34 56,\n"  # the installation's region
        "zofia@firma.pl,Zofia,512 345 678,PL\n"
        "anna@firma.de,Anna,030 1234567,de\n"
        "ivan@firma.ru,Иван,8 (912) 345-67-89,RU\n"
        "dana@initech.test,Dana,+1 (415) 555-0100,DK\n"  # a + number is its own country's
        "lars@firma.dk,Lars,20 12 34,\n"
        "piotr@firma.pl,Piotr,512 345 678,Poland\n",
        encoding="utf-8",
    )

    result = nurture("leads", "import", str(csv), "--json")

    report = _report(result)
    assert (result.exit_code, report["imported"]) == (1, 5)
    assert report["problems"] == [
        {
            "row": 7,
            "field": "phone",
            "error": "invalid phone number '20 12 34': is not a number in the numbering plan of DK",
        },
        {
            "row": 8,
            "field": "phone",
            "error": "invalid phone number '512 345 678': is not a number in the numbering plan"
            " of DK (the lead's country 'Poland' is not a two-letter code such as PL)",
        },
    ]
    phones = {
        email: json.loads(nurture("lead", "show", email, "--json").stdout)["lead"]["phone"]
        for email in (
            "jens.hansen@blåbær.dk",
            "zofia@firma.pl",
            "anna@firma.de",
            "ivan@firma.ru",
            "dana@initech.test",
        )
    }
    assert phones == {
        "jens.hansen@blåbær.dk": "+4520123456",
        "zofia@firma.pl": "+48512345678",
        "anna@firma.de": "+49301234567",
        "ivan@firma.ru": "+79123456789",
        "dana@initech.test": "+14155550100",
    }
    zofia = json.loads(nurture("lead", "show", "ZOFIA@firma.pl", "--json").stdout)["lead"]
    assert (zofia["phone_region"], zofia["phone_kind"], zofia["timezone"]) == ("PL", "mobile", None)
    assert (zofia["send_zone"], zofia["send_zone_from"]) == ("Europe/Warsaw", "phone")
    shown = nurture("lead", "show", "anna@firma.de").stdout
    assert "phone +49301234567 (fixed, DE)" in shown
    assert "sends timed in Europe/Berlin (from the phone number)" in shown
    ivan = json.loads(nurture("lead", "show", "ivan@firma.ru", "--json").stdout)["lead"]
    assert (ivan["first_name"], ivan["send_zone"], ivan["send_zone_from"]) == (
        "Иван",
        None,
        "default",
    )


def test_a_clean_file_exits_0_with_an_empty_problem_list(nurture: Nurture, tmp_path: Path) -> None:
    csv = tmp_path / "leads.csv"
    csv.write_text("email\nann@initech.test\n")

    result = nurture("leads", "import", str(csv), "--json")

    assert (result.exit_code, _report(result)) == (
        0,
        {"imported": 1, "rejected": 0, "problems": []},
    )


def test_rows_are_numbered_as_a_person_counts_them_across_quoted_newlines_and_blank_lines(
    nurture: Nurture, tmp_path: Path
) -> None:
    csv = tmp_path / "leads.csv"
    csv.write_text(
        'email,notes\nann@initech.test,"two\nlines"\n\nbob@x,\ncat@globex.test,"a ""quote"""\n'
    )

    result = nurture("leads", "import", str(csv), "--json")

    assert _report(result)["problems"] == [
        {"row": 4, "field": "email", "error": "invalid email address 'bob@x'"}
    ]
    assert _report(result)["imported"] == 2


def test_a_header_naming_a_lead_attribute_as_a_custom_field_refuses_the_file_before_any_row(
    nurture: Nurture, tmp_path: Path
) -> None:
    csv = tmp_path / "leads.csv"
    csv.write_text("email,owner\nann@initech.test,sam\n")

    result = nurture("leads", "import", str(csv))

    assert result.exit_code == 2
    assert (
        f"error: {csv}: column 'owner' in the header: owner: is a lead attribute, "
        "not a custom field name" in result.output
    )
    assert _emails(nurture, "ann@initech.test") == [None]


def test_json_lines_get_the_same_rules_row_numbers_and_duplicate_check(
    nurture: Nurture, tmp_path: Path
) -> None:
    jsonl = tmp_path / "leads.jsonl"
    lines = [
        {"email": "ann@initech.test", "sms_consent": "no", "company_size": 250},
        {"email": "bob@initech.test", "timezone": "Mars/Olympus"},
        {"email": "cat@globex.test", "tags": ["a", "b"]},
        {"email": "ANN@initech.test"},
        {"email": "dan@hooli.test", "phone": ""},
    ]
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n{oops\n")

    result = nurture("leads", "import", str(jsonl), "--json")

    report = _report(result)
    assert (result.exit_code, report["imported"], report["rejected"]) == (1, 2, 4)
    assert [(p["row"], p["field"]) for p in report["problems"]] == [  # type: ignore[attr-defined]
        (2, "timezone"),
        (3, "tags"),
        (4, "email"),
        (7, None),
    ]


def test_a_row_the_engine_refuses_in_its_batch_costs_a_second_pass_not_its_good_rows(
    nurture: Nurture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imports, "BATCH", 3)
    applied = service.apply_attributes

    def refusing(lead: Lead, identity: Identity, *args: Any) -> bool:
        if identity.email == "b2@x.test":  # passes the row checks, refused while writing
            raise InvalidLeadError("'+14155550100' belongs to another lead (id 1)", "phone")
        return applied(lead, identity, *args)

    monkeypatch.setattr(service, "apply_attributes", refusing)
    csv = tmp_path / "leads.csv"
    csv.write_text("email,phone\nb1@x.test,\nb2@x.test,+14155550100\nb3@x.test,\nb4@x.test,\n")

    result = nurture("leads", "import", str(csv), "--json")

    assert _report(result) == {
        "imported": 3,
        "rejected": 1,
        "problems": [
            {"row": 3, "field": "phone", "error": "'+14155550100' belongs to another lead (id 1)"}
        ],
    }
    assert _emails(nurture, "b1@x.test", "b2@x.test", "b3@x.test", "b4@x.test") == [
        "b1@x.test",
        None,
        "b3@x.test",
        "b4@x.test",
    ]


def test_a_row_giving_another_leads_phone_is_imported_without_it_and_the_conflict_listed(
    nurture: Nurture, db: Engine, tmp_path: Path
) -> None:
    (tmp_path / "first.csv").write_text("email,phone\nann@initech.test,+14155550100\n")
    assert nurture("leads", "import", str(tmp_path / "first.csv")).exit_code == 0
    csv = tmp_path / "leads.csv"
    csv.write_text("email,phone\nb1@x.test,\nb2@x.test,+14155550100\n")

    result = nurture("leads", "import", str(csv), "--json")

    assert _report(result) == {"imported": 2, "rejected": 0, "problems": []}
    with Session(db) as s:
        b2 = s.scalars(select(Lead).where(Lead.email == "b2@x.test")).one()
        (conflict,) = s.scalars(select(LeadConflict)).all()
        assert b2.phone is None
        assert (conflict.lead_id, conflict.other_id, conflict.source) == (b2.id, 1, "import")


# --- Memory -------------------------------------------------------------------------------------


def _write_leads(path: Path, rows: int, start: int = 0) -> Path:
    with path.open("w") as out:
        out.write("email,first_name,company,phone,timezone,plan\n")
        for i in range(start, start + rows):
            out.write(
                f"lead{i}@example{i % 97}.test,Name{i},Co {i % 1000},"
                f"+1415{2_000_000 + i % 8_000_000:07d},Europe/Berlin,pro\n"
            )
    return path


def _peak_reading(path: Path) -> tuple[int, int]:
    """(good rows, peak bytes Python allocated) reading and checking the whole file."""
    tracemalloc.start()
    try:
        with LeadFile(path) as leads:
            good = sum(isinstance(item, Row) for item in leads)
        return good, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_50k_rows_takes_no_more_memory_than_5k(tmp_path: Path) -> None:
    # Each row's address and number are read by their libraries (a tenth of a millisecond,
    # five times that under tracemalloc): ten times the rows, the same peak.
    small = _peak_reading(_write_leads(tmp_path / "small.csv", 5_000))
    large = _peak_reading(_write_leads(tmp_path / "large.csv", 50_000))

    assert (small[0], large[0]) == (5_000, 50_000)
    # Flat: a list of the rows would take over 100 MB; the identities seen live on disk.
    assert large[1] < 512 * 1024, large  # measured: about 60 kB for either
    assert large[1] < small[1] + 128 * 1024, (small, large)


def test_an_import_of_2400_rows_peaks_where_one_of_600_rows_does(
    nurture_sqlite: Nurture, tmp_path: Path
) -> None:
    def peak(rows: int, start: int) -> int:
        path = _write_leads(tmp_path / f"leads{rows}.csv", rows, start)
        tracemalloc.start()
        try:
            result = nurture_sqlite("leads", "import", str(path), "--json")
            assert _report(result)["imported"] == rows
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(200, 10_000_000)  # caches warm (SQLAlchemy's statements, the workflows)
    small = peak(600, 0)  # two batches
    large = peak(2_400, 100_000)  # five batches (tracemalloc slows SQLAlchemy fivefold)

    # Flat: holding the 1,800 extra rows (a dict each) would add well over 1 MB; when the
    # garbage collector happens to run moves either peak by up to about 300 kB.
    assert large < small + 512 * 1024, (small, large)  # measured: about 2.4 MB for either


def test_the_json_report_keeps_its_problems_on_disk_until_it_prints_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = imports.Report(tmp_path / "bad.csv", as_json=True)

    tracemalloc.start()
    try:
        for number in range(2, 50_002):
            report.reject(Rejected(number, "email", f"invalid email address 'bad{number}'"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    report.finish()

    assert peak < 512 * 1024, peak
    printed = json.loads(capsys.readouterr().out)
    assert (printed["rejected"], len(printed["problems"])) == (50_000, 50_000)
    assert printed["problems"][-1] == {
        "row": 50_001,
        "field": "email",
        "error": "invalid email address 'bad50001'",
    }
