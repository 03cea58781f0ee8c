"""Imports point one way: config, results <- tokenizer <- data, model <- eval <- train, claims,
report <- tasks (<- run.py), and no two modules of allam/ import each other, directly or around a
loop. Every import counts, including the lazy ones inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

from allam.config import ROOT

LAYER = {"config": 0, "results": 0, "tokenizer": 1, "data": 2, "model": 2, "eval": 3,
         "train": 4, "claims": 4, "report": 4, "tasks": 5}


def import_graph(package_dir: Path) -> tuple[dict[str, set[str]], set[str]]:
    """{module: the package's modules it imports}, and the names that are package __init__ files."""
    root = package_dir.parent
    files = {".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): f
             for f in package_dir.rglob("*.py")}
    inits = {m for m, f in files.items() if f.name == "__init__.py"}
    top = package_dir.name
    graph: dict[str, set[str]] = {}
    for module, f in files.items():
        targets = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                         for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in files:  # `import allam.x.y` names a module; a longer name, one inside it
                    name = name.rpartition(".")[0]
                if name.split(".")[0] == top and name != module:
                    targets.add(name)
        graph[module] = targets
    return graph, inits


def cycles(graph: dict[str, set[str]], skip: set[str]) -> list[list[str]]:
    """Groups of modules that reach each other through imports (package __init__ re-exports left out)."""
    reach = {m: set() for m in graph}
    for start in graph:
        todo = [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in skip and nxt not in reach[start]:
                    reach[start].add(nxt)
                    todo.append(nxt)
    groups = {frozenset(m2 for m2 in reach[m] if m in reach[m2]) | {m} for m in graph if m not in skip and m in reach[m]}
    return sorted(sorted(g) for g in groups)


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_imports_point_down_the_layers():
    graph, _ = import_graph(ROOT / "allam")
    against = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                     if _layer(m) in LAYER and _layer(d) in LAYER and LAYER[_layer(d)] > LAYER[_layer(m)])
    assert against == []


def test_no_import_cycles():
    graph, inits = import_graph(ROOT / "allam")
    assert cycles(graph, inits) == []


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "allam"
    for sub, text in {"__init__.py": "", "model/__init__.py": "", "config/__init__.py": "",
                      "model/a.py": "def f():\n    from allam.model import b\n",
                      "model/b.py": "import allam.model.a\n",
                      "config/c.py": "from allam.model.a import f\n"}.items():
        (pkg / sub).parent.mkdir(parents=True, exist_ok=True)
        (pkg / sub).write_text(text)
    graph, inits = import_graph(pkg)
    assert cycles(graph, inits) == [["allam.model.a", "allam.model.b"]]
    assert graph["allam.config.c"] == {"allam.model.a"}  # config (layer 0) importing model (layer 2)
