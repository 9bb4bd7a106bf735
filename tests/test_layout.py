"""The layout's rules, read from the source: imports flow one way, and docs/layout.md names
every module.

Every import is counted, at module level or inside a function, ``importlib.import_module``
of a literal name included: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("distsim", "shards")
LAYOUT = ROOT / "docs" / "layout.md"


def modules() -> dict[str, Path]:
    """Every product module by dotted name (a package by its __init__)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imported(path: Path, name: str) -> Iterator[str]:
    """Every module name `path` (module `name`) imports, resolved to absolute names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            yield str(node.args[0].value)


def graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports (a name imported from a module counts as
    that module unless the name is a module itself)."""
    mods = modules()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for target in imported(path, name):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def package_of(module: str) -> str:
    """The package a module belongs to (a package's __init__ belongs to the package)."""
    return module if (ROOT / Path(*module.split(".")) / "__init__.py").is_file() else (
        module.rpartition(".")[0]
    )  # fmt: skip


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one node (Tarjan), as sorted lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert cycles(graph()) == []


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def package_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Cycles between packages that are not each other's ancestor, at every depth: modules
    are grouped by their first d dotted parts (``distsim``, then ``distsim.gan``, ...)."""
    found = []
    depth = max(len(m.split(".")) for m in edges)
    for d in range(1, depth + 1):
        grouped: dict[str, set[str]] = {}
        for module, targets in edges.items():
            here = ".".join(package_of(module).split(".")[:d])
            there = {".".join(package_of(t).split(".")[:d]) for t in targets}
            grouped.setdefault(here, set()).update(p for p in there if not _related(p, here))
        found += [c for c in cycles(grouped) if c not in found]
    return found


def test_no_package_imports_one_that_imports_it_back() -> None:
    """A package's modules may use its subpackages and its subpackages the package's own
    modules (``shards.sources`` uses ``shards.format``), but no two packages that are not
    each other's ancestor may use each other, however indirectly: not ``distsim`` and
    ``shards``, not ``distsim.gaze`` and ``distsim.training``."""
    assert package_cycles(graph()) == []


def test_command_line_modules_are_leaves() -> None:
    """No library module imports a command-line module (distsim/train.py, refine.py, ...),
    which would tie the library to an entry point."""
    clis = {
        "distsim.train",
        "distsim.refine",
        "distsim.evaluate",
        "distsim.report",
        "shards.cli",
        "shards.__main__",
        "distsim.turing.cli",
        "distsim.turing.__main__",
    }
    bad = [f"{m} imports {t}" for m, targets in graph().items() for t in targets
           if t in clis and not m.endswith("__main__")]  # fmt: skip
    assert bad == []


def test_the_cycle_finders_find_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # The cycle the simulators once made: shards.sources reaching into distsim, whose
    # simulator used shards.gaze; no module imports one that imports it back.
    hidden = {"shards.sources.sim_eyes": {"distsim.sim.eyes"}, "distsim.sim.eyes": {"shards.gaze"},
              "shards.gaze": set()}  # fmt: skip
    assert cycles(hidden) == []
    assert package_cycles(hidden) == [["distsim", "shards"]]


@pytest.mark.parametrize(
    ("where", "forbidden"),
    [
        # shards converts and knows nothing of training, not even through importlib.
        ("shards", ("distsim", "torch", "accelerate")),
        # The SimGAN core knows nothing of eyes, hands, ranks' launch or Accelerate.
        ("distsim.gan", ("distsim.gaze", "distsim.hands", "distsim.data", "distsim.training",
                         "distsim.distributed", "distsim.config", "accelerate", "shards")),
        ("distsim.data", ("distsim.training", "distsim.checkpoints", "accelerate")),
        ("distsim.config", ("torch", "distsim.gan", "distsim.data", "distsim.training")),
    ],
)  # fmt: skip
def test_imports_flow_one_way(where: str, forbidden: tuple[str, ...]) -> None:
    mods = modules()
    bad = []
    for name, path in mods.items():
        if name != where and not name.startswith(where + "."):
            continue
        for target in imported(path, name):
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                bad.append(f"{name} imports {target}")
    assert bad == []


def test_nothing_imports_experiments_or_benchmarks() -> None:
    sources = [*modules().items()]
    sources += [(p.relative_to(ROOT).as_posix(), p) for p in sorted((ROOT / "tests").rglob("*.py"))]
    bad = [f"{name} imports {target}" for name, path in sources
           for target in imported(path, str(name).replace("/", ".").removesuffix(".py"))
           if target.split(".")[0] in ("experiments", "benchmarks")]  # fmt: skip
    assert bad == []


def test_the_layout_map_names_every_module_and_nothing_else() -> None:
    text = LAYOUT.read_text()
    named = set(re.findall(r"`((?:distsim|shards)/[\w/]*\.py)`", text))
    named |= {f"{d}__init__.py" for d in re.findall(r"`((?:distsim|shards)(?:/\w+)*/)`", text)}
    files = {p.relative_to(ROOT).as_posix() for p in modules().values()}
    packages = {f for f in files if f.endswith("__init__.py")}
    assert sorted(files - named - packages) == [], "modules docs/layout.md does not name"
    assert sorted(named - files) == [], "docs/layout.md names modules that do not exist"
    assert sorted(packages - named) == [], "packages docs/layout.md does not name"
