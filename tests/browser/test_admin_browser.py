"""The admin in a real browser (headless Chromium) against a live server: log in, open the
lag dashboard, operate projections with its buttons and read the result on the page.

Screenshots of every step land in ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest
from django.db import connection
from django.utils import timezone
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from django_eventsource import DeadLetter, EventStore, ProjectionState
from django_eventsource.models import LagSample
from tests.browser.conftest import Admin
from tests.factories import task_history
from tests.integration.test_admin import poisoned, run, settled
from tests.testapp.events import TaskCreated

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery staple"


@pytest.fixture
def ui(browser: WebDriver, live_server, django_user_model, request) -> Admin:
    django_user_model.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    admin = Admin(browser, live_server.url, f"{request.node.name}-{connection.vendor}")
    admin.login("admin", PASSWORD)
    return admin


def row(ui: Admin, projection: str, tenant: str = ""):
    return ui.driver.find_element(
        By.CSS_SELECTOR, f'tr.es-row[data-projection="{projection}"][data-tenant="{tenant}"]'
    )


def status_on_page(ui: Admin, projection: str) -> str:
    return row(ui, projection).find_element(By.CSS_SELECTOR, ".es-status").text.lower()


def messages(ui: Admin) -> list[str]:
    return [m.text for m in ui.driver.find_elements(By.CSS_SELECTOR, "ul.messagelist li")]


def test_pause_and_resume_from_the_lag_dashboard(ui: Admin) -> None:
    store = EventStore()
    task_history(store, tasks=8, renames=2, seed=11)
    run()
    task = uuid4()
    store.append(task, [TaskCreated(aggregate_id=task, title="waiting")])
    settled(store)
    now = timezone.now()
    LagSample.objects.bulk_create(
        LagSample(
            name="task_board",
            position=0,
            head=40,
            lag_events=lag,
            lag_seconds=lag / 4,
            recorded_at=now - timedelta(minutes=5 * (30 - n)),
        )
        for n, lag in enumerate([0, 3, 8, 20, 35, 40, 32, 25, 18, 12, 6, 2, 0, 0, 5, 9, 4, 1])
    )

    ui.open("/admin/django_eventsource/projectionstate/")
    lag_cell = ui.driver.find_element(By.CSS_SELECTOR, "#result_list td.field-lag_events")
    assert lag_cell.text == "1"
    ui.screenshot("0-projections")
    ui.driver.find_element(By.ID, "lag-dashboard-link").click()
    ui.wait().until(lambda d: d.find_elements(By.ID, "projection-lag"))
    assert status_on_page(ui, "task_board") == "idle"
    assert row(ui, "task_board").find_element(By.CSS_SELECTOR, ".es-lag-events").text == "1"
    # The chart is drawn: a polyline with one point per sample bucket, and a real size.
    chart = ui.driver.find_element(
        By.CSS_SELECTOR, 'figure.es-chart[data-projection="task_board"] svg'
    )
    assert chart.size["width"] > 300 and chart.size["height"] > 50
    line = chart.find_element(By.CSS_SELECTOR, "polyline.es-chart-line")
    # 18 samples written here, plus those the runner recorded itself.
    assert len(line.get_attribute("points").split()) >= 18
    ui.screenshot("1-dashboard")

    for attempt in range(3):  # the dashboard may redraw its rows between find and click
        try:
            button = row(ui, "task_board").find_element(
                By.CSS_SELECTOR, 'button[data-action="pause"]'
            )
            ui.submit(button)
            break
        except WebDriverException:  # the node left the document: the click did not happen
            if attempt == 2:
                raise
    assert "Paused task_board." in messages(ui)
    assert status_on_page(ui, "task_board") == "paused"
    assert ProjectionState.objects.get(name="task_board").status == "paused"
    assert run().skipped == ["task_board"]  # the runner honours the pause
    ui.screenshot("2-paused")

    ui.submit(row(ui, "task_board").find_element(By.CSS_SELECTOR, 'button[data-action="resume"]'))
    assert "Resumed task_board." in messages(ui)
    assert status_on_page(ui, "task_board") == "idle"
    assert ProjectionState.objects.get(name="task_board").status == "idle"
    assert run().events_applied == 1
    ui.driver.refresh()
    assert row(ui, "task_board").find_element(By.CSS_SELECTOR, ".es-lag-events").text == "0"
    ui.screenshot("3-resumed")
    # The admin's dark theme: the pages use its colour variables.
    ui.driver.execute_script("localStorage.setItem('theme', 'dark')")
    ui.driver.refresh()
    assert ui.driver.execute_script("return document.documentElement.dataset.theme") == "dark"
    ui.screenshot("4-dark")


def test_failed_projection_error_event_and_dead_letter(ui: Admin) -> None:
    store = EventStore()
    poison = poisoned(store)
    hostile = uuid4()
    store.append(hostile, [TaskCreated(aggregate_id=hostile, title="<script>alert(1)</script>")])

    ui.open("/admin/django_eventsource/projectionstate/lag/")
    assert status_on_page(ui, "task_board") == "failed"
    ui.driver.find_element(By.LINK_TEXT, "task_board").click()
    ui.wait().until(lambda d: d.find_elements(By.ID, "read-models"))
    assert "ValueError" in ui.driver.find_element(By.CSS_SELECTOR, "pre.es-traceback").text
    ui.screenshot("1-detail")

    # The failed event is linked to the read-only event browser.
    ui.driver.find_element(By.CSS_SELECTOR, "a.es-event-link").click()
    # The detail page has a pre.es-json too (its traceback): wait for the event's page, or
    # the element found may be the old page's (a WebDriverException under load).
    ui.wait().until(lambda d: "/django_eventsource/event/" in d.current_url)
    ui.wait().until(lambda d: d.find_elements(By.CSS_SELECTOR, "pre.es-json"))
    assert f"#{poison} TaskRenamed" in ui.driver.title or str(poison) in ui.driver.page_source
    assert '"title": "boom"' in ui.driver.find_element(By.CSS_SELECTOR, "pre.es-json").text
    assert not ui.driver.find_elements(By.CSS_SELECTOR, 'input[type="submit"][name="_save"]')
    ui.screenshot("2-failed-event")

    # A payload with markup is shown as text, never run.
    ui.open("/admin/django_eventsource/event/?q=" + str(hostile))
    ui.driver.find_element(By.CSS_SELECTOR, "#result_list th.field-position a").click()
    ui.wait().until(lambda d: d.find_elements(By.CSS_SELECTOR, "pre.es-json"))
    with pytest.raises(NoAlertPresentException):
        ui.driver.switch_to.alert.text  # noqa: B018
    assert (
        "<script>alert(1)</script>" in ui.driver.find_element(By.CSS_SELECTOR, "pre.es-json").text
    )
    ui.screenshot("3-escaped-payload")

    # Dead-letter it: a confirmation page first.
    ui.open("/admin/django_eventsource/projectionstate/lag/")
    ui.submit(
        row(ui, "task_board").find_element(By.CSS_SELECTOR, 'button[data-action="dead_letter"]')
    )
    assert "are you sure?" in ui.driver.title
    assert not DeadLetter.objects.exists()
    ui.screenshot("4-confirm-dead-letter")
    ui.submit(ui.driver.find_element(By.CSS_SELECTOR, "input.es-danger-submit"))
    assert any(f"event #{poison} aside" in m for m in messages(ui))
    assert status_on_page(ui, "task_board") == "idle"
    assert DeadLetter.objects.get().event_position == poison
    ui.screenshot("5-dead-lettered")

    ui.driver.find_element(By.LINK_TEXT, "Dead letters").click()
    ui.wait().until(lambda d: d.find_elements(By.ID, "result_list"))
    assert f"#{poison}" in ui.driver.find_element(By.ID, "result_list").text
    ui.screenshot("6-dead-letters")

    # The event browser, filtered by type from the sidebar.
    ui.open("/admin/django_eventsource/event/")
    ui.driver.find_element(
        By.CSS_SELECTOR, '#changelist-filter a[href*="event_type=TaskRenamed"]'
    ).click()
    ui.wait().until(lambda d: "event_type=TaskRenamed" in d.current_url)
    types = ui.driver.find_elements(By.CSS_SELECTOR, "#result_list td.field-event_type")
    assert types and {t.text for t in types} == {"TaskRenamed"}
    ui.screenshot("7-events-by-type")
