"""The admin, through Django's test client: every page and action as an anonymous user
(redirected to the login page), as staff without the permission (403) and as staff with it
(it works, and the library's state changed)."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta
from uuid import uuid4

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db import connection, connections
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_eventsource import DeadLetter, EventStore, ProjectionState, control
from django_eventsource.admin import (
    DeadLetterAdmin,
    EventAdmin,
    LookAheadPaginator,
    ProjectionStateAdmin,
    distinct_values,
)
from django_eventsource.models import Event, LagSample
from django_eventsource.runner import ProjectionRunner
from django_eventsource.status import horizon_holder
from tests.factories import task_history
from tests.fold import fold_task_board, task_board_rows
from tests.helpers import all_events
from tests.testapp.events import TaskCreated, TaskRenamed
from tests.testapp.projections import TaskBoard

pytestmark = pytest.mark.django_db(transaction=True)

LAG = reverse("admin:django_eventsource_projectionstate_lag")
PROJECTIONS = reverse("admin:django_eventsource_projectionstate_changelist")
EVENTS = reverse("admin:django_eventsource_event_changelist")
DEAD_LETTERS = reverse("admin:django_eventsource_deadletter_changelist")


def detail(name: str) -> str:
    return reverse("admin:django_eventsource_projectionstate_detail", args=[name])


def action(name: str, what: str) -> str:
    return reverse("admin:django_eventsource_projectionstate_action", args=[name, what])


def login(django_user_model, *codenames: str, username: str = "staff") -> Client:
    """A client logged in as a staff user holding exactly these permissions."""
    user = django_user_model.objects.create_user(username, password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="django_eventsource", codename__in=codenames
        )
    )
    client = Client()
    client.force_login(user)
    return client


VIEW = ("view_projectionstate", "view_event", "view_deadletter")
ALL = (*VIEW, "pause_projection", "retry_projection", "rebuild_projection")


@pytest.fixture
def viewer(django_user_model) -> Client:
    """Staff that may look at everything but run no action."""
    return login(django_user_model, *VIEW, username="viewer")


@pytest.fixture
def operator(django_user_model) -> Client:
    return login(django_user_model, *ALL, username="operator")


def settled(store: EventStore | None = None) -> EventStore:
    """Wait until every committed event is readable, and return the store.

    On PostgreSQL, readers stop at the ordering horizon: the oldest transaction that
    appended events and has not ended. The library never skips past it, so the test waits
    for it (a time-out, not an assertion on timing).
    """
    store = store or EventStore()
    for _ in range(1200):
        if len(store.read_all()) == Event.objects.count():
            return store
        time.sleep(0.05)
    raise AssertionError(f"The ordering horizon held the events back: {horizon_holder()}")


def run(projection=None):
    settled()
    return ProjectionRunner([projection or TaskBoard()]).run_until_caught_up()


def poisoned(store: EventStore) -> int:
    """A history whose TaskRenamed('boom') makes task_board fail; returns its position."""
    task_history(store, tasks=3, renames=0, seed=1)
    bad = uuid4()
    store.append(bad, [TaskCreated(aggregate_id=bad, title="ok")])
    [poison] = store.append(bad, [TaskRenamed(aggregate_id=bad, title="boom")])
    task_history(store, tasks=2, renames=0, seed=2)
    result = run()
    assert result.failed == ["task_board"]
    return poison.position


def one_event(title: str = "t"):
    task = uuid4()
    [event] = EventStore().append(task, [TaskCreated(aggregate_id=task, title=title)])
    return event


def state(name: str = "task_board", tenant: str = "") -> ProjectionState:
    return ProjectionState.objects.get(name=name, tenant_id=tenant)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# Access: anonymous, staff without permission, staff with it -----------------------------


def pages(event_position: int) -> list[str]:
    return [
        PROJECTIONS,
        LAG,
        detail("task_board"),
        EVENTS,
        reverse("admin:django_eventsource_event_change", args=[event_position]),
        DEAD_LETTERS,
    ]


def test_anonymous_users_are_sent_to_the_login_page() -> None:
    event = one_event()
    client = Client()
    for url in pages(event.position):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("admin:login")), url
    for what in ("pause", "resume", "retry", "dead_letter", "rebuild"):
        response = client.post(action("task_board", what), {"tenant": ""})
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    assert not ProjectionState.objects.exists()


def test_staff_without_view_permission_get_403(django_user_model) -> None:
    event = one_event()
    client = login(django_user_model)
    for url in pages(event.position):
        assert client.get(url).status_code == 403, url


def test_staff_with_view_permission_see_every_page(viewer: Client) -> None:
    store = EventStore()
    poison = poisoned(store)
    for url in pages(poison):
        response = viewer.get(url)
        assert response.status_code == 200, url
    page = viewer.get(PROJECTIONS).content.decode()
    assert "task_board" in page and "failed" in page
    # The failed event is linked to the event browser.
    event_url = reverse("admin:django_eventsource_event_change", args=[poison])
    assert f'href="{event_url}"' in page
    assert "Lag dashboard" in page


@pytest.mark.parametrize("what", ["pause", "resume", "retry", "dead_letter", "rebuild"])
def test_actions_without_their_permission_are_forbidden(
    django_user_model, viewer: Client, what: str
) -> None:
    poisoned(EventStore())
    before = state()
    response = viewer.post(action("task_board", what), {"tenant": "", "confirm": "yes"})
    assert response.status_code == 403
    # Holding another action's permission is not enough either.
    other = {"pause": "rebuild", "resume": "retry", "retry": "pause"}.get(what, "pause")
    client = login(django_user_model, *VIEW, f"{other}_projection", username="other")
    assert client.post(action("task_board", what), {"tenant": ""}).status_code == 403
    after = state()
    assert (after.status, after.position, after.failed_event_position) == (
        before.status,
        before.position,
        before.failed_event_position,
    )
    assert not DeadLetter.objects.exists()


@pytest.mark.parametrize(
    "what", ["pause_selected", "resume_selected", "retry_selected", "rebuild_selected"]
)
def test_change_list_actions_without_permission_are_forbidden(viewer: Client, what: str) -> None:
    poisoned(EventStore())
    response = viewer.post(
        PROJECTIONS, {"action": what, "_selected_action": [state().pk], "index": 0}
    )
    assert response.status_code == 403
    assert state().status == "failed"


def test_actions_are_post_only(operator: Client) -> None:
    task_history(EventStore(), tasks=2)
    assert operator.get(action("task_board", "pause")).status_code == 405
    assert not ProjectionState.objects.filter(status="paused").exists()


def test_unknown_projection_or_action_is_404(operator: Client) -> None:
    assert operator.post(action("nope", "pause"), {"tenant": ""}).status_code == 404
    assert operator.post(action("task_board", "explode"), {"tenant": ""}).status_code == 404
    assert operator.get(detail("nope")).status_code == 404
    assert not ProjectionState.objects.filter(name="nope").exists()


# Actions change the library's state -----------------------------------------------------


def test_pause_and_resume(operator: Client) -> None:
    task_history(EventStore(), tasks=3)
    response = operator.post(action("task_board", "pause"), {"tenant": "", "next": LAG})
    assert response.status_code == 302 and response["Location"] == LAG
    assert state().status == "paused"
    # A paused projection is skipped by runners: the library really sees the pause.
    assert run().skipped == ["task_board"]
    page = operator.get(LAG)
    assert "Paused task_board." in messages_of(page)
    assert 'data-action="resume"' in page.content.decode()
    operator.post(action("task_board", "resume"), {"tenant": ""})
    assert state().status == "idle"
    assert not run().skipped


def test_pause_one_tenant(operator: Client) -> None:
    task_history(EventStore(), tasks=4, tenants=("acme", "globex"))
    operator.post(action("tenant_stats", "pause"), {"tenant": "acme"})
    assert state("tenant_stats", "acme").status == "paused"
    assert not ProjectionState.objects.filter(name="tenant_stats", tenant_id="globex").exists()


def test_unsafe_next_is_ignored(operator: Client) -> None:
    response = operator.post(
        action("task_board", "pause"), {"tenant": "", "next": "https://evil.example/"}
    )
    assert response["Location"] == detail("task_board")


def test_retry_the_failed_event(operator: Client) -> None:
    poison = poisoned(EventStore())
    assert state().attempts > 0
    response = operator.post(action("task_board", "retry"), {"tenant": ""}, follow=True)
    assert f"will retry event #{poison}" in " ".join(messages_of(response))
    after = state()
    assert (after.status, after.attempts, after.failed_event_position) == ("idle", 0, poison)


def test_retry_without_a_failed_event_says_so(operator: Client) -> None:
    task_history(EventStore(), tasks=1)
    control.pause("task_board")
    response = operator.post(action("task_board", "retry"), {"tenant": ""}, follow=True)
    assert "no failed event to retry" in " ".join(messages_of(response))
    assert state().status == "paused"


def test_pause_and_resume_of_a_rebuild_go_back_to_the_rebuild(operator: Client) -> None:
    """Before: resume made a paused rebuild ``idle``; the rebuild was forgotten."""
    from django_eventsource import state as transitions

    store = EventStore()
    task_history(store, tasks=3, seed=9)
    transitions.begin_rebuild("task_board", None, "default")  # a rebuild, interrupted
    operator.post(action("task_board", "pause"), {"tenant": ""})
    assert (state().status, state().suspended_rebuild) == ("paused", True)
    response = operator.post(action("task_board", "resume"), {"tenant": ""}, follow=True)
    assert (state().status, state().suspended_rebuild) == ("rebuilding", False)
    assert "Resumed task_board. It was paused or failed in the middle of its rebuild" in (
        " ".join(messages_of(response))
    )
    assert "run rebuild_projections task_board" in " ".join(messages_of(response))
    run()  # a runner carries the rebuild on
    assert state().status == "idle"
    assert task_board_rows() == fold_task_board(store)


@pytest.mark.parametrize("operate", ["retry", "dead_letter"])
def test_retry_or_dead_letter_of_a_failed_rebuild_go_back_to_the_rebuild(
    operator: Client, operate: str
) -> None:
    """An event failed in a rebuild's replay: retrying it, or setting it aside, returns the
    projection to its rebuild, which then carries on from its checkpoint. Before, both made
    it ``idle``: the next rebuild started over (and failed on the same event again)."""
    from django_eventsource.rebuild import rebuild

    store = EventStore()
    task_history(store, tasks=2, renames=0, seed=1)
    bad = uuid4()
    store.append(bad, [TaskCreated(aggregate_id=bad, title="ok")])
    [poison] = store.append(bad, [TaskRenamed(aggregate_id=bad, title="boom")])
    task_history(store, tasks=2, renames=0, seed=2)
    settled(store)
    response = operator.post(
        action("task_board", "rebuild"), {"tenant": "", "confirm": "yes"}, follow=True
    )
    assert (
        f"then it failed on event #{poison.position}; see its last error. Once the handler "
        "is fixed, retry the event: the rebuild carries on from there."
    ) in " ".join(messages_of(response))
    assert (state().status, state().suspended_rebuild) == ("failed", True)
    data = {"tenant": "", "confirm": "yes"} if operate == "dead_letter" else {"tenant": ""}
    response = operator.post(action("task_board", operate), data, follow=True)
    said = " ".join(messages_of(response))
    assert "in the middle of its rebuild, which carries on from its checkpoint" in said
    after = state()
    assert (after.status, after.suspended_rebuild, after.owner) == ("rebuilding", False, "")
    if operate == "retry":
        assert f"will retry event #{poison.position}" in said
        return
    assert after.position == poison.position
    result = rebuild(TaskBoard())  # resumes from the checkpoint (a reset would fail again)
    assert not result.failed
    assert state().status == "idle"
    [letter] = DeadLetter.objects.all()
    assert (letter.event_position, letter.resolved_at) == (poison.position, None)


def test_dead_letter_asks_for_confirmation_then_sets_the_event_aside(operator: Client) -> None:
    store = EventStore()
    poison = poisoned(store)
    response = operator.post(action("task_board", "dead_letter"), {"tenant": ""})
    assert response.status_code == 200
    page = response.content.decode()
    assert "are you sure?" in page and f"event #{poison}" in page and 'name="confirm"' in page
    assert state().status == "failed" and not DeadLetter.objects.exists()

    response = operator.post(action("task_board", "dead_letter"), {"tenant": "", "confirm": "yes"})
    assert response.status_code == 302
    [letter] = DeadLetter.objects.all()
    assert (letter.projection, letter.event_position) == ("task_board", poison)
    after = state()
    assert (after.status, after.position) == ("idle", poison)
    # The runner continues past it.
    run()
    assert state().position == store.head_position()


def test_rebuild_asks_for_confirmation_then_replays(operator: Client) -> None:
    store = EventStore()
    task_history(store, tasks=6, renames=2, seed=4)
    run()
    from tests.testapp.models import TaskSummary

    TaskSummary.objects.update(title="tampered")  # the rebuild must bring it back
    response = operator.post(action("task_board", "rebuild"), {"tenant": ""})
    assert response.status_code == 200
    page = response.content.decode()
    assert "6 rows of testapp_tasksummary" in page
    assert f"and replay {len(all_events(store))} events." in page
    assert set(TaskSummary.objects.values_list("title", flat=True)) == {"tampered"}

    settled(store)
    response = operator.post(
        action("task_board", "rebuild"), {"tenant": "", "confirm": "yes"}, follow=True
    )
    assert f"replayed {len(settled(store).read_all())} events" in " ".join(messages_of(response))
    assert task_board_rows() == fold_task_board(store)
    assert state().status == "idle" and state().position == store.head_position()


def test_a_tenant_rebuild_confirmation_counts_that_tenant_s_events(operator: Client) -> None:
    """It said "replay up to N events", N the store's head (another tenant's last event)."""
    store = EventStore()
    task_history(store, tasks=2, seed=19, tenants=("acme",))
    task_history(store, tasks=3, seed=20, tenants=("globex",))
    ProjectionRunner([TaskBoard()], tenant_id="acme").run_until_caught_up()
    acme = store.read_all(tenant_id="acme").events
    last = max(e.position for e in acme)
    response = operator.post(action("task_board", "rebuild"), {"tenant": "acme"})
    assert response.status_code == 200
    page = response.content.decode()
    assert f"replay up to event #{last} (tenant acme: {len(acme)} events)." in page
    assert f"replay up to {store.head_position()}" not in page


def test_a_rebuild_that_loses_its_lock_says_so(
    operator: Client, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "Rebuilt task_board: replayed N events" (before that, the runner's private
    _LockLost was a server error). The handler hands the state row to "a successor"
    inside a batch, as a runner that took over would."""
    from tests.testapp import projections

    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "HEARTBEAT_INTERVAL": 0.001}
    task_history(EventStore(), tasks=10, seed=22)
    run()
    monkeypatch.setattr(projections, "TAKEOVER_AFTER", projections._handled + 5)
    response = operator.post(
        action("task_board", "rebuild"), {"tenant": "", "confirm": "yes"}, follow=True
    )
    after = state()
    assert (after.status, after.owner) == ("rebuilding", "a successor")
    expected = (
        f"The rebuild of task_board lost its lock to a successor at event #{after.position}; "
        "that runner continues the replay."
    )
    assert messages_of(response) == [expected]


