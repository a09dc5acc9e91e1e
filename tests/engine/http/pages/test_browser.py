"""The dashboard in a real headless Chromium (Debian's package) against the demo's data: the
overview against `nurture stats`, a lead's reasons, login, escaping and a sales action."""

from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import select

from engine.cli.main import main
from engine.funnel.service import upsert_lead
from engine.models import Delivery, Lead, Stage
from tests.engine.http.pages.browser import KEY, ROOT, Served, Tab, shot, sign_in

HOSTILE = "<script>alert(1)</script>"


def test_the_overview_shows_the_stage_counts_that_stats_gives(tab: Tab, served: Served) -> None:
    page = tab.page
    result = CliRunner().invoke(
        main,
        [
            "--database-url",
            served.database,
            "--workflows",
            str(ROOT / "workflows"),
            "--templates",
            str(ROOT / "templates"),
            "stats",
            "--json",
        ],
        catch_exceptions=False,
    )
    stages = json.loads(result.stdout)["stages"]
    sign_in(page, served)
    for stage in ("subscriber", "lead", "mql", "sql", "mql_ever", "sql_ever"):
        shown = page.text_content(f'[data-stage="{stage}"] .figure')
        assert int(str(shown).replace(",", "")) == stages[stage], stage
    page.wait_for_selector('canvas#per-day[data-drawn="true"]')
    assert tab.errors == []
    shot(page, "overview")


def test_a_lead_found_by_search_shows_its_deferred_send_with_the_reason(
    tab: Tab, served: Served
) -> None:
    page = tab.page
    with served.app.sessions() as s:
        email, detail = s.execute(
            select(Lead.email, Delivery.detail)
            .join(Lead, Lead.id == Delivery.lead_id)
            .where(Delivery.detail.like("deferred to %"))
            .order_by(Delivery.id)
            .limit(1)
        ).one()
    sign_in(page, served)
    page.fill("header input[name=q]", str(email))
    page.press("header input[name=q]", "Enter")
    page.wait_for_selector("#trace")
    reasons = page.locator("#trace td.reason").all_text_contents()
    assert any(str(detail) in reason for reason in reasons), reasons
    page.wait_for_selector('canvas#score[data-drawn="true"]')
    shot(page, "lead")


def test_login_is_required_and_a_forged_cookie_is_refused(tab: Tab, served: Served) -> None:
    page = tab.page
    page.goto(served.url + "/handoffs")
    assert "/login" in page.url
    shot(page, "login")
    page.context.add_cookies(
        [{"name": "nurture_session", "value": "eyJrIjoiYWJjIn0.aaaaaa.forged", "url": served.url}]
    )
    page.goto(served.url + "/handoffs")
    assert "/login" in page.url
    page.fill("input[name=key]", KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("#handoffs")
    assert page.url.endswith("/handoffs")
    shot(page, "handoffs")


def test_a_lead_named_with_a_script_shows_it_as_text(tab: Tab, served: Served) -> None:
    page = tab.page
    with served.app.sessions.begin() as s:
        outcome = upsert_lead(s, served.app.rt, {"email": "hostile@x.test", "first_name": HOSTILE})
        lead_id = outcome.lead_id
    sign_in(page, served)
    page.goto(f"{served.url}/leads/{lead_id}")
    assert page.text_content("#lead-name") == HOSTILE
    page.goto(f"{served.url}/leads?q=x.test")
    assert tab.dialogs == []


def test_recycle_from_the_lead_page_changes_the_stage(tab: Tab, served: Served) -> None:
    page = tab.page
    with served.app.sessions() as s:
        lead_id = s.scalars(
            select(Lead.id).where(Lead.stage == Stage.SQL).order_by(Lead.id).limit(1)
        ).one()
    sign_in(page, served)
    page.goto(f"{served.url}/leads/{lead_id}")
    page.fill("input[name=reason]", "budget next quarter")
    page.click("#recycle")
    page.wait_for_selector("#lead-stage:has-text('recycled')")
    with served.app.sessions() as s:
        assert s.get(Lead, lead_id).stage == Stage.RECYCLED  # type: ignore[union-attr]
