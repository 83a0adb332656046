"""Hostile input and least privilege (issue 15): the admin, the commands and the workers.

Each test names the item of the review it covers. The permission, CSRF and escaping tests
that held already live in test_admin.py and tests/browser/.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from io import StringIO
from uuid import uuid4

import pytest
from django.contrib.auth.models import Permission
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from django_eventsource import (
    DeclarativeProjection,
    EventStore,
    ProjectionState,
    RebuildRefused,
    catch_up,
    handles,
    projection_registry,
)
from django_eventsource.conf import MAX_BATCH_SIZE
from django_eventsource.models import Event
from django_eventsource.rebuild import plan_rebuild, rebuild
from django_eventsource.runner import ProjectionRunner
from tests.factories import task_history
from tests.testapp.events import TaskCreated
from tests.testapp.models import Note, TaskSummary
from tests.testapp.projections import TaskBoard

pytestmark = pytest.mark.django_db(transaction=True)

LAG = reverse("admin:django_eventsource_projectionstate_lag")
PROJECTIONS = reverse("admin:django_eventsource_projectionstate_changelist")
EVENTS = reverse("admin:django_eventsource_event_changelist")
DEAD_LETTERS = reverse("admin:django_eventsource_deadletter_changelist")
VIEW = ("view_projectionstate", "view_event", "view_deadletter")
ACT = ("pause_projection", "retry_projection", "rebuild_projection")


def detail(name: str) -> str:
    return reverse("admin:django_eventsource_projectionstate_detail", args=[name])


def action(name: str, what: str) -> str:
    return reverse("admin:django_eventsource_projectionstate_action", args=[name, what])


def login(django_user_model, *codenames: str, username: str = "staff") -> Client:
    user = django_user_model.objects.create_user(username, password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="django_eventsource", codename__in=codenames
        )
    )
    client = Client()
    client.force_login(user)
    return client


def states() -> list[tuple[str, str, str]]:
    return sorted(ProjectionState.objects.values_list("name", "tenant_id", "status"))


# 4. Actions need view permission too -----------------------------------------------------


@pytest.mark.parametrize("what", ["pause", "resume", "retry", "dead_letter", "rebuild"])
def test_actions_need_the_view_permission_too(django_user_model, what: str) -> None:
    task_history(EventStore(), tasks=2)
    call_command("replay_projections", "task_board", verbosity=0)
    before = states()
    acting = login(django_user_model, *ACT, username="acting_blind")
    # The pages are forbidden to this user, and so is every action, confirmation included.
    assert acting.get(LAG).status_code == 403
    assert acting.post(action("task_board", what), {"tenant": ""}).status_code == 403
    response = acting.post(action("task_board", what), {"tenant": "", "confirm": "yes"})
    assert response.status_code == 403
    assert states() == before


# 7. Tenant ids are URL-encoded in links ----------------------------------------------------


def test_a_tenant_id_cannot_smuggle_a_query_parameter_into_a_link(django_user_model) -> None:
    evil = "evil&tenant=acme"
    task_history(EventStore(), tasks=2, tenants=(evil, "acme"))
    call_command("replay_projections", "tenant_stats", "--tenant", evil, verbosity=0)
    call_command("replay_projections", "tenant_stats", "--tenant", "acme", verbosity=0)
    client = login(django_user_model, *VIEW, *ACT)
    page = client.get(PROJECTIONS).content.decode()
    assert "?tenant=evil%26tenant%3Dacme" in page
    assert "?tenant=evil&amp;tenant=acme" not in page
    # The link leads to evil's page, whose buttons act on evil, not acme.
    evil_page = client.get(detail("tenant_stats"), {"tenant": evil})
    assert evil_page.status_code == 200
    assert f'data-tenant="{evil.replace("&", "&amp;")}"' in evil_page.content.decode()


# 8. Reading and confirming create nothing; acting on an unknown tenant is an error ----------


def test_opening_pages_and_confirmations_creates_no_state_row(django_user_model) -> None:
    task_history(EventStore(), tasks=2, tenants=("acme",))
    client = login(django_user_model, *VIEW, *ACT)
    for what in ("rebuild", "dead_letter"):  # destructive: a confirmation page first
        response = client.post(action("tenant_stats", what), {"tenant": "acme"})
        assert response.status_code == 200, what
    client.get(detail("tenant_stats"), {"tenant": "acme"})
    client.get(LAG)
    call_command("replay_projections", "--all", "--dry-run", "--tenant", "acme", stdout=StringIO())
    call_command(
        "rebuild_projections", "--all", "--dry-run", "--tenant", "acme", stdout=StringIO()
    )
    assert states() == []


def test_acting_on_an_invented_tenant_is_an_error(django_user_model) -> None:
    task_history(EventStore(), tasks=2, tenants=("acme",))
    client = login(django_user_model, *VIEW, *ACT)
    for what in ("pause", "resume", "rebuild"):
        response = client.post(
            action("tenant_stats", what), {"tenant": "invented", "confirm": "yes"}
        )
        assert response.status_code == 404, what
    assert client.get(detail("tenant_stats"), {"tenant": "invented"}).status_code == 404
    assert states() == []
    # The commands refuse the same tenant, with one rule (control.projection_known).
    for command in (["replay_projections"], ["rebuild_projections", "--noinput"]):
        with pytest.raises(CommandError, match="Unknown tenant 'invented'"):
            call_command(*command, "tenant_stats", "--tenant", "invented")
    assert states() == []
    # A tenant with events is a real one, even before its first run.
    assert client.post(action("tenant_stats", "pause"), {"tenant": "acme"}).status_code == 302
    assert states() == [("tenant_stats", "acme", "paused")]


# 5. The event browser takes only its documented filters -------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        {"payload__icontains": "x"},
        {"payload__regex": "(a+)+$"},
        {"metadata__contains": "x"},
        {"aggregate_id__startswith": "0"},
        {"event_type__iregex": ".*"},
    ],
)
def test_the_event_browser_refuses_undocumented_lookups(django_user_model, query) -> None:
    task_history(EventStore(), tasks=1)
    client = login(django_user_model, *VIEW)
    assert client.get(EVENTS, query).status_code == 400


@pytest.mark.parametrize(
    ("url", "query"),
    [
        (PROJECTIONS, {"last_error__regex": "(a+)+$"}),
        (DEAD_LETTERS, {"traceback__icontains": "secret"}),
    ],
)
def test_other_lists_refuse_undocumented_lookups(django_user_model, url, query) -> None:
    client = login(django_user_model, *VIEW)
    assert client.get(url, query).status_code == 400


def test_the_documented_event_filters_still_work(django_user_model) -> None:
    task_history(EventStore(), tasks=2, tenants=("acme", "globex"))
    client = login(django_user_model, *VIEW)
    for query in (
        {"event_type": "TaskCreated"},
        {"tenant_id": "acme"},
        {"aggregate_type": "Task"},
        {"q": str(Event.objects.first().aggregate_id)},  # type: ignore[union-attr]
        {"p": "1"},
    ):
        assert client.get(EVENTS, query).status_code == 200, query


# 9. Hostile input gives no 500 ---------------------------------------------------------------


HOSTILE = ["\x00", "a\x00b", "x" * 300, "../../etc", "%00", "\x1b[31mred"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_query_values_give_no_server_error(django_user_model, value: str) -> None:
    task_history(EventStore(), tasks=1)
    client = login(django_user_model, *VIEW, *ACT)
    client.raise_request_exception = False
    responses = {
        "event_type": client.get(EVENTS, {"event_type": value}),
        "tenant_id": client.get(EVENTS, {"tenant_id": value}),
        "q": client.get(EVENTS, {"q": value}),
        "detail": client.get(detail("tenant_stats"), {"tenant": value}),
        "detail name": client.get(detail(value.replace("/", "_") or "_")),
        "action": client.post(action("tenant_stats", "pause"), {"tenant": value}),
        "lag": client.get(LAG, {"hours": value, "metric": value}),
        "projections q": client.get(PROJECTIONS, {"q": value}),
        "projections filter": client.get(PROJECTIONS, {"name__exact": value}),
        "dead letters q": client.get(DEAD_LETTERS, {"q": value}),
    }
    codes = {where: r.status_code for where, r in responses.items()}
    assert all(code < 500 for code in codes.values()), codes
    assert states() == []


@pytest.mark.parametrize("page", ["1e18", "999999999999999999999", "-1", "0", "nan"])
def test_a_hostile_page_number_gives_no_server_error(django_user_model, page: str) -> None:
    task_history(EventStore(), tasks=1)
    client = login(django_user_model, *VIEW)
    client.raise_request_exception = False
    for url in (EVENTS, PROJECTIONS, DEAD_LETTERS):
        assert client.get(url, {"p": page}).status_code < 500, url


# 3. A tenant rebuild refuses when a read model has no tenant column ----------------------


@pytest.fixture
def notes_everywhere() -> Iterator[type[DeclarativeProjection]]:
    """A projection whose read model (Note) has no tenant_id column."""

    class NotesEverywhere(DeclarativeProjection):
        name = "notes_everywhere"
        models = (Note,)

        @handles(TaskCreated)
        def created(self, event: TaskCreated) -> None:
            Note.objects.using(self.database).create(text=str(event.tenant_id))

    try:
        yield NotesEverywhere
    finally:
        projection_registry.unregister("notes_everywhere")


def notes_for_three_tenants() -> int:
    task_history(EventStore(), tasks=15, renames=0, tenants=("acme", "globex", "initech"))
    call_command("replay_projections", "notes_everywhere", verbosity=0)
    return Note.objects.count()


def test_a_tenant_rebuild_of_a_model_without_tenant_column_is_refused(
    notes_everywhere, django_user_model
) -> None:
    assert notes_for_three_tenants() == 15
    before = states()
    for extra in ([], ["--dry-run"], ["--atomic"]):
        with pytest.raises(CommandError, match=r"testapp.Note has no tenant_id column"):
            call_command(
                "rebuild_projections", "notes_everywhere", "--tenant", "acme", "--noinput", *extra
            )
    with pytest.raises(RebuildRefused, match="would delete every tenant's rows"):
        rebuild(notes_everywhere(), tenant_id="acme")
    with pytest.raises(RebuildRefused):
        plan_rebuild(notes_everywhere(), tenant_id="acme")
    # The admin's per-tenant rebuild shows the refusal and offers no confirmation...
    client = login(django_user_model, *VIEW, *ACT)
    page = client.post(action("notes_everywhere", "rebuild"), {"tenant": "acme"})
    assert page.status_code == 200
    assert "has no tenant_id column" in page.content.decode()
    assert 'name="confirm"' not in page.content.decode()
    # ...and a forged confirmation changes nothing either.
    client.post(action("notes_everywhere", "rebuild"), {"tenant": "acme", "confirm": "yes"})
    assert Note.objects.count() == 15
    assert states() == before
    # Rebuilding every tenant is what works.
    call_command("rebuild_projections", "notes_everywhere", "--noinput", verbosity=0)
    assert Note.objects.count() == 15


# 9. Every argument is checked before anything changes; 10. NaN and infinity --------------


def board_rows() -> int:
    return TaskSummary.objects.count()


@pytest.mark.parametrize("size", [str(10**20), str(MAX_BATCH_SIZE + 1)])
def test_a_huge_batch_size_is_refused_before_the_rebuild_resets_anything(size: str) -> None:
    task_history(EventStore(), tasks=4)
    call_command("replay_projections", "task_board", verbosity=0)
    before = (board_rows(), states())
    with pytest.raises(CommandError, match="--batch-size must be at most"):
        call_command("rebuild_projections", "task_board", "--noinput", "--batch-size", size)
    with pytest.raises(ValueError, match="batch_size must be from 1 to"):
        rebuild(TaskBoard(), batch_size=int(size))
    assert (board_rows(), states()) == before
    assert board_rows() == 4


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1"])
def test_poll_interval_must_be_a_finite_positive_number(value: str) -> None:
    with pytest.raises(CommandError, match="--poll-interval must be a positive, finite"):
        call_command("replay_projections", "--follow", f"--poll-interval={value}")
    with pytest.raises(ValueError, match="poll_interval must be a number of seconds"):
        ProjectionRunner([TaskBoard()], poll_interval=float(value))
    assert states() == []


def test_a_run_or_rebuild_of_tenant_empty_string_is_refused() -> None:
    """A state row stores "no tenant" as "", while a read of tenant "" returns the events
    without one: a run of tenant "" moved the checkpoint of every tenant's events past
    the other tenants' events, which were then never applied."""
    store = EventStore()
    task_history(store, tasks=4, seed=13, tenants=(None, "acme"))
    for attempt in (
        lambda: ProjectionRunner([TaskBoard()], tenant_id=""),
        lambda: catch_up(TaskBoard(), tenant_id=""),
        lambda: rebuild(TaskBoard(), tenant_id=""),
        lambda: plan_rebuild(TaskBoard(), tenant_id=""),
    ):
        with pytest.raises(ValueError, match="'' is not a tenant id"):
            attempt()
    assert states() == [] and board_rows() == 0
    catch_up(TaskBoard(), event_store=store)
    assert board_rows() == 4


