"""The import graph keeps the layers of docs/architecture.md: imports point only down, no circles.

The contracts live in ``.importlinter`` at the repository root and are checked with ``lint-imports``
(import-linter): the layer order, no bridge package importing a terminal backend, no circle between the
subpackages of a package. import-linter reasons about packages; that no two *modules* import each other
(directly or around a longer loop) is checked here on the same graph with grimp. Both read every import
statement, those inside functions and under ``TYPE_CHECKING`` included.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".importlinter"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _root_packages() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    return parser["importlinter"]["root_packages"].split()


def _lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache", "--no-logo"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative): each is a set
    of modules that reach each other through their imports, i.e. contains at least one circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def describe_cycle(graph: grimp.ImportGraph, component: list[str]) -> str:
    """One concrete circle of a component, each hop with the file line that makes it."""
    members = set(component)
    first = component[0]
    following = sorted(m for m in graph.find_modules_directly_imported_by(first) if m in members)[0]
    chain = [first, *graph.find_shortest_chain(importer=following, imported=first)]
    hops = []
    for importer, imported in zip(chain, chain[1:], strict=False):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = f"l.{details[0]['line_number']}: {details[0]['line_contents']}" if details else ""
        hops.append(f"  {importer} -> {imported}  ({where})")
    return "\n".join(hops)


def test_import_contracts_are_kept() -> None:
    result = _lint_imports(CONFIG)
    assert result.returncode == 0, f"import contracts broken (.importlinter):\n{result.stdout}\n{result.stderr}"
    assert "broken" in result.stdout and " 0 broken" in result.stdout, result.stdout


def test_no_two_modules_import_each_other() -> None:
    graph = grimp.build_graph(*_root_packages(), cache_dir=None)
    cycles = import_cycles(graph)
    report = "\n\n".join(f"{', '.join(c)}:\n{describe_cycle(graph, c)}" for c in cycles)
    assert not cycles, f"modules that import each other (directly or around a loop):\n{report}"


def test_a_contract_that_the_code_breaks_is_reported(tmp_path: Path) -> None:
    """The runner is not blind: the same layers, upside down, must be reported broken."""
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    layers = parser["importlinter:contract:layers"]["layers"].split()
    parser["importlinter:contract:layers"]["layers"] = "\n" + "\n".join(reversed(layers))
    upside_down = tmp_path / "upside_down.ini"
    with upside_down.open("w") as out:
        parser.write(out)
    result = _lint_imports(upside_down)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout


def test_the_cycle_check_finds_a_circle() -> None:
    """The module check on a small graph with one three-module circle beside an acyclic branch."""
    graph = grimp.ImportGraph()
    for importer, imported in [("pkg.a", "pkg.b"), ("pkg.b", "pkg.c"), ("pkg.c", "pkg.a"), ("pkg.c", "pkg.d"),
                               ("pkg.e", "pkg.d")]:
        graph.add_import(importer=importer, imported=imported, line_number=1, line_contents="import x")
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert "pkg.c -> pkg.a" in describe_cycle(graph, ["pkg.a", "pkg.b", "pkg.c"])