def test_rebuild_without_downtime_asks_then_swaps(operator: Client) -> None:
    store = EventStore()
    task_history(store, tasks=6, renames=2, seed=4)
    run()
    from tests.testapp.models import TaskSummary

    TaskSummary.objects.update(title="tampered")
    if connection.vendor != "postgresql":
        assert "rebuild_shadow_selected" not in operator.get(PROJECTIONS).content.decode()
        response = operator.post(
            action("task_board", "rebuild_shadow"), {"tenant": "", "confirm": "yes"}, follow=True
        )
        assert "not supported on the 'sqlite' backend" in " ".join(messages_of(response))
        assert set(TaskSummary.objects.values_list("title", flat=True)) == {"tampered"}
        return
    assert "rebuild_shadow_selected" in operator.get(PROJECTIONS).content.decode()
    response = operator.post(action("task_board", "rebuild_shadow"), {"tenant": ""})
    assert response.status_code == 200 and "are you sure?" in response.content.decode()
    assert set(TaskSummary.objects.values_list("title", flat=True)) == {"tampered"}
    settled(store)
    response = operator.post(
        action("task_board", "rebuild_shadow"), {"tenant": "", "confirm": "yes"}, follow=True
    )
    assert "without downtime" in " ".join(messages_of(response))
    assert task_board_rows() == fold_task_board(store)
    assert state().status == "idle" and state().position == store.head_position()


