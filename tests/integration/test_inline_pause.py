"""An inline projection cannot be paused: every append applies it inside its own
transaction, whatever its status. Pausing it is refused (``InlineNotPausable``) everywhere:
the API, the admin's button and action. Its rebuild can still be paused (that suspends the
rebuild). A pause stored by an earlier version is reported as the truth (``inline``), and
resuming clears it.
"""

from __future__ import annotations

from io import StringIO
from uuid import uuid4

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from django_eventsource import (
    EventStore,
    IllegalTransition,
    InlineNotPausable,
    control,
    state,
)
from django_eventsource.models import ProjectionState
from django_eventsource.rebuild import rebuild
from django_eventsource.status import projection_statuses
from tests.testapp.events import TaskCreated
from tests.testapp.models import TaskIndex
from tests.testapp.projections import TaskIndexProjection

pytestmark = pytest.mark.django_db(transaction=True)

INDEX = "task_index"


def append(store: EventStore, title: str = "t") -> None:
    task = uuid4()
    store.append(task, [TaskCreated(aggregate_id=task, title=title)])


def row() -> tuple[str, int, str]:
    [found] = [r for r in projection_statuses([INDEX]) if r.tenant_id == ""]
    return found.status, found.lag_events, found.stored_status


def stored() -> ProjectionState | None:
    return ProjectionState.objects.filter(name=INDEX, tenant_id="").first()


def test_pausing_an_inline_projection_is_refused_on_a_fresh_database() -> None:
    append(EventStore())
    with pytest.raises(InlineNotPausable) as info:
        control.pause(INDEX)
    assert isinstance(info.value, IllegalTransition)
    assert (info.value.projection, info.value.transition) == (INDEX, "pause")
    message = str(info.value)
    assert message.startswith(
        "Cannot pause projection 'task_index': it is inline, applied inside every append's "
        "own transaction"
    )
    assert "Nothing was changed." in message
    assert "rebuild_projections task_index" in message
    assert "inline = False" in message
    assert stored() is None  # no state row made up for the refusal
    assert row()[0] == "inline"


def test_pausing_an_inline_projection_with_a_checkpoint_is_refused() -> None:
    store = EventStore()
    append(store)
    rebuild(TaskIndexProjection())  # a checkpoint
    with pytest.raises(InlineNotPausable):
        control.pause(INDEX)
    current = stored()
    assert current is not None and current.status == "idle"
    for n in range(3):
        append(store, f"after{n}")
    assert row() == ("inline", 0, "idle")
    assert TaskIndex.objects.count() == 4


def test_its_rebuild_can_still_be_paused() -> None:
    """Pausing a rebuild of an inline projection suspends the rebuild (appends leave their
    events to it), which is a real pause: allowed."""
    append(EventStore())
    state.begin_rebuild(INDEX, None, "default", owner="a rebuild")
    control.pause(INDEX)
    current = stored()
    assert current is not None
    assert (current.status, current.suspended_rebuild) == ("paused", True)
    assert row()[0] == "paused"
    control.resume(INDEX)
    assert stored().status == "rebuilding"  # type: ignore[union-attr]


def legacy_pause() -> None:
    """The pause earlier versions stored for an inline projection outside a rebuild."""
    ProjectionState.objects.update_or_create(
        name=INDEX, tenant_id="", defaults={"status": "paused", "position": 1}
    )


def test_a_pause_stored_by_an_earlier_version_is_reported_as_the_truth() -> None:
    store = EventStore()
    append(store)
    rebuild(TaskIndexProjection())
    legacy_pause()
    for n in range(3):
        append(store, f"after{n}")
    # Appends apply it all the same: it is inline, current, no lag.
    assert row() == ("inline", 0, "paused")
    assert TaskIndex.objects.count() == 4
    out = StringIO()
    call_command("projection_status", INDEX, stdout=out)
    text = out.getvalue()
    assert "task_index: stored as paused" in text
    assert "control.resume('task_index')" in text
    # Resume still works, and clears it.
    control.resume(INDEX)
    assert row() == ("inline", 0, "idle")


def login(django_user_model) -> Client:  # type: ignore[no-untyped-def]
    user = django_user_model.objects.create_user("operator", password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="django_eventsource",
            codename__in=("view_projectionstate", "pause_projection"),
        )
    )
    client = Client()
    client.force_login(user)
    return client


DETAIL = reverse("admin:django_eventsource_projectionstate_detail", args=[INDEX])
LIST = reverse("admin:django_eventsource_projectionstate_changelist")


def action(what: str) -> str:
    return reverse("admin:django_eventsource_projectionstate_action", args=[INDEX, what])


def buttons(client: Client, url: str) -> str:
    return client.get(url).content.decode()


def test_the_admin_offers_no_pause_and_refuses_one(django_user_model) -> None:  # type: ignore[no-untyped-def]
    client = login(django_user_model)
    store = EventStore()
    append(store)
    rebuild(TaskIndexProjection())
    ProjectionState.objects.filter(name=INDEX).update(status="running", owner="a runner")
    # Even a running catch-up of it (reported running or stale) offers no Pause.
    assert 'data-action="pause"' not in buttons(client, DETAIL)
    ProjectionState.objects.filter(name=INDEX).update(status="idle", owner="")
    assert 'data-action="pause"' not in buttons(client, DETAIL)
    response = client.post(action("pause"), {"tenant": "", "next": LIST}, follow=True)
    messages = [str(m) for m in response.context["messages"]]
    assert any(
        m.startswith("Cannot pause projection 'task_index': it is inline") for m in messages
    )
    assert stored().status == "idle"  # type: ignore[union-attr]
    # The list's bulk action refuses it too.
    pk = stored().pk  # type: ignore[union-attr]
    response = client.post(
        LIST, {"action": "pause_selected", "_selected_action": [str(pk)]}, follow=True
    )
    messages = [str(m) for m in response.context["messages"]]
    assert any("it is inline" in m for m in messages)
    assert stored().status == "idle"  # type: ignore[union-attr]


def test_the_admin_pauses_its_rebuild_and_resumes_a_stored_pause(django_user_model) -> None:  # type: ignore[no-untyped-def]
    client = login(django_user_model)
    append(EventStore())
    state.begin_rebuild(INDEX, None, "default", owner="a rebuild")
    assert 'data-action="pause"' in buttons(client, DETAIL)
    client.post(action("pause"), {"tenant": ""})
    assert stored().status == "paused"  # type: ignore[union-attr]
    ProjectionState.objects.filter(name=INDEX).delete()
    legacy_pause()
    page = buttons(client, DETAIL)
    assert 'data-action="pause"' not in page
    assert 'data-action="resume"' in page  # the stored pause can be cleared
    client.post(action("resume"), {"tenant": ""})
    assert stored().status == "idle"  # type: ignore[union-attr]
