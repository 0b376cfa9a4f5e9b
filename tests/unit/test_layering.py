"""The import rules of sea_dist: which package may import which, no import cycle, where Ray and DGL live.

Every ``import`` and ``from ... import`` in ``sea_dist/**`` (function-level ones included: a
lazy import is still a dependency) is parsed with :mod:`ast`, never executed. The rules:

* **Layers** (:data:`ALLOWED`): each top-level package or module of sea_dist (a *unit*) may
  import only the units listed for it. The table itself must be acyclic, so every arrow points
  down: storage and data never import train, eval or the CLI; model is plain torch over config;
  eval reaches the process group through ``runtime``, not ``train``.
* **The CLI is a leaf**: ``sea_dist.cli`` and ``sea_dist.config_cli`` are imported by entry
  points only (``sea_dist.cli`` itself, ``jobs/``, tests); library code uses ``sea_dist.config``.
* **No import cycle between modules**: the module import graph's strongly connected
  components all have one module.
* **Third-party confinement**: only ``graph/`` imports ``dgl``; Ray only in ``train/ray_run.py``
  (the Ray Train driver and worker entry) and ``train/ray_policy.py`` (its failure policy); ``model/`` imports neither, nor ``torch.distributed``, nor train/graph.

The checkers are plain functions over a source tree, so the tests at the end run them on small
fake trees and see them fail.
"""
from __future__ import annotations

import ast
import pathlib
import re
from collections import defaultdict

REPO = pathlib.Path(__file__).resolve().parents[2]
ROOT = REPO / "sea_dist"
MODEL = ROOT / "model"

#: unit -> the units it may import (besides itself). Lower layers first.
ALLOWED: dict[str, set[str]] = {
    "arrays": set(),  # numpy helpers
    "logs": set(),  # logging set-up for entry points
    "local_cache": set(),  # the local cache folder (datasets, compiled kernels)
    "config": set(),  # typed sections, parsing, validation
    "runtime": set(),  # the process-group helper (torch.distributed)
    "storage": {"config"},  # filesystems, shards, schema checks, ids, retries, DatasetError
    "data": {"arrays", "storage"},  # the dataset contract: dataset.json, reader, writer, feature store
    "model": {"config", "local_cache"},  # plain torch SEA (+ the CLUB fit's compiled kernel)
    "graph": {"config", "model", "storage"},  # DGL: graph building, kNN, partitions, sampling
    "eval": {"config", "runtime"},  # metrics, ranking, the distributed evaluator
    "ops": {"config", "storage"},  # metrics endpoints, outputs, publishing, reports
    "sources": {"logs", "local_cache", "data", "storage"},  # synthetic, streaming, MMRec, MovieLens: produce datasets
    "prepare": {"arrays", "config", "data", "graph", "model", "storage"},
    # the launcher generates the bundled default dataset (sources) when data.root is empty
    "train": {"arrays", "config", "runtime", "storage", "data", "model", "graph", "eval", "ops", "sources", "prepare"},
    "config_cli": {"config"},  # argparse over sea_dist.config
    "cli": {"logs", "config", "config_cli", "storage", "sources", "prepare", "train"},  # the sea-dist command
}
CLI_UNITS = {"cli", "config_cli"}
#: modules allowed to import ray (the Ray Train driver and worker entry, and its failure policy)
RAY_MODULES = {"sea_dist.train.ray_run", "sea_dist.train.ray_policy"}


# --------------------------------------------------------------------------------------------
# the checkers (pure functions over a source tree)