def test_change_list_actions(operator: Client) -> None:
    store = EventStore()
    task_history(store, tasks=3, tenants=("acme", "globex"))
    control.get_state("tenant_stats", "acme")
    control.get_state("tenant_stats", "globex")
    ids = list(ProjectionState.objects.values_list("pk", flat=True))
    response = operator.post(
        PROJECTIONS, {"action": "pause_selected", "_selected_action": ids, "index": 0}
    )
    assert response.status_code == 302
    assert set(ProjectionState.objects.values_list("status", flat=True)) == {"paused"}
    operator.post(PROJECTIONS, {"action": "resume_selected", "_selected_action": ids, "index": 0})
    assert set(ProjectionState.objects.values_list("status", flat=True)) == {"idle"}

    # Rebuild: a confirmation page first, that posts back to the change list.
    response = operator.post(
        PROJECTIONS, {"action": "rebuild_selected", "_selected_action": ids[:1], "index": 0}
    )
    assert response.status_code == 200 and "are you sure?" in response.content.decode()
    assert not ProjectionState.objects.filter(position__gt=0).exists()
    settled(store)
    response = operator.post(
        PROJECTIONS,
        {"action": "rebuild_selected", "_selected_action": ids[:1], "confirm": "yes"},
    )
    assert response.status_code == 302
    rebuilt = ProjectionState.objects.get(pk=ids[0])
    assert rebuilt.position == store.head_position() > 0


