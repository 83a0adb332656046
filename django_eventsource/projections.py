"""Projections: classes whose ``@handles`` methods turn events into read-model rows.

::

    class TaskBoard(DeclarativeProjection):
        name = "task_board"
        models = [TaskSummary]
        row_keys = {TaskSummary: "task_id"}   # rows keyed by one stream: prefetched per batch

        @handles(TaskCreated)
        def created(self, event: TaskCreated) -> None:
            if row := self.row(TaskSummary, event, task_id=event.aggregate_id):
                row.title = event.title

``self.row()`` returns the row to change (loaded or new), or None when the row already holds
the event (a replay): the row's embedded checkpoint is set for you and written in the same
transaction as the row. A projection that sets ``name`` is registered, and run by
``manage.py replay_projections``; set ``inline = True`` to apply it inside each append's own
transaction instead.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from asgiref.sync import async_to_sync, sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError

from django_eventsource.conf import database_alias
from django_eventsource.events import DomainEvent, mark_event_types, marked_methods
from django_eventsource.exceptions import (
    IsolationNotSupported,
    ProjectionError,
    RebuildRefused,
    StaleSnapshot,
    ValueTooLong,
)
from django_eventsource.rows import RowSet
from django_eventsource.store import BaseEventStore, EventStore
from django_eventsource.stored import StoredEvent
from django_eventsource.transactions import write_transaction
from django_eventsource.validation import check_projection_name

if TYPE_CHECKING:
    from django.db.models import Model

__all__ = [
    "DeclarativeProjection",
    "InlineProjections",
    "Projection",
    "ProjectionRegistry",
    "handles",
    "projection_registry",
]

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound="Model")
HANDLES_ATTR = "__eventsource_handles__"
#: The projection whose ``async def`` handler is running: its rows stay in the thread that
#: awaits the handler (and owns the transaction), so the handler reaches them through
#: ``sync_to_async``. Only used to say so when a handler tries ``self.row()`` directly.
_async_handler: ContextVar[Projection | None] = ContextVar("_async_handler", default=None)


def handles(*event_types: type[DomainEvent] | str) -> Callable[[F], F]:
    """Mark a projection method as the handler of one or more event types (classes or names).

    The method receives the typed event; it may be ``async def``.
    """
    return mark_event_types("handles", HANDLES_ATTR, event_types)


class Projection:
    """Base class of projections. Subclass it (or
    [`DeclarativeProjection`][django_eventsource.DeclarativeProjection]) and mark
    handler methods with [`handles`][django_eventsource.handles].

    Class attributes, all optional:

    * ``name``: registers the projection under this name (unique) for the runner and commands.
    * ``models``: the read models it writes (``CheckpointedModel`` subclasses); the default
      `_truncate_read_models` deletes their rows on rebuild.
    * ``row_keys``: ``{Model: "field"}`` for rows keyed by one stream: the field holds the
      event's ``aggregate_id``, and a batch loads all its rows with one query.
    * ``inline``: apply inside the append's own transaction (read-your-writes in a request).
    * ``using``: the database alias of the read models and checkpoint (default: the store's).
    * ``error_policy``: ``"pause"`` or ``"dead_letter"`` (default: ``EVENTSOURCE``'s).
    * ``transactional``: run handlers inside ``transaction.atomic`` (default True).
    """

    name: ClassVar[str | None] = None
    models: ClassVar[Sequence[type[Model]]] = ()
    row_keys: ClassVar[Mapping[type[Model], str]] = {}
    inline: ClassVar[bool] = False
    using: ClassVar[str | None] = None
    error_policy: ClassVar[str | None] = None
    transactional: ClassVar[bool] = True

    _handlers: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = marked_methods(cls, HANDLES_ATTR, "_handlers", "handler")
        if "name" in cls.__dict__ and cls.name:
            projection_registry.register(cls)

    def __init__(self) -> None:
        self._local = threading.local()
        self.event_store: BaseEventStore | None = None

    # Routing ------------------------------------------------------------------------------

    @classmethod
    def handled_types(cls) -> frozenset[str]:
        """The event type names this projection has handlers for."""
        return frozenset(cls._handlers)

    def handler_for(self, event_type: str) -> Callable[[DomainEvent], Any] | None:
        """The bound handler for ``event_type``, or None when the projection ignores it."""
        attribute = self._handlers.get(event_type)
        return getattr(self, attribute) if attribute else None

    @property
    def database(self) -> str:
        """The alias the read models and this projection's checkpoint live in."""
        return database_alias(self.using or None)

    @property
    def label(self) -> str:
        """The name used in errors and status: ``name``, or the class name."""
        return self.name or type(self).__name__

    # Applying events ----------------------------------------------------------------------

    def handle(self, event: DomainEvent | StoredEvent) -> bool:
        """Apply one event; returns whether the projection has a handler for its type.

        Runs inside ``transaction.atomic`` on
        [`database`][django_eventsource.projections.Projection.database], together with the rows'
        embedded checkpoints. A failing handler rolls everything back and raises
        [`ProjectionError`][django_eventsource.ProjectionError].
        """
        if self.handler_for(event.event_type) is None:
            return False
        with self._atomic():
            rows = RowSet(self, tenant_id=event.tenant_id)
            self.apply(event, rows)
            try:
                rows.flush()
            except (DatabaseError, ValueTooLong) as exc:
                if not _refused(exc):
                    raise
                raise _write_refused(self, rows, [event], exc) from exc
        return True

    async def ahandle(self, event: DomainEvent | StoredEvent) -> bool:
        """Async twin of [`handle`][django_eventsource.projections.Projection.handle] (async
        handlers run in the same transaction)."""
        return await sync_to_async(self.handle)(event)

    def apply(self, event: DomainEvent | StoredEvent, rows: RowSet) -> bool:
        """Run the handler for ``event`` against a unit of work (no transaction of its own).

        The runner calls this for each event of a batch;
        [`handle`][django_eventsource.projections.Projection.handle] wraps it.
        """
        handler = self.handler_for(event.event_type)
        if handler is None:
            return False
        previous = getattr(self._local, "rows", None)
        self._local.rows = rows
        try:
            self._call(handler, inspect.iscoroutinefunction(handler), event)
        finally:
            self._local.rows = previous
        return True

    def apply_all(self, events: Iterable[DomainEvent | StoredEvent], rows: RowSet) -> int:
        """[`apply`][django_eventsource.projections.Projection.apply] each event in order against
        one unit of work; returns how many had
        a handler.

        The runner's batches use this: it looks each event type's handler up once per batch
        and installs the unit of work once, rather than once per event.
        """
        if type(self).apply is not Projection.apply:  # a subclass customises apply(): use it
            return sum(self.apply(event, rows) for event in events)
        resolved: dict[str, tuple[Callable[[DomainEvent], Any], bool] | None] = {}
        applied = 0
        previous = getattr(self._local, "rows", None)
        self._local.rows = rows
        try:
            for event in events:
                event_type = event.event_type
                try:
                    entry = resolved[event_type]
                except KeyError:
                    handler = self.handler_for(event_type)
                    entry = resolved[event_type] = (
                        None
                        if handler is None
                        else (handler, inspect.iscoroutinefunction(handler))
                    )
                if entry is None:
                    continue
                self._call(entry[0], entry[1], event)
                applied += 1
        finally:
            self._local.rows = previous
        return applied

    def _call(
        self,
        handler: Callable[[DomainEvent], Any],
        is_async: bool,
        event: DomainEvent | StoredEvent,
    ) -> None:
        """Decode the event and run one handler: both are applying the event, so any failure
        of either (a payload that no longer validates, a gap, the handler's own error) but a
        ProjectionError becomes a ProjectionError, which the runner's error policy handles."""
        try:
            domain = event.event if isinstance(event, StoredEvent) else event
            self._local.rows.handling(domain, _position(event))
            if is_async:
                token = _async_handler.set(self)
                try:
                    async_to_sync(handler)(domain)
                finally:
                    _async_handler.reset(token)
            else:
                handler(domain)
        except ProjectionError:
            raise
        except Exception as exc:
            raise ProjectionError(
                self.label,
                event_id=event.event_id,
                event_type=event.event_type,
                position=_position(event),
                tenant_id=event.tenant_id,
                cause=exc,
            ) from exc

    def _atomic(self) -> AbstractContextManager[Any]:
        if not self.transactional:
            return nullcontext()
        return write_transaction(self.database)

    # Rows ---------------------------------------------------------------------------------

    @property
    def rows(self) -> RowSet:
        """The unit of work of the event being handled (only inside a handler)."""
        rows = getattr(self._local, "rows", None)
        if rows is None:
            if _async_handler.get() is self:
                raise RuntimeError(
                    "An async def handler reaches its rows through the thread that owns the "
                    "transaction: use `await sync_to_async(self.row)(Model, event, ...)`."
                )
            raise RuntimeError("Projection.rows is only available inside a handler.")
        return rows  # type: ignore[no-any-return]

    def row(self, model: type[M], event: DomainEvent, **lookup: Any) -> M | None:
        """The row of ``model`` matching ``lookup`` to apply ``event`` to (created if missing),
        or None when the row already holds the event. Its checkpoint is set for you.

        In an ``async def`` handler: ``row = await sync_to_async(self.row)(Model, event, ...)``
        (it may query, on the handler's transaction); then change the row as usual.

        ``model`` must be one of the projection's ``models`` (or ``row_keys``):
        ``ImproperlyConfigured`` otherwise, so that a rebuild resets it and the system check
        sees every projection that writes it (a row embeds one checkpoint: two projections
        writing one model would skip each other's events).
        """
        if model not in self.models and model not in self.row_keys:
            declared = ", ".join(m._meta.label for m in (*self.models, *self.row_keys))
            raise ImproperlyConfigured(
                f"Projection {self.label!r} writes {model._meta.label} through row() but does "
                f"not declare it (models: {declared or 'none'}). Add it to the projection's "
                "models, so that its rebuild resets it and the system check can tell that no "
                "other projection writes it."
            )
        return self.rows.get(model, event, **lookup)

    def delete_row(self, row: Model) -> None:
        """Delete ``row`` when the batch commits (prefer a soft delete: see the docs)."""
        self.rows.delete(row)

    # Rebuild ------------------------------------------------------------------------------

    def _truncate_read_models(self, tenant_id: str | None = None) -> None:
        """Delete the read models' rows (one tenant's, if given). Called by rebuilds.

        For one tenant, every model must have a ``tenant_id`` column; otherwise the
        projection cannot say which rows are the tenant's, and this raises
        [`RebuildRefused`][django_eventsource.RebuildRefused] before deleting anything.
        Override it when the projection keeps state elsewhere, or knows its tenants' rows
        another way.
        """
        if tenant_id is not None:
            unscoped = self.models_without_tenant()
            if unscoped:
                raise RebuildRefused(self.label, _no_tenant_column(unscoped, tenant_id))
        for model in self.models:
            queryset = model._default_manager.using(self.database).all()
            if tenant_id is not None:
                queryset = queryset.filter(tenant_id=tenant_id)
            queryset.delete()

    def models_without_tenant(self) -> list[type[Model]]:
        """The read models the default reset cannot filter by tenant (no ``tenant_id``)."""
        return [model for model in self.models if not _has_field(model, "tenant_id")]

    def check_tenant_rebuild(self, tenant_id: str | None) -> None:
        """Raise [`RebuildRefused`][django_eventsource.RebuildRefused] when a rebuild of one
        tenant would delete other tenants' rows (the default reset, a model without a
        ``tenant_id`` column). Rebuilds call it before they change anything."""
        if tenant_id is None:
            return
        if type(self)._truncate_read_models is not Projection._truncate_read_models:
            if not _hook_takes_tenant(self):
                raise RebuildRefused(self.label, _hook_without_tenant(tenant_id))
            return  # the hook deletes the tenant's rows itself
        unscoped = self.models_without_tenant()
        if unscoped:
            raise RebuildRefused(self.label, _no_tenant_column(unscoped, tenant_id))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label!r}>"


class DeclarativeProjection(Projection):
    """The tutorial's name for [`Projection`][django_eventsource.Projection]: routes events to
    ``@handles`` methods."""


def _position(event: DomainEvent | StoredEvent) -> int | None:
    if isinstance(event, StoredEvent):
        return event.position
    return event._position


def _no_tenant_column(models: Sequence[type[Model]], tenant_id: str) -> str:
    labels = ", ".join(model._meta.label for model in models)
    return (
        f"it cannot be rebuilt for tenant {tenant_id!r} alone: {labels} "
        "has no tenant_id column, so resetting it would delete every tenant's rows. Rebuild "
        "it for all tenants, or override _truncate_read_models() to delete one tenant's rows"
    )


def _hook_takes_tenant(projection: Projection) -> bool:
    parameters = inspect.signature(projection._truncate_read_models).parameters
    return "tenant_id" in parameters or any(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters.values()
    )


def _hook_without_tenant(tenant_id: str) -> str:
    return (
        f"its _truncate_read_models() takes no tenant_id, so it cannot reset tenant "
        f"{tenant_id!r} alone (it would delete every tenant's rows). Give it a tenant_id=None "
        "parameter, or rebuild it for all tenants"
    )


def _has_field(model: type[Model], name: str) -> bool:
    return any(f.name == name for f in model._meta.concrete_fields)


class ProjectionRegistry:
    """The registered projection classes, by unique name."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Projection]] = {}
        #: (name, first class, second class) for every clash; reported by check E004.
        self.duplicates: list[tuple[str, type[Projection], type[Projection]]] = []

    def register(self, cls: type[Projection]) -> type[Projection]:
        """Register ``cls`` under ``cls.name`` (re-defining the same class replaces it)."""
        name = cls.name
        if not name:
            raise ImproperlyConfigured(f"{cls.__qualname__} needs a name to be registered.")
        try:
            check_projection_name(name)
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"{cls.__qualname__}.name: {exc}") from exc
        existing = self._classes.get(name)
        if existing is not None and _qualname(existing) != _qualname(cls):
            self.duplicates.append((name, existing, cls))
            return cls
        self._classes[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Forget the projection registered as ``name`` (tests that define projections)."""
        self._classes.pop(name, None)

    def get(self, name: str) -> type[Projection]:
        """The class registered as ``name``; ``KeyError`` listing the known names if none."""
        try:
            return self._classes[name]
        except KeyError:
            known = ", ".join(sorted(self._classes)) or "none"
            raise KeyError(f"Unknown projection {name!r}. Known projections: {known}.") from None

    def names(self) -> list[str]:
        """The registered projection names, sorted."""
        return sorted(self._classes)

    def all(self) -> list[type[Projection]]:
        """The registered projection classes, in the order of their names."""
        return [self._classes[name] for name in self.names()]

    def inline(self) -> list[type[Projection]]:
        """The projections applied inside each append's transaction."""
        return [cls for cls in self.all() if cls.inline]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[type[Projection]]:
        return iter(self.all())


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


#: The process-wide registry that projections with a ``name`` join when defined.
projection_registry = ProjectionRegistry()


def truncate_read_models(projection: Projection, tenant_id: str | None = None) -> None:
    """Call the projection's `_truncate_read_models` hook (a rebuild's reset), awaiting it
    when it is `async def`, as the tutorial writes it.

    The hook may take `tenant_id` or, as in the tutorial, no argument at all; such a hook
    cannot reset one tenant, so a tenant's rebuild refuses it
    ([`RebuildRefused`][django_eventsource.RebuildRefused], before anything changed: see
    [`check_tenant_rebuild`][django_eventsource.projections.Projection.check_tenant_rebuild])
    rather than delete every tenant's rows.
    """
    hook: Callable[..., Any] = projection._truncate_read_models
    takes_tenant = _hook_takes_tenant(projection)
    if tenant_id is not None and not takes_tenant:
        raise RebuildRefused(projection.label, _hook_without_tenant(tenant_id))
    result = hook(tenant_id) if takes_tenant else hook()
    if inspect.isawaitable(result):
        # Its ORM calls run back on this thread (sync_to_async is thread-sensitive), in the
        # rebuild's transaction.
        async def wait() -> None:
            await result

        async_to_sync(wait)()


def run_inline(store: BaseEventStore, events: Sequence[StoredEvent]) -> None:
    """Apply every inline projection to freshly appended events, in the caller's transaction.

    A failure raises [`ProjectionError`][django_eventsource.ProjectionError], which rolls the
    append back. In a transaction that reads under one snapshot (``REPEATABLE READ`` or
    ``SERIALIZABLE`` on PostgreSQL), a snapshot older than something the projections must
    see raises [`StaleSnapshot`][django_eventsource.StaleSnapshot] instead: the last
    lock-out of appends (a rebuild's reset or hand-over, a shadow swap), or a concurrent
    write to one of their rows (PostgreSQL's serialization failure, or a row created twice).
    """
    classes = projection_registry.inline()
    tenant_id = events[0].tenant_id if events else None
    deferred, isolation = _rebuilding(store, classes, events)
    for cls in classes:
        if cls.name in deferred:
            continue  # a rebuild replays these events, then takes the projection back
        projection = cls()
        projection.event_store = store
        if isinstance(store, EventStore) and projection.database != store.using:
            raise ImproperlyConfigured(
                f"Inline projection {projection.label!r} writes to database "
                f"{projection.database!r} but the events go to {store.using!r}; an inline "
                "projection must share the append's transaction. Make it asynchronous."
            )
        with projection._atomic():
            # fresh: the events were appended in this transaction, so no row holds them yet.
            rows = RowSet(projection, tenant_id=tenant_id, fresh=True, isolation=isolation)
            flushing = False
            try:
                rows.prefetch(events)
                projection.apply_all(events, rows)
                flushing = True
                rows.flush()
            except (DatabaseError, ProjectionError, ValueTooLong) as exc:
                if isinstance(exc, ProjectionError) and isinstance(
                    exc.cause, IsolationNotSupported
                ):
                    raise exc.cause from exc  # the append's to refuse, not the handler's error
                if isolation and _stale(exc, flushing):
                    raise StaleSnapshot(
                        events[0].aggregate_id,
                        tenant_id,
                        isolation=isolation,
                        reason="a concurrent transaction's write to a row this append writes",
                        projection=projection.label,
                    ) from exc
                if isinstance(exc, ProjectionError) or not _refused(exc):
                    raise
                # The database (or the length check) refused a row: applying the event
                # failed, as if the handler had raised.
                raise _write_refused(projection, rows, events, exc) from exc


def _refused(exc: BaseException) -> bool:
    """Whether writing rows failed because the database refused them (a value it cannot
    store, a constraint), which is the events' failure to apply, rather than because of
    the connection or the transaction: a deadlock, a serialization failure, a lock or
    statement timeout, a lost connection are ``OperationalError`` or ``InterfaceError``
    and keep their meaning (the caller retries the transaction or reconnects)."""
    if isinstance(exc, ValueTooLong):
        return True
    return isinstance(exc, DatabaseError) and not isinstance(
        exc, (OperationalError, InterfaceError)
    )


def refused_write(
    projection: Projection,
    rows: RowSet,
    events: Sequence[DomainEvent | StoredEvent],
    exc: BaseException,
) -> ProjectionError | None:
    """The ``ProjectionError`` for a write of ``rows`` that the database (or the length
    check) refused, naming the event at fault; None when ``exc`` is no such refusal (a
    deadlock, a lost connection keep their meaning). For code that flushes a `RowSet`
    outside a projection's own apply, such as a dead letter's retry."""
    if isinstance(exc, ProjectionError) or not _refused(exc):
        return None
    return _write_refused(projection, rows, events, exc)


def _write_refused(
    projection: Projection,
    rows: RowSet,
    events: Sequence[DomainEvent | StoredEvent],
    exc: BaseException,
) -> ProjectionError:
    """The ProjectionError of a refused write of rows: it names the event whose rows the
    refused statement held when one did (else the only event), as a handler's error does."""
    if len(rows.refused) == 1:
        domain, position = rows.refused[0]
        event_id, event_type, tenant_id = domain.event_id, domain.event_type, domain.tenant_id
    elif len(events) == 1:
        event = events[0]
        event_id, event_type, tenant_id = event.event_id, event.event_type, event.tenant_id
        position = _position(event)
    else:
        event_id, event_type, tenant_id = None, f"(one of {len(events)} events)", rows.tenant_id
        position = None
    return ProjectionError(
        projection.label,
        event_id=event_id,
        event_type=event_type,
        position=position,
        tenant_id=tenant_id,
        cause=exc,
    )


#: SQLSTATE serialization_failure: a row changed after a REPEATABLE READ or SERIALIZABLE
#: transaction's snapshot (or SERIALIZABLE's read/write dependencies).
_SERIALIZATION_FAILURE = "40001"
#: SQLSTATE unique_violation.
_UNIQUE_VIOLATION = "23505"


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (Django's, chained from the driver's), else None."""
    if isinstance(exc, ProjectionError):
        exc = exc.cause
    driver = exc.__cause__
    return getattr(driver, "sqlstate", None) or getattr(driver, "pgcode", None)


def _stale(exc: BaseException, flushing: bool) -> bool:
    """Whether an inline projection's failure, under one snapshot, comes from that snapshot:
    a serialization failure, or (writing the rows) a row created after the snapshot by a
    concurrent append, which the unique constraint that ``RowSet`` requires then refuses."""
    state = _sqlstate(exc)
    return state == _SERIALIZATION_FAILURE or (
        flushing and state == _UNIQUE_VIOLATION and isinstance(exc, IntegrityError)
    )


def _rebuilding(
    store: BaseEventStore, classes: Sequence[type[Projection]], events: Sequence[StoredEvent]
) -> tuple[set[str], str | None]:
    """The inline projections (names) that a rebuild is replaying for the events' tenant
    (or for every tenant): appends leave them alone meanwhile, also while that rebuild is
    suspended (paused, or failed: ``suspended_rebuild``); and the transaction's isolation
    level when it reads under one snapshot (PostgreSQL, ``repeatable read`` or
    ``serializable``), else None.

    One query per append. A rebuild starts and ends only while appends are locked out (its
    reset and its hand-over), so an append reads the change after it is committed or
    before it started; either way its events reach the rows exactly once. Pausing,
    failing and resuming a rebuild never start or end it. That holds at READ COMMITTED,
    where this query takes a new snapshot after the append's lock; under an older snapshot
    the query first runs into the fence the lock-outs bump (``Backend.inline_probe``), and
    raises [`StaleSnapshot`][django_eventsource.StaleSnapshot] when one committed since.
    """
    if not classes or not isinstance(store, EventStore):
        return set(), None
    from django.db import connections
    from django.db.models import Q

    from django_eventsource.constants import NO_TENANT
    from django_eventsource.models import ProjectionState, ProjectionStatus

    tenant_id = events[0].tenant_id if events else None
    names = [str(cls.name) for cls in classes]
    tenants = sorted({NO_TENANT, tenant_id or NO_TENANT})
    probe = store.backend.inline_probe(names, tenants)
    if probe is None:
        return set(
            ProjectionState.objects.using(store.using)
            .filter(
                Q(status=ProjectionStatus.REBUILDING) | Q(suspended_rebuild=True),
                name__in=names,
                tenant_id__in=tenants,
            )
            .values_list("name", flat=True)
        ), None
    sql, params, fence = probe
    # At READ COMMITTED this read takes a new snapshot, after the append's lock. Under one
    # snapshot, the fence tells whether a lock-out committed since it was taken. (A plain
    # read fails with a serialization failure only at SERIALIZABLE.)
    isolation = "serializable"
    try:
        with connections[store.using].cursor() as cursor:
            cursor.execute(sql, params)
            isolation, deferred = cursor.fetchone()
            if isolation != "read committed":
                cursor.execute(fence)
    except DatabaseError as exc:
        if _sqlstate(exc) != _SERIALIZATION_FAILURE:
            raise
        raise StaleSnapshot(
            events[0].aggregate_id,
            tenant_id,
            isolation=isolation,
            reason="a lock-out of appends that committed since (a rebuild of an inline "
            "projection started or handed it back, or a shadow rebuild swapped it in)",
        ) from exc
    return set(deferred), None if isolation == "read committed" else isolation


class InlineProjections:
    """The store's inline hook (installed by ``AppConfig.ready()``): applies the registered
    inline projections to each append, inside its transaction."""

    def active(self) -> bool:
        """Whether any inline projection is registered (else appends skip the hook)."""
        return bool(projection_registry.inline())

    def __call__(self, store: BaseEventStore, events: list[StoredEvent]) -> None:
        run_inline(store, events)
