"""The status never reads green while events wait for nobody: the tenants no per-tenant runner
serves (``unassigned``) and the inline projections never built over older events
(``unbuilt``), in ``projection_status`` (table, JSON, ``--check``, a real process), the health
view, the metrics and the admin."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any
from uuid import uuid4

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from django_eventsource import EventStore, InMemoryEventStore
from django_eventsource.models import BuiltProjection, ProjectionState
from django_eventsource.status import check_status, projection_statuses
from tests.integration.test_commands import cli
from tests.integration.test_monitoring import parse, value
from tests.testapp.events import TaskCreated
from tests.testapp.models import TaskIndex

pytestmark = pytest.mark.django_db(transaction=True)

BOARD = "task_board"
INDEX = "task_index"


def append(store: EventStore, tenant: str | None, count: int = 1) -> None:
    for _ in range(count):
        task = uuid4()
        store.append(task, [TaskCreated(aggregate_id=task, title="t", tenant_id=tenant)])


def status(*args: str) -> tuple[int, str, str]:
    """``projection_status`` in this process: its exit code, stdout and stderr."""
    out, err = StringIO(), StringIO()
    try:
        call_command("projection_status", *args, stdout=out, stderr=err)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def rows(name: str) -> dict[str, tuple[str, int]]:
    return {r.tenant_id: (r.status, r.lag_events) for r in projection_statuses([name])}


def two_tenant_runners(store: EventStore) -> None:
    """Events of acme, beta, gamma and without a tenant; runners for acme and beta only."""
    append(store, "acme", 2)
    append(store, "beta", 1)
    append(store, "gamma", 3)
    append(store, None, 2)
    for tenant in ("acme", "beta"):
        call_command("replay_projections", BOARD, "--tenant", tenant, verbosity=0)


# unassigned -----------------------------------------------------------------------------------


def test_tenants_no_runner_serves_are_unassigned_and_fail_the_check() -> None:
    store = EventStore()
    two_tenant_runners(store)
    assert rows(BOARD) == {
        "acme": ("idle", 0),
        "beta": ("idle", 0),
        "gamma": ("unassigned", 3),
        "": ("unassigned", 2),  # the events without a tenant: no --tenant runner reads them
    }
    code, out, err = status(BOARD, "--check")
    assert code == 1
    assert "unassigned: 3 events of tenant gamma wait for a runner" in err
    assert "unassigned: 2 events without a tenant wait for a runner" in err
    assert f"replay_projections {BOARD} --tenant gamma" in out
    assert "(no tenant)" in out
    # --max-lag makes no difference to it, nor does asking for that one tenant.
    assert status(BOARD, "--check", "--max-lag", "1000")[0] == 1
    code, out, _ = status(BOARD, "--check", "--tenant", "gamma")
    assert code == 1 and "gamma" in out
    assert status(BOARD, "--check", "--tenant", "acme")[0] == 0
    code, out, _ = status(BOARD, "--format", "json")
    found = {
        (r["tenant_id"], r["status"], r["lag_events"]) for r in json.loads(out)["projections"]
    }
    assert ("gamma", "unassigned", 3) in found and ("", "unassigned", 2) in found
    problems = {(p.check, p.tenant_id) for p in check_status([BOARD]).problems}
    assert problems == {("unassigned", "gamma"), ("unassigned", "")}


def test_a_runner_of_every_tenant_leaves_nothing_unassigned() -> None:
    """A projection with a row for every tenant ("") and rows for some tenants: the runner
    of every tenant applies every tenant's events, and its own lag counts them all."""
    store = EventStore()
    two_tenant_runners(store)
    call_command("replay_projections", BOARD, "--tenant", "gamma", verbosity=0)
    assert rows(BOARD)["gamma"] == ("idle", 0)
    assert rows(BOARD)[""] == ("unassigned", 2)  # still: only a runner of every tenant
    call_command("replay_projections", BOARD, verbosity=0)
    assert rows(BOARD) == dict.fromkeys(("", "acme", "beta", "gamma"), ("idle", 0))
    assert status(BOARD, "--check", "--max-lag", "0")[0] == 0
    append(store, "delta", 2)  # a new tenant: the runner of every tenant lags, not unassigned
    assert rows(BOARD)[""] == ("idle", 2)
    assert "delta" not in rows(BOARD)


