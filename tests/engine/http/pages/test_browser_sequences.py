"""The sequence pages in a real headless Chromium (Debian's package) against the demo's data:
from a step's count to the leads behind it, and on to one of them."""

from __future__ import annotations

from engine.models import Delivery
from tests.engine.http.pages.browser import Served, Tab, shot, sign_in


def test_a_steps_deferred_count_lists_its_leads_and_each_lead_shows_that_send_and_why(
    tab: Tab, served: Served
) -> None:
    page = tab.page
    sign_in(page, served)
    page.click("nav >> text=Sequences")
    page.click("#sequences >> text=lead-nurture")
    deferred = page.locator('a[data-count="deferred"][data-step="awareness/email:welcome"]')
    shown = int(str(deferred.locator(".figure").text_content()).replace(",", ""))
    assert shown > 0, "the demo's welcome emails wait for the send window"
    shot(page, "sequence")
    deferred.click()
    page.wait_for_selector("#sequence-leads")
    first = page.locator("#sequence-leads tbody tr").first
    delivery_id = str(first.get_attribute("data-delivery"))
    with served.app.sessions() as s:
        delivery = s.get(Delivery, delivery_id)
        assert delivery is not None and delivery.detail is not None
        assert (delivery.sequence, delivery.milestone, delivery.step) == (
            "lead-nurture",
            "awareness",
            "email:welcome",
        )
    first.locator("a").first.click()
    page.wait_for_selector("#trace")
    assert page.url.endswith(f"/leads/{delivery.lead_id}")
    reason = page.locator(f'#trace tr[data-delivery="{delivery_id}"] td.reason').text_content()
    assert delivery.detail in str(reason)
    assert tab.errors == [] and tab.dialogs == []
