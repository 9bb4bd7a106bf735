"""distsim.turing's layout: each module imports only what its one job needs, and no module
imports one that imports it back."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import distsim.turing

PACKAGE = Path(distsim.turing.__file__).parent
REPO = Path(__file__).resolve().parents[2]
MODULES = ("common", "images", "stats", "session", "server", "cli")
HTTP = ("http.server", "socketserver")
# What importing each module must not bring in.
FORBIDDEN = {
    "": [f"distsim.turing.{m}" for m in MODULES],
    "common": [f"distsim.turing.{m}" for m in MODULES if m != "common"] + ["numpy"],
    "stats": [*HTTP, "numpy", "PIL", *(f"distsim.turing.{m}" for m in MODULES[3:] + ("images",))],
    "images": [*HTTP, *(f"distsim.turing.{m}" for m in ("stats", "session", "server", "cli"))],
    "session": [*HTTP, "distsim.turing.server", "distsim.turing.cli"],
    "server": ["distsim.turing.cli"],
}


@pytest.mark.parametrize("module", list(FORBIDDEN))
def test_module_imports_only_what_its_job_needs(module: str) -> None:
    name = f"distsim.turing.{module}" if module else "distsim.turing"
    script = f"import json, sys, {name}; print(json.dumps(sorted(sys.modules)))"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert name in loaded
    assert not loaded & set(FORBIDDEN[module]), sorted(loaded & set(FORBIDDEN[module]))


def _imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.removeprefix("distsim.turing.") for n in names} & set(MODULES)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py")}
    assert set(MODULES) <= set(graph)

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph.get(m, ())
        return seen

    cycles = [m for m in graph if m in reach(m)]
    assert not cycles, {m: graph[m] for m in cycles}