def test_a_projection_that_never_ran_is_one_row_not_one_per_tenant() -> None:
    store = EventStore()
    append(store, "acme", 1)
    append(store, "beta", 1)
    assert rows(BOARD) == {"": ("idle", 2)}


def test_unassigned_tenants_fail_the_health_view_and_show_in_the_metrics(client: Client) -> None:
    two_tenant_runners(EventStore())
    response = client.get("/eventsource/health/")
    assert response.status_code == 503
    found = {(p["check"], p["projection"], p["tenant_id"]) for p in response.json()["problems"]}
    assert {("unassigned", BOARD, "gamma"), ("unassigned", BOARD, "")} <= found
    samples = parse(client.get("/eventsource/metrics/").content.decode())
    assert value(samples, "eventsource_lag_events", projection=BOARD, tenant="gamma") == 3
    assert value(samples, "eventsource_lag_events", projection=BOARD, tenant="") == 2
    assert (
        value(
            samples,
            "eventsource_projection_status",
            projection=BOARD,
            tenant="gamma",
            status="unassigned",
        )
        == 1
    )
    assert value(samples, "eventsource_check_ok") == 0
    assert value(samples, "eventsource_check_problems", check="unassigned") == 2


def test_the_admin_list_shows_what_no_state_row_shows(admin_client: Client) -> None:
    two_tenant_runners(EventStore())
    page = admin_client.get(reverse("admin:django_eventsource_projectionstate_changelist"))
    unserved = {(i["row"].tenant_id, i["row"].status) for i in page.context["unserved"]}
    assert unserved == {("gamma", "unassigned"), ("", "unassigned")}
    html = page.content.decode()
    assert f"replay_projections {BOARD} --tenant gamma" in html
    assert "(events without a tenant)" in html
    # The lag dashboard and the tenant's detail page show it too.
    lag = admin_client.get(reverse("admin:django_eventsource_projectionstate_lag"))
    assert ("gamma", "unassigned") in {
        (i["row"].tenant_id, i["row"].status) for i in lag.context["rows"]
    }
    detail = reverse("admin:django_eventsource_projectionstate_detail", args=[BOARD])
    page = admin_client.get(detail + "?tenant=gamma")
    assert page.status_code == 200
    assert page.context["item"]["row"].status == "unassigned"


def test_projection_status_check_exits_1_in_a_real_process(child_db_url: str) -> None:
    two_tenant_runners(EventStore())
    done = cli(child_db_url, "projection_status", BOARD, "--check")
    assert done.returncode == 1, done.stderr
    assert "Check failed" in done.stderr and "tenant gamma" in done.stderr


def test_the_stores_list_the_tenants_their_events_carry() -> None:
    for store in (EventStore(), InMemoryEventStore()):
        assert store.event_tenants() == []
        append(store, "b", 2)
        append(store, None, 1)
        append(store, "a", 1)
        assert store.event_tenants() == ["", "a", "b"]
        # The events without a tenant can be counted alone (tenant ""), as the rows need.
        assert store.pending_events(0, tenant_id="").readable == 1


# unbuilt ----------------------------------------------------------------------------------------


def added_to_history(store: EventStore, count: int = 3) -> None:
    """Events appended before the inline projection existed (no append applied it), and
    the projection as a deploy adds it: no checkpoint, no marker."""
    before = EventStore(inline_projections=False)
    append(before, None, count)
    BuiltProjection.objects.filter(name=INDEX).delete()


def test_an_inline_projection_added_to_history_is_unbuilt_until_rebuilt() -> None:
    store = EventStore()
    added_to_history(store, 3)
    append(store, None, 1)  # applied inline: the projection now exists
    assert rows(INDEX) == {"": ("unbuilt", 4)}
    assert TaskIndex.objects.count() == 1
    code, out, err = status(INDEX, "--check")
    assert code == 1
    assert "unbuilt: an inline projection never replayed the events stored before it" in err
    assert f"Run rebuild_projections {INDEX}." in out
    code, out, _ = status(INDEX, "--format", "json")
    [row] = json.loads(out)["projections"]
    assert (row["status"], row["lag_events"], row["position"]) == ("unbuilt", 4, 0)
    call_command("rebuild_projections", INDEX, "--noinput", verbosity=0)
    assert TaskIndex.objects.count() == 4
    assert rows(INDEX) == {"": ("inline", 0)}
    assert status(INDEX, "--check", "--max-lag", "0")[0] == 0