def test_change_list_dead_letter_action(operator: Client) -> None:
    poison = poisoned(EventStore())
    ids = [state().pk]
    response = operator.post(
        PROJECTIONS, {"action": "dead_letter_selected", "_selected_action": ids, "index": 0}
    )
    assert response.status_code == 200 and f"event #{poison}" in response.content.decode()
    assert not DeadLetter.objects.exists()
    operator.post(
        PROJECTIONS,
        {"action": "dead_letter_selected", "_selected_action": ids, "confirm": "yes"},
    )
    assert DeadLetter.objects.get().event_position == poison


def test_change_list_shows_lag_and_state_rows(viewer: Client) -> None:
    store = EventStore()
    task_history(store, tasks=4, renames=1, seed=5)
    run()
    bad = uuid4()
    store.append(bad, [TaskCreated(aggregate_id=bad, title="late")])
    settled(store)
    response = viewer.get(PROJECTIONS)
    rows = {
        obj.name: obj._status_row for obj in response.context["cl"].result_list
    }  # measured once for the page
    assert rows["task_board"].lag_events == 1
    assert rows["task_board"].head == store.head_position()
    # The model form is replaced by the detail page.
    change = reverse("admin:django_eventsource_projectionstate_change", args=[state().pk])
    assert viewer.get(change)["Location"] == detail("task_board")


