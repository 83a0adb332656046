"""The package's layering rules (CONTRIBUTING.md), checked on the source.

1. The package has no import cycle (function-local and type-only imports count too).
2. The stores import nothing above them: inline projections reach them through the hook that
   ``AppConfig.ready()`` installs.
3. Only the PostgreSQL wing (``backends/postgresql/``) writes PostgreSQL's ordering SQL.
4. The package opens its transactions with ``transactions.write_transaction``.

And the public import paths keep working: every name in every ``__all__``, and the admin
classes the docs tell users to subclass.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import django_eventsource

PACKAGE = Path(django_eventsource.__file__).parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if "migrations" in parts:
            continue  # frozen history: migrations import nothing that moves
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports anywhere in its source (also inside functions
    and ``if TYPE_CHECKING:`` blocks)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            # ``from package import module`` imports the module; otherwise the module itself.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in GRAPH[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_package_has_no_import_cycle() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: the finder reports a cycle it is shown."""
    graph = {name: set(targets) for name, targets in GRAPH.items()}
    graph["django_eventsource.constants"].add("django_eventsource.store")
    assert any("django_eventsource.constants" in cycle for cycle in _cycles(graph))


def test_the_graph_sees_function_local_and_type_only_imports() -> None:
    # store imports the backends at the top, checks imports stamps at the top; apps imports
    # checks inside ready(), and rows imports StoredEvent only for type checking.
    assert "django_eventsource.checks" in GRAPH["django_eventsource.apps"]
    assert "django_eventsource.stored" in GRAPH["django_eventsource.rows"]


def test_the_store_imports_nothing_above_it() -> None:
    above = {
        "django_eventsource.projections",
        "django_eventsource.rows",
        "django_eventsource.runner",
        "django_eventsource.control",
        "django_eventsource.rebuild",
        "django_eventsource.status",
        "django_eventsource.aggregates",
        "django_eventsource.admin",
    }

    def above_the_store(modules: set[str]) -> set[str]:
        # A package counts with its modules (runner/, admin/, aggregates/).
        return {m for m in modules if any(m == a or m.startswith(f"{a}.") for a in above)}

    assert above_the_store(_reachable("django_eventsource.store")) == set()
    for module in ("basestore", "memorystore", "pending"):  # also when imported on their own
        assert above_the_store(_reachable(f"django_eventsource.{module}")) == set(), module
    assert above_the_store({"django_eventsource.runner.batch"}) == {
        "django_eventsource.runner.batch"
    }


def test_leaf_modules_import_nothing_from_the_package() -> None:
    for leaf in ("constants", "text", "version"):
        assert GRAPH[f"django_eventsource.{leaf}"] == set(), leaf
    assert GRAPH["django_eventsource.exceptions"] == {"django_eventsource.constants"}


def _private_exceptions_imported() -> list[str]:
    """``module: name`` for each exception class a package module imports, by a private
    (underscore) name, from another module of the package."""
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level or node.module not in MODULES:
                continue
            source = importlib.import_module(node.module)
            for alias in node.names:
                value = getattr(source, alias.name, None)
                if (
                    alias.name.startswith("_")
                    and isinstance(value, type)
                    and issubclass(value, BaseException)
                ):
                    found.append(f"{name}: {node.module}.{alias.name}")
    return found


def test_an_exception_that_crosses_modules_has_a_public_name() -> None:
    """rebuild.py caught the runner's private ``_LockLost``: an exception another module
    catches is part of what its owner offers, so it has a public, documented name there."""
    assert _private_exceptions_imported() == []
    from django_eventsource.runner import LockLost
    from django_eventsource.runner.loop import LockLost as owned

    assert LockLost is owned and issubclass(LockLost, django_eventsource.EventSourceError)
    assert LockLost.__doc__ and "another runner holds it now" in str(LockLost("board"))
    assert "LockLost" in importlib.import_module("django_eventsource.runner.loop").__all__


#: PostgreSQL's ordering machinery: the horizon, stamps, advisory locks, LISTEN/NOTIFY.
ORDERING_SQL = re.compile(
    r"pg_current_snapshot|pg_snapshot_x|pg_current_xact_id|pg_locks|pg_stat_activity"
    r"|pg_try_advisory|pg_advisory|pg_notify|\bLISTEN\b|django_eventsource_append_v\d"
)


def test_only_the_postgresql_wing_writes_ordering_sql() -> None:
    wing = PACKAGE / "backends" / "postgresql"
    offenders = {
        name
        for name, path in MODULES.items()
        if wing not in path.parents and ORDERING_SQL.search(_code_without_docstrings(path))
    }
    assert offenders == set()


