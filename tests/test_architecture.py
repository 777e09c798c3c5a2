"""The packages are the architecture (docs/design.md, "Layers"): these tests hold it.

They read every module of ``slurm_mig`` with :mod:`ast` (no import, no side effect) and
collect its imports: at module level, inside functions and under ``if TYPE_CHECKING:``.

* No import cycle between modules.  Imports under ``TYPE_CHECKING`` are left out here (they
  never run), every other one counts, also one inside a function.
* Layers import downwards only: a module imports its own layer and the layers below it,
  annotations included.  Packages that share a layer (``gpu`` and ``slurm``) do not import
  each other.
* The simulator and the sandbox are guests: no production module imports them, and only
  ``slurm_mig/core/guests.py`` names a guest module (the one door).  The simulator
  imports nothing above the GPU layer.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from typing import Dict, List, Set, Tuple

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "slurm_mig")

#: The layers, lowest first.  A module may import its own layer and every layer before it;
#: the packages of one layer do not import each other.  docs/design.md draws the same list.
LAYERS: Tuple[Tuple[str, ...], ...] = (
    ("core",),
    ("host",),
    ("gpu", "slurm"),
    ("node",),
    ("change",),
    ("rebalance",),
    ("hooks", "simulate"),
    ("app",),
)
#: Guests sit beside the layers: what each may import.  No production module imports them.
GUESTS: Dict[str, Tuple[str, ...]] = {
    "sim": ("core", "host", "gpu", "sim"),  # a GPU driver: nothing above the GPU layer
    "sandbox": ("core", "host", "gpu", "slurm", "node", "change", "rebalance", "hooks", "app",
                "sim", "sandbox"),  # drives the whole product on a private cluster
}
#: The one door: the only production module that names a guest module (by string).
DOOR = "slurm_mig.core.guests"

Edge = Tuple[str, str, int, bool]  # (importer, imported, line, under TYPE_CHECKING)


def _modules() -> Dict[str, Tuple[str, bool]]:
    """module name -> (path, is a package ``__init__``)."""
    out = {}
    for top, dirs, files in os.walk(PKG):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(top, f)
                parts = os.path.relpath(path, os.path.dirname(PKG))[:-3].split(os.sep)
                package = parts[-1] == "__init__"
                out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> Set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) \
                and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                out.update(id(n) for n in ast.walk(stmt))
    return out


def _imports(name: str) -> List[Edge]:
    """Every slurm_mig module ``name`` imports, anywhere in its file."""
    path, package = MODULES[name]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    typing_only = _type_checking_nodes(tree)
    here = name if package else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from pkg import sub``: the submodule; ``from mod import name``: the module.
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module
                       for a in node.names]
        for target in targets:
            if target == "slurm_mig" or target.startswith("slurm_mig."):
                assert target in MODULES, f"{name}:{node.lineno}: imports {target}, not a module"
                edge = (name, target, node.lineno, id(node) in typing_only)
                if edge not in out:
                    out.append(edge)
    return out


EDGES = [e for m in MODULES for e in _imports(m)]


def package_of(module: str) -> str:
    """The first name under slurm_mig: its layer's package or a guest ("" for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def rank(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise KeyError(package)


def is_guest(module: str) -> bool:
    return package_of(module) in GUESTS


def test_every_package_has_a_layer_or_is_a_guest():
    packages = {package_of(m) for m in MODULES} - {"", "__main__", "data"}
    placed = {p for layer in LAYERS for p in layer} | set(GUESTS)
    assert packages - placed == set(), "give each new package a place in LAYERS or GUESTS"
    # Only the package itself and `python -m slurm_mig` live at the top.
    assert sorted(m for m in MODULES if m.count(".") < 1 or package_of(m) == "__main__") == [
        "slurm_mig", "slurm_mig.__main__"]


def _cycles(edges: List[Edge]) -> List[List[str]]:
    """Strongly connected components with more than one module, or a module importing
    itself (Tarjan, iterative)."""
    graph: Dict[str, Set[str]] = {m: set() for m in MODULES}
    for a, b, _, _ in edges:
        graph[a].add(b)
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    scc = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        scc.append(w)
                        if w == v:
                            break
                    if len(scc) > 1 or v in graph[v]:
                        out.append(sorted(scc))
    return out


