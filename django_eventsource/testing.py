"""Helpers for your own test suite: given some events, run the projections, assert on rows.

Load the pytest fixtures in your ``conftest.py`` (this plugin is deliberately not
auto-loaded: a Django project opts in explicitly, as it does for pytest-django)::

    pytest_plugins = ["django_eventsource.testing"]

and build events with factory-boy::

    from django_eventsource.testing import DomainEventFactory, given_events, stream

    class TaskCreatedFactory(DomainEventFactory):
        class Meta:
            model = TaskCreated

        title = factory.Sequence(lambda n: f"task {n}")

    def test_board(event_store, run_projections):
        given_events(event_store, *stream(TaskCreatedFactory, TaskCompletedFactory))
        run_projections("task_board")
        assert TaskSummary.objects.get().done

The fixtures need pytest and pytest-django,
[`DomainEventFactory`][django_eventsource.testing.DomainEventFactory] needs factory-boy;
``pip install "django-eventsource[testing]"`` installs all three.
[`given_events`][django_eventsource.testing.given_events],
[`stream`][django_eventsource.testing.stream] and
[`run_projections`][django_eventsource.testing.run_projections] need none of them and work in
Django's own test
classes too (``TransactionTestCase`` on PostgreSQL: see
[`run_projections`][django_eventsource.testing.run_projections]).

Importing this module never imports models, so ``pytest_plugins`` can load it before Django
is set up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from asgiref.sync import sync_to_async
from django.db import connections

from django_eventsource.backends.postgresql.horizon import (
    has_appended,
    hidden_events,
    horizon_holder,
)
from django_eventsource.checkpoints import CheckpointStore, InMemoryCheckpointStore
from django_eventsource.events import DomainEvent
from django_eventsource.projections import Projection, projection_registry
from django_eventsource.runner import CatchUpResult, catch_up
from django_eventsource.store import (
    BaseEventStore,
    EventStore,
    InMemoryEventStore,
    StoredEvent,
)

if TYPE_CHECKING:
    from factory.base import Factory

    class DomainEventFactory(Factory[DomainEvent]):
        """factory-boy base for events (built on first access; see below)."""


__all__ = [
    "DomainEventFactory",
    "ProjectionRef",
    "arun_projections",
    "given_events",
    "run_projections",
    "stream",
]

#: How long `run_projections` waits for events an appending transaction holds back.
DEFAULT_TIMEOUT = 10.0
POLL_INTERVAL = 0.02

INSTALL_HINT = 'Install the test extras: pip install "django-eventsource[testing]"'

#: A projection to run: an instance, a class, or a registered name.
ProjectionRef = Projection | type[Projection] | str


# Appending events ---------------------------------------------------------------------------


def given_events(store: BaseEventStore, *events: DomainEvent) -> list[StoredEvent]:
    """Append ``events`` in the order given, through the store's public ``append``.

    Consecutive events of the same stream (tenant and ``aggregate_id``) go in one append;
    each append states the exact ``expected_version`` the stream is at, so the store's
    version and concurrency rules are exercised, not bypassed. Returns the stored events
    (with their positions). Streams may already hold events: they are continued.
    """
    versions: dict[tuple[str | None, UUID], int] = {}
    stored: list[StoredEvent] = []
    for (tenant, aggregate_id), batch in _runs(events):
        key = (tenant, aggregate_id)
        if key not in versions:
            versions[key] = store.stream_version(aggregate_id, tenant_id=tenant)
        stored += store.append(aggregate_id, batch, expected_version=versions[key])
        versions[key] += len(batch)
    return stored


def _runs(
    events: Iterable[DomainEvent],
) -> Iterator[tuple[tuple[str | None, UUID], list[DomainEvent]]]:
    """Group consecutive events of the same stream, keeping the order."""
    key: tuple[str | None, UUID] | None = None
    batch: list[DomainEvent] = []
    for event in events:
        if not isinstance(event, DomainEvent):
            raise TypeError(f"given_events() takes DomainEvent instances, not {event!r}")
        this = (event.tenant_id, event.aggregate_id)
        if batch and this != key:
            yield key, batch  # type: ignore[misc]
            batch = []
        key = this
        batch.append(event)
    if batch:
        yield key, batch  # type: ignore[misc]


class _Unset(Enum):
    UNSET = "UNSET"


def stream(
    *events: DomainEvent | Callable[..., DomainEvent],
    aggregate_id: UUID | None = None,
    tenant_id: str | _Unset | None = _Unset.UNSET,
) -> list[DomainEvent]:
    """The events of one stream, in order: they share one ``aggregate_id`` and tenant.

    Each item is an event factory (any callable taking ``aggregate_id`` and ``tenant_id``
    keywords, such as a [`DomainEventFactory`][django_eventsource.testing.DomainEventFactory]
    subclass), called with the stream's ids,
    or an event, which is copied onto the stream. ``aggregate_id`` defaults to a new UUID;
    ``tenant_id`` to the first event's (a factory's default, for instance)::

        task = stream(TaskCreatedFactory, TaskRenamedFactory.build(title="v2"), tenant_id="acme")
    """
    ids: dict[str, Any] = {"aggregate_id": aggregate_id or uuid4()}
    if tenant_id is not _Unset.UNSET:
        ids["tenant_id"] = tenant_id
    built: list[DomainEvent] = []
    for item in events:
        event = item.model_copy(update=ids) if isinstance(item, DomainEvent) else item(**ids)
        if not isinstance(event, DomainEvent):
            raise TypeError(f"stream() expects events or event factories, got {event!r}")
        ids["tenant_id"] = event.tenant_id  # the first event's, when none was given
        built.append(event)
    return built


# Running projections ------------------------------------------------------------------------


def run_projections(
    *projections: ProjectionRef,
    event_store: BaseEventStore | None = None,
    checkpoint_store: CheckpointStore | None = None,
    tenant_id: str | None = None,
    batch_size: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, CatchUpResult]:
    """Catch projections up to the store's head, one after the other; results by label.

    Without arguments it runs every registered projection that the store does not already
    keep current: asynchronous ones always, inline ones only when the store has
    ``inline_projections`` off. It uses [`catch_up`][django_eventsource.catch_up]: the
    worker's own batch loop, with its locks, status and fencing, but without retries. A
    failing event raises [`ProjectionError`][django_eventsource.ProjectionError] once the
    events before it are applied (the handler's exception is its ``__cause__``), so the test
    fails with the real traceback, and the projection is left `failed`, as a worker would
    leave it (a later call raises [`ProjectionSkipped`][django_eventsource.ProjectionSkipped]
    until it is resumed). A projection another runner holds raises
    [`ProjectionLocked`][django_eventsource.ProjectionLocked].

    Checkpoints go to the projection's database (``DatabaseCheckpointStore``), so a second
    call resumes where the first stopped, as a worker would. Pass an
    [`InMemoryCheckpointStore`][django_eventsource.InMemoryCheckpointStore] to keep them out of
    the database (the same loop then runs without locks or status).

    On PostgreSQL, projections see an event once every transaction that appended events
    before it committed has ended. "The head" means every event committed when this is
    called: if an appending transaction that has not committed (another test process, a
    shell) holds some back, it waits up to ``timeout`` seconds for it, then raises
    ``RuntimeError`` naming it. It never skips them.
    """
    store = event_store if event_store is not None else EventStore()
    _wait_for_committed_events(store, tenant_id, timeout)
    results: dict[str, CatchUpResult] = {}
    for projection in _resolve(projections, store):
        results[projection.label] = catch_up(
            projection,
            event_store=store,
            checkpoint_store=checkpoint_store,
            tenant_id=tenant_id,
            batch_size=batch_size,
        )
    return results


async def arun_projections(
    *projections: ProjectionRef,
    event_store: BaseEventStore | None = None,
    checkpoint_store: CheckpointStore | None = None,
    tenant_id: str | None = None,
    batch_size: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, CatchUpResult]:
    """Async twin of [`run_projections`][django_eventsource.testing.run_projections]."""
    return await sync_to_async(run_projections)(
        *projections,
        event_store=event_store,
        checkpoint_store=checkpoint_store,
        tenant_id=tenant_id,
        batch_size=batch_size,
        timeout=timeout,
    )


def _wait_for_committed_events(
    store: BaseEventStore, tenant_id: str | None, timeout: float
) -> None:
    """Make sure the projections can read every event already committed, or say why not.

    On PostgreSQL, ``read_all`` only returns events below the ordering horizon: the oldest
    transaction that appended events and has not ended. Events appended inside a test
    wrapped in a transaction that never commits (pytest-django's ``db``, Django's
    ``TestCase``) never get there, and events committed while another appending transaction
    is open get there when it ends. Transactions that append nothing hold nothing back.
    Without this, the projections would silently apply less than the test appended.
    """
    if not isinstance(store, EventStore):
        return
    connection = connections[store.using]
    if connection.vendor != "postgresql":
        return
    deadline = time.monotonic() + timeout
    while hidden := hidden_events(store.using, tenant_id):
        if connection.in_atomic_block and has_appended(connection):
            # This transaction has appended: it holds the horizon itself until it commits.
            raise RuntimeError(
                f"{hidden} event(s) are invisible to projections: on PostgreSQL, projections "
                "only see events of committed transactions, and this test runs inside one "
                "that never commits (pytest-django's db fixture or Django's TestCase). Use "
                "the run_projections fixture (it requests transactional_db), "
                "@pytest.mark.django_db(transaction=True) or TransactionTestCase."
            )
        if time.monotonic() >= deadline:
            holder = horizon_holder(store.using, with_query=True)
            who = (
                holder.describe() + (f": {holder.query}" if holder.query else "")
                if holder is not None
                else "a transaction that has ended since"
            )
            raise RuntimeError(
                f"{hidden} committed event(s) are still invisible to projections after "
                f"{timeout:g}s: a transaction that appended events and has not committed "
                f"holds the ordering horizon back (the oldest is {who}). Finish it, or pass "
                "a longer timeout."
            )
        time.sleep(POLL_INTERVAL)


def _resolve(refs: Sequence[ProjectionRef], store: BaseEventStore) -> list[Projection]:
    if not refs:
        return [
            cls()
            for cls in projection_registry.all()
            if not (cls.inline and store.inline_projections)
        ]
    projections = []
    for ref in refs:
        if isinstance(ref, str):
            projections.append(projection_registry.get(ref)())
        elif isinstance(ref, type) and issubclass(ref, Projection):
            projections.append(ref())
        elif isinstance(ref, Projection):
            projections.append(ref)
        else:
            raise TypeError(
                f"run_projections() takes projections, projection classes or registered "
                f"names, not {ref!r}"
            )
    return projections


# factory-boy --------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _build_event_factory() -> type:
    try:
        from factory.base import Factory
        from factory.declarations import LazyFunction
    except ImportError as exc:
        raise ImportError(
            f"django_eventsource.testing.DomainEventFactory needs factory-boy. {INSTALL_HINT}"
        ) from exc

    class DomainEventFactory(Factory[DomainEvent]):
        """factory-boy base for events: set ``Meta.model`` to a DomainEvent subclass.

        Fills the envelope: a new ``aggregate_id`` per event (use
        [`stream`][django_eventsource.testing.stream] or pass
        ``aggregate_id=`` to put several on one stream), ``tenant_id`` (None; set it on a
        subclass or per call) and ``occurred_at`` (now). ``event_id`` and
        ``aggregate_version`` are left to the event and the store. Events are immutable, so
        ``create()`` and ``build()`` both return an unsaved event; append them with
        [`given_events`][django_eventsource.testing.given_events].
        """

        class Meta:
            abstract = True

        aggregate_id = LazyFunction(uuid4)  # type: ignore[no-untyped-call]
        tenant_id = None
        occurred_at = LazyFunction(_now)  # type: ignore[no-untyped-call]

    DomainEventFactory.__module__ = __name__
    return DomainEventFactory


def __getattr__(name: str) -> Any:
    # Built on first use, so that the rest of this module works without factory-boy.
    if name == "DomainEventFactory":
        cls = _build_event_factory()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# pytest plugin ------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # the helpers above still work; only the fixtures need pytest
    pytest = None  # type: ignore[assignment]


if pytest is not None:

    def pytest_configure(config: pytest.Config) -> None:
        if not config.pluginmanager.hasplugin("django"):
            raise pytest.UsageError(
                "django_eventsource.testing needs pytest-django (its fixtures use the test "
                f"database). {INSTALL_HINT}"
            )

    @pytest.fixture
    def event_store(db: None) -> EventStore:
        """An [`EventStore`][django_eventsource.EventStore] on the test database (inline
        projections on). Requesting it gives the test database access, as ``db`` does; a
        ``django_db(transaction=True)`` mark is honoured."""
        return EventStore()

    @pytest.fixture
    def memory_event_store() -> InMemoryEventStore:
        """An [`InMemoryEventStore`][django_eventsource.InMemoryEventStore] that touches no
        database: its
        inline projections are off (use ``event_store`` to test those)."""
        return InMemoryEventStore(inline_projections=False)

    @pytest.fixture(name="run_projections")
    def run_projections_fixture(
        transactional_db: None,
    ) -> Callable[..., dict[str, CatchUpResult]]:
        """[`run_projections`][django_eventsource.testing.run_projections], with the test's own
        checkpoints for in-memory stores.

        It requests ``transactional_db``: projections read committed events only on
        PostgreSQL, so the test's appends must really commit (pytest-django then empties
        the tables after the test instead of rolling a transaction back).

        ``run_projections(*projections, event_store=None, tenant_id=None, batch_size=None)``
        catches the projections up (all of them when none is named) and returns the
        results by label. With an in-memory store, checkpoints stay in memory too, one set
        per store, so a second call resumes instead of starting over.
        """
        memory_checkpoints: dict[InMemoryEventStore, InMemoryCheckpointStore] = {}

        def run(
            *projections: ProjectionRef,
            event_store: BaseEventStore | None = None,
            checkpoint_store: CheckpointStore | None = None,
            tenant_id: str | None = None,
            batch_size: int | None = None,
            timeout: float = DEFAULT_TIMEOUT,
        ) -> dict[str, CatchUpResult]:
            if checkpoint_store is None and isinstance(event_store, InMemoryEventStore):
                checkpoint_store = memory_checkpoints.setdefault(
                    event_store, InMemoryCheckpointStore()
                )
            return run_projections(
                *projections,
                event_store=event_store,
                checkpoint_store=checkpoint_store,
                tenant_id=tenant_id,
                batch_size=batch_size,
                timeout=timeout,
            )

        return run