def module_names(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """``{dotted module name: file}`` of a package directory ``root`` (its name is the top)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(path: pathlib.Path, top: str, modules: dict[str, pathlib.Path]) -> set[str]:
    """Modules of package ``top`` that ``path`` imports, anywhere in the file.

    ``from a.b import c`` is an import of ``a.b.c`` when that is a module, else of ``a.b``;
    relative imports are resolved against the file's own package.
    """
    me = next(name for name, p in modules.items() if p == path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            if name == top or name.startswith(top + "."):
                while name not in modules and "." in name:  # `import a.b.func`-like: the module part
                    name = name.rpartition(".")[0]
                found.add(name)
    found.discard(me)
    return found


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports}`` for every module under ``root``."""
    modules = module_names(root)
    return {name: imports_of(path, root.name, modules) for name, path in modules.items()}


def unit_of(module: str) -> str:
    """The top-level package or module of sea_dist that ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_violations(graph: dict[str, set[str]], allowed: dict[str, set[str]]) -> list[str]:
    """``"a.b -> c.d"`` for every import that the table does not allow (and every unknown unit)."""
    bad = []
    for module, targets in sorted(graph.items()):
        unit = unit_of(module)
        if unit not in allowed and module.count("."):
            bad.append(f"{module}: unit {unit!r} is not in the layering table")
            continue
        for target in sorted(targets):
            other = unit_of(target)
            if other != unit and other not in allowed.get(unit, set()):
                bad.append(f"{module} -> {target} ({unit} may not import {other})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def third_party_offenders(root: pathlib.Path, library: str, allowed: set[str]) -> list[str]:
    """Modules outside ``allowed`` (module names, or ``unit.`` prefixes) that import ``library``."""
    modules = module_names(root)
    bad = []
    for name, path in modules.items():
        if name in allowed or any(name.startswith(prefix) for prefix in allowed if prefix.endswith(".")):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            if any(n == library or n.startswith(library + ".") for n in names):
                bad.append(name)
                break
    return sorted(bad)


# --------------------------------------------------------------------------------------------
# the rules, on sea_dist


def test_the_layering_table_points_down():
    """The table is a DAG: an arrow up (a cycle between units) would make layers meaningless."""
    assert cycles({unit: set(deps) for unit, deps in ALLOWED.items()}) == []
    for unit, deps in ALLOWED.items():
        assert unit not in deps and deps <= set(ALLOWED), unit


def test_every_unit_of_sea_dist_is_in_the_table():
    units = {unit_of(m) for m in module_names(ROOT) if m != "sea_dist"}
    assert units == set(ALLOWED), f"add new packages to ALLOWED: {units ^ set(ALLOWED)}"


def test_imports_follow_the_layers():
    assert layer_violations(import_graph(ROOT), ALLOWED) == []


def test_only_entry_points_import_the_cli():
    importers = {
        module for module, targets in import_graph(ROOT).items()
        if any(unit_of(t) in CLI_UNITS for t in targets) and unit_of(module) not in CLI_UNITS
    }
    assert importers == set()


def test_no_import_cycle_between_modules():
    assert cycles(import_graph(ROOT)) == []


def test_model_package_is_plain_torch():
    forbidden = re.compile(r"^\s*(import|from)\s+(ray|dgl|torch\.distributed|sea_dist\.(train|graph))\b", re.M)
    offenders = [p.name for p in MODEL.rglob("*.py") if forbidden.search(p.read_text())]
    assert offenders == []


def test_dgl_only_in_graph_and_ray_only_in_the_ray_modules():
    assert third_party_offenders(ROOT, "dgl", {"sea_dist.graph."}) == []
    assert third_party_offenders(ROOT, "ray", RAY_MODULES) == []


# --------------------------------------------------------------------------------------------
# the checkers fail when they should


def _tree(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "pkg"


def test_checker_finds_an_upward_arrow(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from pkg.high import b  # lazy, still an arrow up\n",
        "high/__init__.py": "",
        "high/b.py": "from pkg.low.a import f\n",
    })
    table = {"low": set(), "high": {"low"}}
    assert layer_violations(import_graph(root), table) == ["pkg.low.a -> pkg.high.b (low may not import high)"]
    assert layer_violations(import_graph(root), {"low": {"high"}, "high": {"low"}}) == []
    assert cycles(table) == [] and cycles({"low": {"high"}, "high": {"low"}}) == [["high", "low"]]


def test_checker_finds_a_module_cycle_through_relative_and_lazy_imports(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "s/__init__.py": "",
        "s/gen.py": "from . import stream\n",
        "s/stream.py": "def g():\n    from .gen import x\n",
        "s/leaf.py": "import pkg.s.gen\n",
    })
    graph = import_graph(root)
    assert graph["pkg.s.gen"] == {"pkg.s.stream"} and graph["pkg.s.leaf"] == {"pkg.s.gen"}
    assert cycles(graph) == [["pkg.s.gen", "pkg.s.stream"]]
    (root / "s" / "stream.py").write_text("def g():\n    return 1\n")
    assert cycles(import_graph(root)) == []


def test_checker_finds_a_confined_library_elsewhere(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "graph/__init__.py": "",
        "graph/g.py": "import dgl\n",
        "train/__init__.py": "",
        "train/t.py": "def f():\n    from dgl import function\n",
    })
    assert third_party_offenders(root, "dgl", {"pkg.graph."}) == ["pkg.train.t"]
