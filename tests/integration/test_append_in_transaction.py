"""An append inside the caller's transaction: one statement, no savepoint, and every refusal
still typed and leaving that transaction usable (issue 19).

On PostgreSQL the append function's guard (migration 0008) catches a unique violation inside
the function; on SQLite a failed statement is rolled back alone. Either way the caller can
catch the typed error and go on writing in the same transaction, which is what the savepoint
around every append used to ensure.
"""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from django_eventsource import (
    ConcurrencyError,
    DomainEvent,
    DuplicateEventId,
    EventStore,
    ExpectedVersion,
    register_event,
)

pytestmark = pytest.mark.django_db(transaction=True)


@register_event
class InTxnNoted(DomainEvent):
    aggregate_type: str = "InTxn"
    n: int = 0


def noted(stream: UUID, n: int = 0) -> InTxnNoted:
    return InTxnNoted(aggregate_id=stream, n=n)


def resent(event: InTxnNoted) -> InTxnNoted:
    """The event as a client sends it again (a new object, not stamped by the first append)."""
    copy = event.model_copy(update={"aggregate_version": 0})
    copy._position = None
    return copy


def bare_store() -> EventStore:
    """A store with nothing to share its appends' transactions (the test app registers
    inline projections): its appends run as bare statements."""
    return EventStore(inline_projections=False)


def statements(context: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in context.captured_queries]


def test_an_append_in_the_callers_transaction_is_one_statement() -> None:
    store = bare_store()
    stream = uuid4()
    with transaction.atomic(), CaptureQueriesContext(connection) as context:
        store.append(stream, [noted(stream), noted(stream, 1)], expected_version=0)
    sql = statements(context)
    assert not [s for s in sql if "SAVEPOINT" in s.upper()], sql
    assert len(sql) == 1, sql
    assert store.stream_version(stream) == 2


def test_a_conflict_in_the_callers_transaction_is_typed_and_leaves_it_usable() -> None:
    store = bare_store()
    stream, other = uuid4(), uuid4()
    store.append(stream, [noted(stream)], expected_version=0)
    with transaction.atomic():
        # expected_version=0 on a stream at version 1: the INSERT hits the version constraint.
        with pytest.raises(ConcurrencyError) as info:
            store.append(stream, [noted(stream, 1)], expected_version=0)
        assert (info.value.expected_version, info.value.actual_version) == (0, 1)
        # The transaction goes on: the next append and reads in it work, and commit.
        [stored] = store.append(other, [noted(other, 2)], expected_version=0)
        assert store.stream_version(stream) == 1
    assert [e.position for e in store.read_stream(other)] == [stored.position]
    assert store.stream_version(stream) == 1


def test_a_repeat_in_the_callers_transaction_returns_the_stored_events() -> None:
    store = bare_store()
    stream, other = uuid4(), uuid4()
    events = [noted(stream), noted(stream, 1)]
    first = store.append(stream, events, expected_version=0)
    with transaction.atomic():
        again = store.append(stream, [resent(e) for e in events], expected_version=0)
        assert [e.position for e in again] == [e.position for e in first]
        store.append(other, [noted(other)], expected_version=ExpectedVersion.ANY)
    assert store.stream_version(stream) == 2
    assert store.stream_version(other) == 1


def test_a_reused_event_id_in_the_callers_transaction_is_typed_and_leaves_it_usable() -> None:
    store = bare_store()
    stream, other = uuid4(), uuid4()
    [stored] = store.append(stream, [noted(stream)], expected_version=0)
    clash = InTxnNoted(aggregate_id=other, event_id=stored.event_id, n=5)
    with transaction.atomic():
        with pytest.raises(DuplicateEventId) as info:
            store.append(other, [clash], expected_version=0)
        assert info.value.event_id == stored.event_id
        store.append(other, [noted(other, 6)], expected_version=0)
    assert [e.event.n for e in store.read_stream(other)] == [6]  # type: ignore[attr-defined]


def test_a_stale_expected_version_in_the_callers_transaction_leaves_it_usable() -> None:
    """Version 1 exists, so the check passes, and the INSERT of version 2 hits the
    constraint inside the transaction; an ANY append then goes on in it."""
    store = bare_store()
    stream = uuid4()
    store.append(stream, [noted(stream), noted(stream, 1)], expected_version=0)
    with transaction.atomic():
        with pytest.raises(ConcurrencyError):
            store.append(stream, [noted(stream, 2)], expected_version=1)
        [stored] = store.append(stream, [noted(stream, 3)])
        assert stored.aggregate_version == 3
    assert store.stream_version(stream) == 3
