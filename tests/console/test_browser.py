"""The console in real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from tests.console.conftest import World, screenshot
from tests.console.world import CLINIC, CLINIC_PATH, ENDED_REQUESTS, OTHER

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_practice_manager_sees_only_their_client_and_approves(page_for: Any, world: World) -> None:
    page = page_for("pm")
    screenshot(page, "overview")
    body = page.inner_text("main")
    assert CLINIC in body
    assert OTHER not in body
    assert "letter will not open" in body  # the pending request, with its reason
    page.click("nav >> text=Access requests")
    screenshot(page, "requests-pending")
    card = page.locator("article.request", has_text=world.ids["request"])
    card.get_by_role("button", name="Approve").click()
    page.wait_for_selector(".flash.ok")
    assert f"Approved {world.ids['request']}" in page.inner_text(".flash.ok")
    assert "active" in page.inner_text("main")
    screenshot(page, "requests-approved")


def test_auditor_filters_events_and_downloads_the_statement(page_for: Any, world: World) -> None:
    page = page_for("auditor")
    page.goto(world.url + "/events")
    page.select_option("#f-client", CLINIC)
    page.select_option("#f-dec", "deny")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**decision=deny**")
    rows = page.locator("table.events tbody tr")
    assert rows.count() == 1
    assert "Brown_Alice_history" in rows.first.inner_text()
    assert "verified · checkpoint 3" in rows.first.inner_text()
    screenshot(page, "events-filtered")
    month = time.strftime("%Y-%m")
    page.goto(f"{world.url}/statement?client={CLINIC}&month={month}")
    screenshot(page, "statement")
    assert "Client access statement" in page.inner_text("h1")
    with page.expect_download() as info:
        page.click("text=Download PDF")
    download = info.value
    data = Path(download.path()).read_bytes()
    assert data.startswith(b"%PDF")
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(data)).pages)
    assert "Client access statement: Harbour Clinic" in text
    assert "tech2" in text
    assert "out_of_scope" in text
    assert "jit-console1" in text  # the grant and its ticket
    assert "INC-4411" in text
    assert "clinic-srv" in text


def test_privacy_officer_records_an_assessment_decision(page_for: Any, world: World) -> None:
    page = page_for("po")
    page.click("nav >> text=Incidents")
    screenshot(page, "incidents")
    page.click(f"text=INC-{int(world.ids['incident']):06d}")
    page.fill("#factor-kinds", "Health information in one referral letter")
    page.fill("#factor-harm", "Read only; the technician was denied and no copy was made")
    page.fill("#containment", "Technician's session reviewed with the MSP")
    page.get_by_role("button", name="Record", exact=True).click()
    page.wait_for_selector(".flash.ok")
    assert "assessing" in page.inner_text(".flash.ok")
    page.check("input[name=outcome][value=not_eligible]")
    page.fill("#reason", "The access was denied by the gate; no information was disclosed.")
    page.get_by_role("button", name="Record the decision").click()
    page.wait_for_selector(".flash.ok")
    assert "not eligible" in page.inner_text(".flash.ok")
    assert "Decision:" in page.inner_text("main")
    screenshot(page, "incident-decided")


def test_technician_sees_only_their_own_rows(page_for: Any, world: World) -> None:
    page = page_for("tech1", width=820, height=1180)  # a tablet in portrait
    nav = page.inner_text("nav")
    assert "Incidents" not in nav
    assert "Access statement" not in nav
    page.goto(world.url + "/events")
    text = page.inner_text("main")
    assert CLINIC_PATH in text
    assert "Brown_Alice" not in text
    screenshot(page, "technician-events-tablet")


def test_keyboard_alone_signs_in_and_reaches_the_events(page_for: Any, world: World) -> None:
    page = page_for(None)
    page.goto(world.url + "/signin")
    assert page.evaluate("document.activeElement.id") == "name"  # focused on arrival
    page.keyboard.type("po")
    page.keyboard.press("Tab")
    page.keyboard.type("correct horse battery staple")
    page.keyboard.press("Enter")
    page.wait_for_url(world.url + "/")
    page.goto(world.url + "/events")
    assert page.locator("table.events tbody tr").count() >= 3


def test_auditor_pages_a_clients_request_history(page_for: Any, world: World) -> None:
    page = page_for("auditor")
    page.goto(world.url + "/requests")
    page.select_option("#r-client", OTHER)
    page.click("form.filters button[type=submit]")
    page.wait_for_url(f"**client={OTHER}**")
    assert page.locator("table.history tbody tr").count() == 50
    assert "jit-old060" in page.locator("table.history tbody tr").first.inner_text()
    page.click("a[rel=next]")
    page.wait_for_url("**after=**")
    rows = page.locator("table.history tbody tr")
    assert rows.count() == ENDED_REQUESTS - 50
    assert "jit-old000" in rows.last.inner_text()
    assert "History, continued" in page.inner_text("main")
    screenshot(page, "requests-history-page-2")