@pytest.mark.parametrize("key", ["POLL_INTERVAL", "HEARTBEAT_INTERVAL", "RETRY_BACKOFF"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_settings_refuse_nan_and_infinity(settings, key: str, value: float) -> None:
    settings.EVENTSOURCE = {key: value}
    messages = [m for m in run_checks() if m.id == "django_eventsource.E002"]
    assert [key in m.msg and "finite" in m.msg for m in messages] == [True]


def test_settings_refuse_a_huge_batch_size(settings) -> None:
    settings.EVENTSOURCE = {"BATCH_SIZE": MAX_BATCH_SIZE + 1}
    assert [m.id for m in run_checks() if m.id.startswith("django_eventsource.E")] == [
        "django_eventsource.E002"
    ]


# 11. Terminal escape sequences in data reach the terminal escaped --------------------------

ESCAPE = "\x1b[2J\x1b[31mPWNED"


@pytest.fixture
def loud_failure() -> Iterator[type[DeclarativeProjection]]:
    """A projection whose handler fails with a message that carries an escape sequence."""

    class LoudFailure(DeclarativeProjection):
        name = "loud_failure"

        @handles(TaskCreated)
        def created(self, event: TaskCreated) -> None:
            raise RuntimeError(f"bad title {event.title}")

    try:
        yield LoudFailure
    finally:
        projection_registry.unregister("loud_failure")


def test_cli_output_escapes_control_characters(loud_failure, settings) -> None:
    settings.EVENTSOURCE = {**settings.EVENTSOURCE, "MAX_RETRIES": 0}
    EventStore().append(
        (task := uuid4()),
        [TaskCreated(aggregate_id=task, title=f"x{ESCAPE}", tenant_id=f"t{ESCAPE}")],
    )
    task_history(EventStore(), tasks=2, renames=0, tenants=(f"t{ESCAPE}",))
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError):
        call_command("replay_projections", "loud_failure", stdout=out, stderr=err, verbosity=2)
    call_command("replay_projections", "tenant_stats", "--tenant", f"t{ESCAPE}", stdout=out)
    call_command("projection_status", stdout=out, stderr=err)
    call_command(
        "rebuild_projections", "tenant_stats", "--tenant", f"t{ESCAPE}", "--dry-run", stdout=out
    )
    text = out.getvalue() + err.getvalue()
    assert "\x1b" not in text
    assert "\\x1b[31mPWNED" in text  # shown, escaped: in the error, the tenant and the status
    assert text.count("\\x1b[2J") >= 3


# 2. The runner's own connections use Django's connection parameters ---------------------


@pytest.fixture
def alias_with_options(vendor: str) -> Iterator[Callable[[dict[str, object]], str]]:
    """A second alias to the test database with other OPTIONS (Django's own connection to
    it is never opened: the library's dedicated connections are what is tested)."""
    from django.db import connections

    made: list[str] = []

    def make(options: dict[str, object]) -> str:
        alias = f"options_{len(made)}"
        settings_dict = {**connections["default"].settings_dict}
        settings_dict["OPTIONS"] = {**settings_dict["OPTIONS"], **options}
        connections.settings[alias] = settings_dict
        made.append(alias)
        return alias

    try:
        yield make
    finally:
        for alias in made:
            del connections[alias]
            del connections.settings[alias]


@pytest.mark.postgres
def test_listener_and_lock_connections_use_djangos_parameters(vendor, alias_with_options) -> None:
    if vendor != "postgresql":
        pytest.skip("PostgreSQL only; test_sqlite_followers_poll_and_lease is the twin")
    from django.db import connections

    from django_eventsource.backends.postgresql.connection import connection_params
    from django_eventsource.backends.postgresql.listen import PostgresListener
    from django_eventsource.backends.postgresql.locks import PostgresAdvisoryLock

    alias = alias_with_options(
        {"options": "-c statement_timeout=4321", "target_session_attrs": "any"}
    )
    django_params = connections[alias].get_connection_params()
    ours = connection_params(alias, "django_eventsource listener")
    assert {k: v for k, v in ours.items() if k not in ("application_name", "autocommit")} == {
        k: v for k, v in django_params.items() if k != "application_name"
    }
    listener = PostgresListener.connect(alias, "django_eventsource")
    assert listener is not None
    lock = PostgresAdvisoryLock("task_board", None, alias)
    try:
        assert lock.acquire()
        for connection in (listener._connection, lock._connection):
            assert connection.execute("SHOW statement_timeout").fetchone()[0] == "4321ms"
    finally:
        listener.close()
        lock.release()


@pytest.mark.postgres
def test_a_listener_never_connects_with_less_tls_than_django(vendor, alias_with_options) -> None:
    """sslmode=require: when the server offers no TLS, Django's connection is refused and so
    is the listener's (it polls instead); with TLS, the listener uses it."""
    if vendor != "postgresql":
        pytest.skip("PostgreSQL only; test_sqlite_followers_poll_and_lease is the twin")
    import psycopg
    from django.db import connections

    from django_eventsource.backends.postgresql.listen import PostgresListener

    alias = alias_with_options({"sslmode": "require"})
    try:
        with psycopg.connect(**connections[alias].get_connection_params()) as django_like:
            server_tls = bool(django_like.pgconn.ssl_in_use)
    except psycopg.OperationalError:
        server_tls = False
    listener = PostgresListener.connect(alias, "django_eventsource")
    try:
        if server_tls:
            assert listener is not None and listener._connection.pgconn.ssl_in_use
        else:
            assert listener is None  # refused, as Django's own connection is
    finally:
        if listener is not None:
            listener.close()


def test_sqlite_followers_poll_and_lease(vendor) -> None:
    """The SQLite twin: no dedicated connection at all (followers poll, locks are leases)."""
    if vendor != "sqlite":
        pytest.skip("the SQLite twin of the PostgreSQL connection tests")
    from django.db import connection

    from django_eventsource.backends import backend_for
    from django_eventsource.backends.lease import LeaseLock

    backend = backend_for(connection)
    assert backend.listener("default") is None
    assert isinstance(backend.projection_lock("task_board", None, "default", ttl=1), LeaseLock)


# 9. A projection name with a '/' breaks no page, and none can be created ------------------


def test_a_state_row_named_with_a_slash_breaks_no_page(django_user_model) -> None:
    task_history(EventStore(), tasks=1)
    ProjectionState.objects.create(name="evil/name", status="failed", last_error="x")
    client = login(django_user_model, *VIEW, *ACT)
    assert client.get(LAG).status_code == 200
    response = client.get(PROJECTIONS)
    assert response.status_code == 200
    assert "evil/name" in response.content.decode()


@pytest.mark.parametrize("name", ["evil/name", "x" * 201, "a\x1bb", "new\nline"])
def test_no_state_row_can_be_created_for_a_name_no_projection_can_have(name: str) -> None:
    from django_eventsource import DatabaseCheckpointStore, control

    with pytest.raises(ValueError, match="projection"):
        control.pause(name)
    with pytest.raises(ValueError, match="projection"):
        DatabaseCheckpointStore().save(name, 1)
    with pytest.raises(ImproperlyConfigured, match=r"Bad\.name"):
        type("Bad", (DeclarativeProjection,), {"name": name, "__module__": __name__})
    assert name not in projection_registry
    assert states() == []


# 1. The horizon box: who holds readers back, for everyone who may view; SQL for superusers ---


@pytest.mark.postgres
def test_the_horizon_box_shows_the_holder_but_its_sql_only_to_superusers(
    vendor, django_user_model, child_db_url
) -> None:
    """A transaction of this database that appended (it holds ROW EXCLUSIVE on the event
    table) holds readers back: view-only staff see its pid, application, user, database and
    age on the dashboard and the detail page, never its SQL (which may carry another user's
    data, e.g. a new password hash); superusers see the SQL. A transaction of another
    database, even one that locks a table of the same name, is never shown to anyone."""
    if vendor != "postgresql":
        pytest.skip("PostgreSQL only; test_sqlite_has_no_horizon_box is the SQLite twin")
    import psycopg

    task_history(EventStore(), tasks=1)
    call_command("replay_projections", "task_board", verbosity=0)
    here = psycopg.connect(child_db_url, application_name="holder-app")
    there = psycopg.connect(child_db_url.rsplit("/", 1)[0] + "/postgres")
    try:
        here.execute("LOCK TABLE django_eventsource_event IN ROW EXCLUSIVE MODE")
        here.execute("SELECT pg_current_xact_id(), 'pbkdf2_sha256$secret_hash_marker'")
        there.execute("CREATE TEMP TABLE django_eventsource_event (id int)")
        there.execute("LOCK TABLE django_eventsource_event IN ROW EXCLUSIVE MODE")
        there.execute("SELECT pg_current_xact_id(), 'other_database_marker'")
        viewer = login(django_user_model, *VIEW, username="viewer")
        boss = django_user_model.objects.create_superuser("boss", password="x")
        superuser = Client()
        superuser.force_login(boss)
        pages = {
            who: [
                client.get(LAG).content.decode(),
                client.get(detail("task_board")).content.decode(),
            ]
            for who, client in (("viewer", viewer), ("superuser", superuser))
        }
        pid = here.info.backend_pid
    finally:
        here.close()
        there.close()
    for who, seen in pages.items():
        for page in seen:
            assert 'id="horizon-holder"' in page, who
            assert f"pid {pid}" in page and "(holder-app)" in page, who
            assert "user postgres" in page and "database test_" in page, who
            assert "other_database_marker" not in page, who
            assert ("secret_hash_marker" in page) == (who == "superuser"), who


def test_sqlite_has_no_horizon_box(vendor, django_user_model) -> None:
    if vendor != "sqlite":
        pytest.skip("the SQLite twin of the horizon box test")
    task_history(EventStore(), tasks=1)
    client = login(django_user_model, *VIEW)
    assert 'id="horizon-holder"' not in client.get(LAG).content.decode()


# 6. The dashboards aggregate in SQL: the number of queries does not grow with the rows ------


def queries_for(client: Client, url: str, query: dict[str, str] | None = None) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        assert client.get(url, query or {}).status_code == 200
    return len(captured.captured_queries)


def tenants_with_samples(count: int) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from django_eventsource.models import LagSample

    tenants = tuple(f"t{n:03}" for n in range(count))
    task_history(EventStore(), tasks=count, renames=0, tenants=tenants)
    now = timezone.now()
    for tenant in tenants:
        ProjectionState.objects.get_or_create(name="tenant_stats", tenant_id=tenant)
        LagSample.objects.bulk_create(
            LagSample(
                name="tenant_stats",
                tenant_id=tenant,
                position=0,
                head=10,
                lag_events=n,
                lag_seconds=float(n),
                recorded_at=now - timedelta(minutes=n),
            )
            for n in range(30)
        )


@pytest.mark.parametrize(
    ("url", "query"),
    [(LAG, {}), (LAG, {"hours": "168", "metric": "seconds"}), (PROJECTIONS, {})],
    ids=["dashboard", "dashboard-7d", "projection-list"],
)
def test_a_page_runs_as_many_queries_for_many_rows_as_for_few(
    django_user_model, url, query
) -> None:
    client = login(django_user_model, *VIEW, *ACT)
    tenants_with_samples(3)
    few = queries_for(client, url, query)
    tenants_with_samples(12)  # 12 more tenants, each with its state row and lag samples
    many = queries_for(client, url, query)
    assert many == few


def test_the_lag_chart_keeps_the_worst_lag_of_each_slice(django_user_model) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from django_eventsource.admin.charts import CHART_BUCKETS, lag_charts

    tenants_with_samples(1)
    [chart] = lag_charts([("tenant_stats", "t000")], since=timezone.now() - timedelta(hours=1))
    assert chart.samples == 30
    assert chart.maximum == 29.0  # the oldest sample, 29 minutes ago, lagged 29 events
    assert chart.latest == 0.0  # the newest sample
    assert 1 < len(chart.points.split()) <= CHART_BUCKETS


def test_pending_events_many_answers_as_pending_events_does(any_store) -> None:
    """The batched measure behind the status pages is the per-checkpoint one, pair by pair."""
    from django_eventsource import PositionNotFound

    task_history(any_store, tasks=6, tenants=("acme", "globex", None), seed=3)
    positions = [0, *(e.position for e in any_store.read_all())]
    pairs = [(p, t) for p in positions[::3] for t in (None, "acme", "globex", "nobody")]
    assert any_store.pending_events_many(pairs) == [
        any_store.pending_events(p, tenant_id=t) for p, t in pairs
    ]
    assert any_store.pending_events_many([]) == []
    with pytest.raises(PositionNotFound):
        any_store.pending_events_many([(0, None), (10**12, "acme")])