# Lag dashboard and detail ---------------------------------------------------------------


def test_lag_dashboard_lists_every_projection_and_draws_the_samples(viewer: Client) -> None:
    store = EventStore()
    task_history(store, tasks=3)
    now = timezone.now()
    LagSample.objects.bulk_create(
        LagSample(
            name="task_board",
            position=n,
            head=10,
            lag_events=10 - n,
            lag_seconds=float(10 - n),
            recorded_at=now - timedelta(minutes=10 * (10 - n)),
        )
        for n in range(10)
    )
    response = viewer.get(LAG)
    assert response.status_code == 200
    names = [item["row"].projection for item in response.context["rows"]]
    assert names == ["task_board", "task_index", "tenant_stats"]  # registered, never run too
    [chart] = [i["chart"] for i in response.context["rows"] if i["row"].projection == "task_board"]
    assert chart.samples == 10 and chart.maximum == 10 and chart.latest == 1
    points = [tuple(map(float, p.split(","))) for p in chart.points.split()]
    assert len(points) == 10
    assert [x for x, _ in points] == sorted(x for x, _ in points)
    assert points[0][1] < points[-1][1]  # lag falls: y (downwards) grows
    page = response.content.decode()
    assert "<svg" in page and f'points="{chart.points}"' in page
    assert "<script" not in page.split('id="content-main"')[1]  # no JS library
    # The other window and metric.
    response = viewer.get(LAG, {"hours": 1, "metric": "seconds"})
    [chart] = [i["chart"] for i in response.context["rows"] if i["row"].projection == "task_board"]
    assert chart.metric == "seconds" and chart.samples == 5  # 10 to 50 minutes ago


def test_dashboard_offers_the_actions_that_apply(operator: Client, viewer: Client) -> None:
    poisoned(EventStore())
    control.pause("tenant_stats")

    def offered(client: Client) -> dict[str, list[str]]:
        rows = client.get(LAG).context["rows"]
        return {i["row"].projection: [a["spec"].name for a in i["actions"]] for i in rows}

    shadow = ["rebuild_shadow"] if connection.vendor == "postgresql" else []  # SQLite: refused
    assert offered(operator) == {
        "task_board": ["pause", "retry", "dead_letter", "rebuild", *shadow],
        "task_index": [
            "rebuild",
            *shadow,
        ],  # inline: runs inside each append, a pause would not hold
        "tenant_stats": ["resume", "rebuild", *shadow],
    }
    assert offered(viewer) == {"task_board": [], "task_index": [], "tenant_stats": []}


