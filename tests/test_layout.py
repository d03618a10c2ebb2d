"""The folders show the architecture, and the imports keep to it.

Every module under server/, handlers/ and scripts/ is parsed (never imported) with `ast`; its
imports, those inside functions and `if TYPE_CHECKING:` blocks included, are the edges of the
project's import graph. Three rules are checked on that graph:

- each layer imports only the layers it may (the table below, as each package's __init__.py
  docstring says);
- no import cycle between project modules, however it is spelled (a lazy import inside a
  function closes a cycle as much as one at the top);
- no module under server/ or handlers/ is longer than MAX_LINES.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "handlers", "scripts")
SIZED = ("server", "handlers")
MAX_LINES = 300

# A layer -> the layers it may import (its own included). A module belongs to the longest
# layer name that prefixes its dotted name.
ALLOWED = {
    "server": {"server", "server.web"},  # the package's map, and `python -m server`
    "server.infra": {"server.infra"},
    "server.domain": {"server.domain", "server.infra"},
    "server.web": {"server.web", "server.domain", "server.infra", "handlers"},
    "server.worker": {"server.worker", "server.domain", "server.infra"},
    "handlers": {"handlers", "server.web", "server.domain", "server.infra"},
    "scripts": {"scripts", "server.web", "server.domain", "server.infra"},
}
# Only these modules may sit directly in the `server` package; everything else in a layer.
SERVER_TOP = {"server", "server.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


MODULES = project_modules()


def layer_of(module: str) -> str | None:
    found = [layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")]
    return max(found, key=len) if found else None


def imported(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, project module) for every import of `module`, wherever it stands in the file."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _project(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join([*parts[:keep], *([base] if base else [])])
            for alias in node.names:
                # `from package import module` names the module; otherwise the package.
                target = f"{base}.{alias.name}"
                yield from _project(node.lineno, target if target in MODULES else base)


def _project(line: int, name: str) -> Iterator[tuple[int, str]]:
    # `import a.b.c` needs a.b.c; the longest name that is a project module is the edge.
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            yield line, candidate
            return


def import_graph() -> dict[str, set[str]]:
    return {
        module: {target for _line, target in imported(module, path) if target != module}
        for module, path in MODULES.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_parser_sees_the_project():
    assert {"server", "handlers", "scripts"} <= set(MODULES)
    graph = import_graph()
    assert any(graph.values()), "no import between project modules was found"


def test_every_server_module_sits_in_a_layer():
    stray = sorted(m for m in MODULES if layer_of(m) == "server" and m not in SERVER_TOP)
    assert not stray, f"modules outside server/infra, domain, web and worker: {stray}"


def test_each_layer_imports_only_what_it_may():
    wrong = []
    for module, path in MODULES.items():
        layer = layer_of(module)
        assert layer is not None, module
        for line, target in sorted(set(imported(module, path))):
            target_layer = layer_of(target)
            if target_layer not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {module} ({layer}) imports"
                             f" {target} ({target_layer})")
    assert not wrong, "imports across the layers' rules:\n" + "\n".join(wrong)


def test_there_is_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("package", SIZED)
def test_no_module_is_too_long(package):
    long = {
        str(path.relative_to(ROOT)): lines
        for module, path in MODULES.items()
        if module.split(".")[0] == package
        and (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_inside_functions_count(tmp_path):
    lazy = tmp_path / "lazy.py"
    lazy.write_text(
        "def later():\n    from server.worker import tasks\n    import server.infra.queue\n"
    )
    assert set(imported("server.domain.lazy", lazy)) == {
        (2, "server.worker.tasks"), (3, "server.infra.queue"),
    }