#: A transaction the package opens itself, not through ``write_transaction``.
OWN_ATOMIC = re.compile(r"\.atomic\b|\bimport atomic\b|\bAtomic\(|\bBEGIN\b")


def _opens_transactions(code: str) -> bool:
    return bool(OWN_ATOMIC.search(code))


def test_every_transaction_the_package_opens_is_a_write_transaction() -> None:
    """Rule 4: the package opens its transactions with ``write_transaction`` (on SQLite
    they begin IMMEDIATE); only ``transactions.py`` calls ``atomic`` itself."""
    offenders = {
        name
        for name, path in MODULES.items()
        if name != "django_eventsource.transactions"
        and _opens_transactions(_code_without_docstrings(path))
    }
    assert offenders == set()


def test_the_transaction_rule_sees_an_atomic_block() -> None:
    """The check above can fail: it sees what the package used to write."""
    assert _opens_transactions("with transaction.atomic(using=using):\n    pass")
    assert _opens_transactions("@transaction.atomic\ndef f(): pass")
    assert _opens_transactions("from django.db.transaction import atomic")
    assert not _opens_transactions("with write_transaction(using):\n    pass")


def _code_without_docstrings(path: Path) -> str:
    """The module's string constants and code, docstrings and comments removed."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body[0] = ast.Pass()
    return ast.unparse(tree)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_name_in_all_is_importable(module: str) -> None:
    imported = importlib.import_module(module)
    for name in getattr(imported, "__all__", ()):
        assert getattr(imported, name) is not None, f"{module}.{name}"


def test_the_public_api_and_documented_paths_import() -> None:
    for name in django_eventsource.__all__:
        assert getattr(django_eventsource, name) is not None, name
    from django_eventsource.admin import (  # docs/admin.md: unregister, subclass, re-register
        DeadLetterAdmin,
        EventAdmin,
        ProjectionStateAdmin,
        ReadOnlyModelAdmin,
    )
    from django_eventsource.maintenance import diagnose_stamps, rebase_stamps
    from django_eventsource.status import horizon_holder, stamp_problem
    from django_eventsource.store import ExpectedVersion, ReadResult, StoredEvent

    assert issubclass(EventAdmin, ReadOnlyModelAdmin)
    assert {DeadLetterAdmin, ProjectionStateAdmin} <= set(ReadOnlyModelAdmin.__subclasses__())
    assert callable(diagnose_stamps) and callable(rebase_stamps)
    assert callable(horizon_holder) and callable(stamp_problem)
    assert ExpectedVersion is django_eventsource.ExpectedVersion
    assert (ReadResult, StoredEvent) == (
        django_eventsource.ReadResult,
        django_eventsource.StoredEvent,
    )


def _undocumented(module: str) -> list[str]:
    """The public names of ``module`` (its ``__all__``) without a docstring, and the public
    methods and properties of its public classes without one (their own or inherited)."""
    import inspect
    import typing

    imported = importlib.import_module(module)
    missing = []
    for name in getattr(imported, "__all__", ()):
        value = getattr(imported, name)
        if typing.get_origin(value) is not None or not (
            isinstance(value, type) or callable(value)
        ):
            continue  # constants and type aliases: documented by a #: comment
        if not (inspect.getdoc(value) or "").strip():
            missing.append(f"{module}.{name}")
        if not isinstance(value, type):
            continue
        for attr, member in vars(value).items():
            # dispatch: Django's, decorated in place (method_decorator)
            if attr.startswith("_") or attr == "dispatch":
                continue
            function = getattr(member, "__func__", member)
            function = function.fget if isinstance(function, property) else function
            if inspect.isfunction(function) and not inspect.getdoc(getattr(value, attr)):
                missing.append(f"{module}.{name}.{attr}")
    return missing


API_MODULES = sorted(
    re.findall(
        r"^::: (django_eventsource[\w.]*)",
        (PACKAGE.parent / "docs" / "api.md").read_text(),
        re.MULTILINE,
    )
)


def test_the_api_reference_renders_modules() -> None:
    assert "django_eventsource" in API_MODULES and "django_eventsource.checkpoints" in API_MODULES


@pytest.mark.parametrize("module", API_MODULES)
def test_every_public_name_in_the_api_reference_says_what_it_is(module: str) -> None:
    """docs/api.md renders these modules' public names: no docstring may be empty."""
    assert _undocumented(module) == []