def test_detail_shows_read_model_statistics(viewer: Client) -> None:
    store = EventStore()
    ids = task_history(store, tasks=5, renames=1, seed=6)
    run()
    positions = [e.position for e in settled(store).read_all()]
    # Two streams move on after the catch-up: their rows are behind their stream's head.
    store.append(ids[0], [TaskRenamed(aggregate_id=ids[0], title="again")])
    store.append(ids[1], [TaskRenamed(aggregate_id=ids[1], title="again")])
    response = viewer.get(detail("task_board"))
    assert response.status_code == 200
    [stats] = response.context["statistics"]
    assert (stats.model, stats.rows) == ("testapp.TaskSummary", 5)
    last_positions = [r["last_event_position"] for r in fold_task_board_at(positions)]
    assert (stats.min_position, stats.max_position) == (min(last_positions), max(last_positions))
    assert stats.behind == 2
    # Rows fed by many streams have no stream head to compare with.
    response = viewer.get(detail("tenant_stats"))
    [stats] = response.context["statistics"]
    assert stats.behind is None and "many streams" in stats.behind_note


def fold_task_board_at(positions: list[int]) -> list[dict]:
    """The rows TaskBoard holds after applying exactly the events at ``positions``."""
    rows = task_board_rows()
    assert all(r["last_event_position"] in positions for r in rows.values())
    return list(rows.values())


def test_detail_shows_the_error_and_links_the_failed_event(viewer: Client) -> None:
    poison = poisoned(EventStore())
    page = viewer.get(detail("task_board")).content.decode()
    event_url = reverse("admin:django_eventsource_event_change", args=[poison])
    assert f'href="{event_url}"' in page
    assert "Traceback" in page and "ValueError" in page
    assert "the handler refuses the title &#x27;boom&#x27;" in page


@pytest.mark.parametrize("appends", [True, False], ids=["appending", "other-writes"])
def test_horizon_holder_is_reported(
    viewer: Client, django_user_model, vendor: str, appends: bool
) -> None:
    """Only a transaction that appended events and has not committed holds projections
    back, so only such a one is shown; its SQL only to superusers (it may show other
    users' data), never to a view-only user."""
    one_event()
    if vendor != "postgresql":
        assert 'id="horizon-holder"' not in viewer.get(LAG).content.decode()
        return
    started, done = threading.Event(), threading.Event()

    def hold() -> None:
        with connections["default"].cursor() as cursor:
            cursor.execute("BEGIN")
            if appends:  # what an append does first
                cursor.execute("LOCK TABLE django_eventsource_event IN ROW EXCLUSIVE MODE")
            cursor.execute("CREATE TEMP TABLE horizon_probe (id int)")
            cursor.execute("SELECT pg_current_xact_id() AS secret_query_marker")
            started.set()
            done.wait(30)
            cursor.execute("ROLLBACK")
        connections["default"].close()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert started.wait(30)
        page = viewer.get(LAG).content.decode()
        boss = django_user_model.objects.create_superuser("boss", password="x")
        superuser = Client()
        superuser.force_login(boss)
        admin_page = superuser.get(LAG).content.decode()
    finally:
        done.set()
        thread.join()
    if not appends:
        assert 'id="horizon-holder"' not in page
        return
    assert 'id="horizon-holder"' in page and "Ordering horizon" in page
    assert "secret_query_marker" not in page
    assert "secret_query_marker" in admin_page


# Event browser --------------------------------------------------------------------------


def test_event_payload_is_escaped_pretty_json(viewer: Client) -> None:
    task = uuid4()
    [event] = EventStore().append(
        task, [TaskCreated(aggregate_id=task, title="<script>alert('x')</script>")]
    )
    page = viewer.get(
        reverse("admin:django_eventsource_event_change", args=[event.position])
    ).content.decode()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert re.search(r'<pre class="es-json">\{\n  &quot;title&quot;: ', page)
    listing = viewer.get(EVENTS).content.decode()
    assert "<script>alert" not in listing


def test_event_browser_is_read_only(viewer: Client, operator: Client) -> None:
    task = uuid4()
    [event] = EventStore().append(task, [TaskCreated(aggregate_id=task, title="t")])
    change = reverse("admin:django_eventsource_event_change", args=[event.position])
    for client in (viewer, operator):
        assert client.get(reverse("admin:django_eventsource_event_add")).status_code == 403
        assert client.post(change, {"event_type": "Hacked"}).status_code == 403
        delete = reverse("admin:django_eventsource_event_delete", args=[event.position])
        assert client.post(delete, {"post": "yes"}).status_code == 403
    assert Event.objects.get().event_type == "TaskCreated"
    response = operator.get(EVENTS)
    assert "action" not in response.context or not response.context["action_form"]


