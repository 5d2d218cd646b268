"""The shape of the code base (docs/architecture.md): layers point one way, no import
circles (function-level imports included, ``if TYPE_CHECKING:`` imports excepted), one
composition root, few loose modules in appliance/."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("appliance", "signatures", "filters")
# The modules allowed to import the composition root: the command line and what it starts.
COMPOSITION_ROOT = "appliance.compose"
ROOT_USERS = {"appliance.cli", "appliance.run"}
MAX_LOOSE = 8


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PRODUCT:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def _type_checking_only(node: ast.AST, parents: list[ast.AST]) -> bool:
    return any(isinstance(p, ast.If) and "TYPE_CHECKING" in ast.unparse(p.test) for p in parents)


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the product modules it imports anywhere in its body."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        stack: list[tuple[ast.AST, list[ast.AST]]] = [(ast.parse(f.read_text(), str(f)), [])]
        while stack:
            node, parents = stack.pop()
            stack.extend((child, [*parents, node]) for child in ast.iter_child_nodes(node))
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or _type_checking_only(node, parents):
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m:
                    edges[m].add(t)
    return edges


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def _package_of(module: str) -> str:
    """appliance.dns.server -> appliance.dns; appliance.cli -> appliance.cli (a loose module)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_the_circle_finder_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_round_a_circle() -> None:
    assert _circles(_imports(_modules())) == []


def test_no_package_circles_either() -> None:
    """Packages (appliance.dns, appliance.web, ...) form a one-way graph too: a newcomer can
    read them bottom-up (docs/architecture.md lists the order)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for m, targets in _imports(_modules()).items():
        for t in targets:
            if _package_of(t) != _package_of(m):
                edges[_package_of(m)].add(_package_of(t))
    assert _circles(dict(edges)) == []


def test_layers_point_one_way() -> None:
    for m, targets in _imports(_modules()).items():
        top = {t.split(".")[0] for t in targets}
        if m.startswith("filters"):
            assert top <= {"filters"}, m
        if m.startswith("signatures"):
            assert top <= {"filters", "signatures"}, m


def test_one_composition_root_and_nobody_imports_the_cli() -> None:
    edges = _imports(_modules())
    users = {m for m, targets in edges.items() if COMPOSITION_ROOT in targets}
    assert users <= ROOT_USERS, f"only {sorted(ROOT_USERS)} may import {COMPOSITION_ROOT}: {sorted(users)}"
    assert not {m for m, targets in edges.items() if "appliance.cli" in targets}


def test_few_loose_modules_in_appliance() -> None:
    loose = sorted(f.name for f in (ROOT / "appliance").glob("*.py") if f.name != "__init__.py")
    assert len(loose) <= MAX_LOOSE, loose


def test_every_package_says_what_is_inside() -> None:
    """Each package's __init__ is a docstring naming its modules (a map for the newcomer)."""
    for init in sorted((ROOT / "appliance").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        modules = {f.stem for f in init.parent.glob("*.py") if f.name != "__init__.py" and not f.stem.startswith("_")}
        missing = {m for m in modules if f"{m}.py" not in doc}
        assert not missing, f"{init.relative_to(ROOT)} does not mention {sorted(missing)}"