def test_no_import_cycles():
    runtime = [e for e in EDGES if not e[3]]
    assert _cycles(runtime) == []


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import():
    # The check itself: a -> b at module level, b -> a inside a function.
    a, b = "slurm_mig.core.errors", "slurm_mig.core.inputs"
    assert _cycles([(a, b, 1, False), (b, a, 9, False)]) == [sorted([a, b])]
    assert _cycles([(a, a, 1, False)]) == [[a]]


def _layer_violations(edges: List[Edge]) -> List[str]:
    bad = []
    for a, b, line, _ in edges:
        pa, pb = package_of(a), package_of(b)
        if pb == "" or pa == pb or pa in ("", "__main__"):
            continue  # the root package (__version__) is for everyone; `python -m slurm_mig` is the top
        if pa in GUESTS:
            if pb not in GUESTS[pa]:
                bad.append(f"{a}:{line} imports {b}: guest {pa} may import only {', '.join(GUESTS[pa])}")
            continue
        if pb in GUESTS:
            bad.append(f"{a}:{line} imports {b}: production code reaches a guest only through {DOOR}")
        elif rank(pb) > rank(pa):
            bad.append(f"{a}:{line} imports {b}: layer {pa} is below layer {pb}")
        elif rank(pb) == rank(pa):
            bad.append(f"{a}:{line} imports {b}: {pa} and {pb} share a layer and do not import each other")
    return bad


def test_layers_import_downwards_only():
    assert _layer_violations(EDGES) == []


def test_the_layer_check_finds_an_upward_import_and_a_guest_import():
    edges = [("slurm_mig.change.sync", "slurm_mig.app.commands", 39, False),
             ("slurm_mig.gpu.backend", "slurm_mig.sim.backend", 55, False),
             ("slurm_mig.sim.driver", "slurm_mig.node.jobs", 50, True),
             ("slurm_mig.gpu.nvml", "slurm_mig.slurm.model", 3, False)]
    assert _layer_violations(edges) == [
        "slurm_mig.change.sync:39 imports slurm_mig.app.commands: layer change is below layer app",
        "slurm_mig.gpu.backend:55 imports slurm_mig.sim.backend: production code reaches a guest "
        "only through slurm_mig.core.guests",
        "slurm_mig.sim.driver:50 imports slurm_mig.node.jobs: guest sim may import only core, host, "
        "gpu, sim",
        "slurm_mig.gpu.nvml:3 imports slurm_mig.slurm.model: gpu and slurm share a layer and do "
        "not import each other",
    ]


def _strings(tree: ast.AST) -> List[Tuple[int, str]]:
    """String constants that are not docstrings."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant):
            docs.add(id(node.body[0].value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_only_the_door_names_a_guest_module():
    guest_prefixes = tuple(f"slurm_mig.{g}" for g in GUESTS)
    found = []
    for name, (path, _) in MODULES.items():
        if is_guest(name) or name == DOOR:
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        found += [f"{name}:{line}: {text!r}" for line, text in _strings(tree)
                  if any(word.startswith(guest_prefixes) for word in text.split())]
    assert found == []


def test_every_door_opens_onto_a_guest():
    from slurm_mig.core import guests

    assert guests.GUESTS and all(is_guest(m) and m in MODULES for m in guests.GUESTS.values())
    for name in guests.GUESTS:
        assert is_guest(guests.visit(name).__name__)


def test_production_modules_load_no_guest():
    # At run time too: every production module imported, not one guest module comes with it.
    production = sorted(m for m in MODULES if not is_guest(m) and not m.endswith("__main__"))
    code = ("import importlib, sys\n"
            f"for m in {production!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m == 'slurm_mig.sim' or m.startswith(('slurm_mig.sim.', "
            "'slurm_mig.sandbox'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "[]\n", "")


@pytest.mark.parametrize("kind", ["sim"])
def test_the_factory_reaches_the_simulator_through_the_door(kind, tmp_path):
    from slurm_mig.gpu.backend import make_backend
    from slurm_mig.sim.driver import SimDriver

    SimDriver.create(str(tmp_path), ["A100-40GB"])
    backend = make_backend(kind, sim_root=str(tmp_path))
    try:
        assert [g.name for g in backend.gpus()] == ["NVIDIA A100-SXM4-40GB"]
        assert type(backend).__module__ == "slurm_mig.sim.backend"
    finally:
        backend.close()