def test_event_filters_and_search(viewer: Client) -> None:
    store = EventStore()
    ids = task_history(store, tasks=6, renames=2, tenants=("acme", "globex"), seed=7)
    events = settled(store).read_all().events

    def shown(**params) -> list[int]:
        response = viewer.get(EVENTS, params)
        assert response.status_code == 200
        return [e.position for e in response.context["cl"].result_list]

    everything = shown()
    assert everything == sorted((e.position for e in events), reverse=True)  # newest first
    assert shown(event_type="TaskCreated") == sorted(
        (e.position for e in events if e.event_type == "TaskCreated"), reverse=True
    )
    assert shown(tenant_id="acme") == sorted(
        (e.position for e in events if e.tenant_id == "acme"), reverse=True
    )
    assert len(shown(aggregate_type="Task")) == len(events)
    stream = sorted((e.position for e in events if e.aggregate_id == ids[2]), reverse=True)
    assert shown(q=str(ids[2])) == stream
    assert shown(q=str(events[3].event_id)) == [events[3].position]
    assert shown(q=f"#{events[3].position}") == [events[3].position]
    assert shown(q="not-a-uuid") == []
    filters = viewer.get(EVENTS).content.decode()
    for choice in ("TaskCreated", "TaskRenamed", "acme", "globex", "Task"):
        assert choice in filters


def test_event_list_never_counts_the_whole_table(viewer: Client) -> None:
    store = EventStore()
    admin_class = admin.site._registry[Event]
    assert admin_class.show_full_result_count is False
    task_history(store, tasks=60, renames=3, seed=8)
    total = len(settled(store).read_all())
    with CaptureQueriesContext(connection) as queries:
        response = viewer.get(EVENTS)
    table = Event._meta.db_table
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper() and table in q["sql"]]
    assert counts, "the paginator counts (a bounded number of) rows"
    assert all("LIMIT" in sql.upper() for sql in counts), counts
    assert not [q for q in queries if "SELECT DISTINCT" in q["sql"].upper() and table in q["sql"]]
    paginator = response.context["cl"].paginator
    assert isinstance(paginator, LookAheadPaginator)
    assert total > paginator.limit and not paginator.is_exact
    assert f"more than {paginator.limit} events" in response.content.decode()
    assert len(response.context["cl"].result_list) == admin_class.list_per_page
    # "Show all" is never offered (nor obeyed) on a count that is only a lower bound.
    assert 'class="showall"' not in response.content.decode()
    response = viewer.get(EVENTS, {"all": ""})
    assert len(response.context["cl"].result_list) == admin_class.list_per_page
    # Deeper pages look further ahead.
    response = viewer.get(EVENTS, {"p": 2})
    assert response.context["cl"].paginator.limit == 4 * admin_class.list_per_page


def test_event_search_uses_an_index(vendor: str) -> None:
    store = EventStore()
    task_history(store, tasks=30, tenants=("acme", "globex", None), seed=9)
    target = settled(store).read_all().events[5]
    model_admin = admin.site._registry[Event]

    queryset, _ = model_admin.get_search_results(
        RequestFactory().get(EVENTS), Event.objects.all(), str(target.aggregate_id)
    )
    assert {e.aggregate_id for e in queryset} == {target.aggregate_id}
    plan = queryset.explain()
    if vendor == "postgresql":
        with connection.cursor() as cursor:  # a tiny table: make the planner show its hand
            cursor.execute("SET enable_seqscan = off")
            try:
                plan = queryset.explain()
            finally:
                cursor.execute("RESET enable_seqscan")
        assert "Index" in plan and "Seq Scan" not in plan, plan
    else:
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
        assert not re.search(r"SCAN [\w\"]+event(?! USING)", plan), plan
    assert sorted(distinct_values(Event, "tenant_id")) == ["", "acme", "globex"]


# Dead letters ---------------------------------------------------------------------------


def test_dead_letter_retry_action(django_user_model, operator: Client, viewer: Client) -> None:
    store = EventStore()
    poison = poisoned(store)
    letter = control.dead_letter_failed("task_board")
    run()
    # A second letter, for an event that applies fine now.
    good = next(e for e in settled(store).read_all() if e.event_type == "TaskCompleted")
    fine = DeadLetter.objects.create(
        projection="task_board",
        event_position=good.position,
        event_id=good.event_id,
        event_type=good.event_type,
        error="a transient failure",
    )
    page = viewer.get(DEAD_LETTERS).content.decode()
    assert f"#{poison}" in page and "boom" in page
    post = {"action": "retry_selected", "_selected_action": [letter.pk, fine.pk], "index": 0}
    assert viewer.post(DEAD_LETTERS, post).status_code == 403
    letter.refresh_from_db()
    assert letter.attempts == 4 and letter.resolved_at is None

    response = operator.post(DEAD_LETTERS, post, follow=True)
    text = " ".join(messages_of(response))
    assert "failed again" in text
    # The runner applied that event long ago: the retry says so, it does not claim it.
    assert f"Event #{good.position} was already in the read model" in text
    assert "Applied and resolved" not in text
    letter.refresh_from_db()
    fine.refresh_from_db()
    assert letter.resolved_at is None and letter.attempts == 5  # the poison fails again
    assert fine.resolved_at is not None and fine.resolution == "held"