def test_an_unbuilt_projection_fails_the_health_view_and_the_metrics(client: Client) -> None:
    added_to_history(EventStore())
    response = client.get("/eventsource/health/")
    assert response.status_code == 503
    assert ("unbuilt", INDEX) in {
        (p["check"], p["projection"]) for p in response.json()["problems"]
    }
    samples = parse(client.get("/eventsource/metrics/").content.decode())
    assert value(samples, "eventsource_lag_events", projection=INDEX, tenant="") == 3
    labels = {"projection": INDEX, "tenant": "", "status": "unbuilt"}
    assert value(samples, "eventsource_projection_status", **labels) == 1
    assert value(samples, "eventsource_check_problems", check="unbuilt") == 1


def test_the_admin_list_shows_an_unbuilt_projection(admin_client: Client) -> None:
    added_to_history(EventStore())
    page = admin_client.get(reverse("admin:django_eventsource_projectionstate_changelist"))
    assert {(i["row"].projection, i["row"].status) for i in page.context["unserved"]} == {
        (INDEX, "unbuilt")
    }
    assert f"rebuild_projections {INDEX}" in page.content.decode()


def test_a_tenant_row_does_not_make_it_built() -> None:
    """One tenant's checkpoint (a tenant's rebuild or catch-up) says nothing of the others:
    the row for every tenant shows it unbuilt all the same."""
    store = EventStore()
    added_to_history(store, 2)
    append(store, "acme", 1)
    ProjectionState.objects.create(name=INDEX, tenant_id="acme", position=store.head_position())
    assert rows(INDEX) == {"": ("unbuilt", 3), "acme": ("inline", 0)}


def test_a_catch_up_builds_it_too() -> None:
    added_to_history(EventStore())
    call_command("replay_projections", INDEX, verbosity=0)
    assert rows(INDEX) == {"": ("inline", 0)}


def test_migrate_marks_inline_projections_built_on_an_empty_store_only() -> None:
    BuiltProjection.objects.all().delete()
    call_command("migrate", verbosity=0)  # nothing to apply: post_migrate runs all the same
    assert BuiltProjection.objects.get(name=INDEX).reason == "empty store"
    append(EventStore(), "acme", 2)
    assert rows(INDEX) == {"": ("inline", 0)}
    BuiltProjection.objects.all().delete()
    call_command("migrate", verbosity=0)  # the store has events: it cannot know
    assert not BuiltProjection.objects.exists()
    assert rows(INDEX) == {"": ("unbuilt", 2)}


def test_the_upgrade_keeps_existing_inline_projections_built() -> None:
    """Migration 0013 on a store with history: the inline projections registered then were
    reported inline before the upgrade, and still are (reason "upgrade")."""
    call_command("migrate", "django_eventsource", "0012", verbosity=0)
    store = EventStore()
    append(store, None, 2)
    call_command("migrate", "django_eventsource", verbosity=0)
    assert BuiltProjection.objects.get(name=INDEX).reason == "upgrade"
    assert rows(INDEX) == {"": ("inline", 0)}
    assert status(INDEX, "--check", "--max-lag", "0")[0] == 0


def test_a_rebuilt_projection_whose_marker_is_gone_stays_built() -> None:
    """Its checkpoint says it: a rebuild replayed every event into it."""
    added_to_history(EventStore())
    call_command("rebuild_projections", INDEX, "--noinput", verbosity=0)
    assert ProjectionState.objects.get(name=INDEX, tenant_id="").position is not None
    BuiltProjection.objects.all().delete()
    append(EventStore(), None, 1)
    assert rows(INDEX) == {"": ("inline", 0)}


def test_an_empty_store_reads_inline(settings: Any) -> None:
    BuiltProjection.objects.all().delete()
    assert rows(INDEX) == {"": ("inline", 0)}


def test_a_shadow_rebuild_builds_it(vendor: str) -> None:
    """The swap leaves an inline projection without a checkpoint: it marks it built."""
    if vendor != "postgresql":
        pytest.skip("--shadow is PostgreSQL only (the rebuild above is its SQLite twin)")
    from tests.helpers import drop_shadow_schemas

    added_to_history(EventStore())
    try:
        call_command("rebuild_projections", INDEX, "--noinput", "--shadow", verbosity=0)
    finally:
        drop_shadow_schemas()
    assert BuiltProjection.objects.get(name=INDEX).reason == "shadow swap"
    assert TaskIndex.objects.count() == 3
    assert rows(INDEX) == {"": ("inline", 0)}
