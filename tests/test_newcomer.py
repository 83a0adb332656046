"""What a newcomer meets first: the README's quickstart, and the API reference's text.

* Each file of the README's quickstart block defines or imports every name it uses (it
  once used ``TaskCard`` and ``TaskCreated`` in ``tasks/projections.py`` without importing
  them: ``NameError``).
* Docstrings are Markdown, which mkdocstrings renders; a Sphinx role (``:class:`X```) is
  printed as it is. The source is checked here on every run; the built site is checked by
  ``test_the_built_api_reference_shows_no_raw_sphinx_role`` (slow: it builds the docs).
"""

from __future__ import annotations

import ast
import builtins
import re
import subprocess
import symtable
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "django_eventsource"
#: A reStructuredText role as Sphinx writes it: :class:`Name`, :meth:`~a.b`, :mod:`x` ...
SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const|ref):`")
#: The same role in the built HTML, where Markdown turned its backticks into <code>.
HTML_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const|ref):(?:`|<code>)"
)


def quickstart_files() -> dict[str, str]:
    """``{file: code}`` of the README's quickstart block, split at its ``# path.py`` lines."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart\n.*?```python\n(.*?)```", readme, flags=re.DOTALL)
    assert block is not None, "README.md has no quickstart block"
    files: dict[str, list[str]] = {}
    current = "(settings comments)"
    for line in block.group(1).splitlines():
        header = re.match(r"# (\S+\.py)\b|# (anywhere)\b", line)
        if header:
            current = header.group(1) or header.group(2)
        files.setdefault(current, []).append(line)
    return {name: "\n".join(lines) for name, lines in files.items()}


def undefined_names(code: str) -> set[str]:
    """Names the code uses that neither it nor builtins define (as a NameError would)."""
    top = symtable.symtable(code, "<quickstart>", "exec")
    defined = {
        symbol.get_name()
        for symbol in top.get_symbols()
        if symbol.is_assigned() or symbol.is_imported()
    } | set(dir(builtins))
    missing: set[str] = set()

    def visit(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            global_here = table is top or symbol.is_global()
            if symbol.is_referenced() and global_here and symbol.get_name() not in defined:
                missing.add(symbol.get_name())
        for child in table.get_children():
            visit(child)

    visit(top)
    return missing


def test_the_quickstart_files_define_every_name_they_use() -> None:
    files = quickstart_files()
    assert {"tasks/events.py", "tasks/models.py", "tasks/projections.py", "anywhere"} <= set(files)
    assert {name: undefined_names(code) for name, code in files.items()} == {
        name: set() for name in files
    }


def test_the_undefined_name_finder_finds_one() -> None:
    code = (
        "from x import handles\n"
        "class P:\n"
        "    models = (TaskCard,)\n"
        "    @handles(TaskCreated)\n"
        "    def created(self, event: TaskCreated) -> None:\n"
        "        print(event, undefined_in_body)\n"
    )
    assert undefined_names(code) == {"TaskCard", "TaskCreated", "undefined_in_body"}


def docstrings() -> list[tuple[str, int, str]]:
    """``(file, line, text)`` of every docstring in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue  # shipped history, never edited (and not rendered)
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
                relative = str(path.relative_to(ROOT))
                found.append((relative, body[0].lineno, body[0].value.value))
    return found


def test_docstrings_have_no_sphinx_roles() -> None:
    offenders = [
        f"{path}:{line}: {SPHINX_ROLE.search(text).group(0)}"  # type: ignore[union-attr]
        for path, line, text in docstrings()
        if SPHINX_ROLE.search(text)
    ]
    assert offenders == []


@pytest.mark.slow
def test_the_built_api_reference_shows_no_raw_sphinx_role(tmp_path: Path) -> None:
    """Builds the docs (the ``docs`` dependency group) and reads every page's text."""
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pages = sorted(site.rglob("*.html"))
    assert any(page.parent.name == "api" for page in pages)
    raw = {
        str(page.relative_to(site)): len(HTML_ROLE.findall(page.read_text()))
        for page in pages
        if HTML_ROLE.search(page.read_text())
    }
    assert raw == {}