def test_dead_letters_show_their_stream_and_what_they_wait_behind(operator: Client) -> None:
    store = EventStore()
    poison = poisoned(store)  # task_board failed on it (pause policy)
    letter = control.dead_letter_failed("task_board")
    bad = letter.aggregate_id
    assert bad is not None
    [later] = store.append(bad, [TaskRenamed(aggregate_id=bad, title="later")])
    assert not run().failed  # the later rename is parked, not a gap error
    parked = DeadLetter.objects.get(event_position=later.position)
    assert parked.parked_behind == poison
    page = operator.get(DEAD_LETTERS).content.decode()
    assert f"{bad} v2" in page and f"{bad} v3" in page  # the stream column
    assert "waits behind" in page and f">#{poison}</a>" in page
    # Retrying the parked letter retries its stream: the poison still fails first.
    post = {"action": "retry_selected", "_selected_action": [parked.pk], "index": 0}
    text = " ".join(messages_of(operator.post(DEAD_LETTERS, post, follow=True)))
    assert f"Nothing was applied. Event #{poison} failed again" in text
    assert DeadLetter.objects.filter(resolved_at=None).count() == 2


def test_projection_pages_show_unresolved_dead_letters(viewer: Client) -> None:
    store = EventStore()
    poisoned(store)
    control.dead_letter_failed("task_board")
    query = "projection__exact=task_board&amp;tenant_id__exact=&amp;resolved_at__isempty=1"
    link = f'<a class="es-dead-letters" href="{DEAD_LETTERS}?{query}">1</a>'
    for page in (PROJECTIONS, LAG, detail("task_board")):
        assert link in viewer.get(page).content.decode(), page
    listed = viewer.get(DEAD_LETTERS + "?" + query.replace("&amp;", "&"))
    assert [str(letter) for letter in listed.context["cl"].result_list] == [
        str(DeadLetter.objects.get())
    ]


def test_the_detail_page_shows_no_counter_that_nothing_keeps(viewer: Client) -> None:
    store = EventStore()
    task_history(store, tasks=2, seed=6)
    run()
    page = viewer.get(detail("task_board")).content.decode()
    assert "Events processed" not in page  # the field nothing wrote is gone
    assert "Attempts" in page


def test_a_filtered_event_list_never_claims_a_count_it_did_not_make(viewer: Client) -> None:
    """The look-ahead count is a lower bound: the search bar says "more than N", as the
    footer does, instead of Django's "N results" (it said "151 results")."""
    store = EventStore()
    task_history(store, tasks=60, renames=3, seed=9)
    settled(store)
    response = viewer.get(EVENTS, {"aggregate_type": "Task"})  # every event, filtered
    paginator = response.context["cl"].paginator
    assert not paginator.is_exact, "the history is long enough to need the look-ahead"
    page = response.content.decode()
    assert f"more than {paginator.limit} results" in page
    assert f"{paginator.count} results" not in page
    assert f"more than {paginator.limit} events" in page  # the footer agrees
    # A short list is counted exactly, and says its real count.
    exact = viewer.get(EVENTS, {"event_type": "TaskCompleted"})
    assert exact.context["cl"].paginator.is_exact
    count = exact.context["cl"].result_count
    assert f"{count} results" in exact.content.decode()


# Reusable: importable, subclassable, unregistrable ------------------------------------


def test_admin_classes_are_registered_and_replaceable() -> None:
    for model, cls in (
        (ProjectionState, ProjectionStateAdmin),
        (Event, EventAdmin),
        (DeadLetter, DeadLetterAdmin),
    ):
        assert type(admin.site._registry[model]) is cls
    site = admin.AdminSite(name="ops")

    class MyEventAdmin(EventAdmin):
        list_per_page = 5

    site.register(Event, MyEventAdmin)
    site.register(ProjectionState, ProjectionStateAdmin)
    assert site.is_registered(Event)
    site.unregister(Event)
    assert not site.is_registered(Event)
    names = {p.name for p in site._registry[ProjectionState].get_urls() if p.name}
    assert {
        "django_eventsource_projectionstate_lag",
        "django_eventsource_projectionstate_detail",
        "django_eventsource_projectionstate_action",
    } <= names
