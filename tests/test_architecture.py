"""pytest tests/test_architecture.py -- the layers of docs/architecture.md, from the source.

Every `import` in ipb/, function-level ones included (a lazy import is still a dependency):
no circle, and the lower layers never reach up. Parses the files; imports nothing.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

IPB = Path(__file__).resolve().parents[1] / "ipb"
# the plain numpy/torch core: no Ray, no MLflow, nothing of the layers above it
CORE = ("ipb.config", "ipb.data", "ipb.models", "ipb.methods", "ipb.dist", "ipb.metrics",
        "ipb.evaluation", "ipb.engine")
ALLOWED = {   # layer -> the ipb modules it may import (prefixes)
    "ipb.data": ("ipb.config", "ipb.data"),
    "ipb.models": ("ipb.models",),
    "ipb.methods": ("ipb.config", "ipb.models", "ipb.dist", "ipb.methods"),
    "ipb.metrics": (),
    "ipb.dist": (),
    "ipb.evaluation": ("ipb.config", "ipb.data", "ipb.dist", "ipb.methods", "ipb.metrics"),
    "ipb.engine": CORE,
}
RAY_ALLOWED = ("ipb.data.ingest",)     # Ray Data reads the raw images (DESIGN.md)


def _modules() -> dict[str, Path]:
    out = {}
    for f in IPB.rglob("*.py"):
        parts = f.relative_to(IPB.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def imports() -> dict[str, tuple[set[str], set[str]]]:
    """module -> (the ipb modules it imports anywhere in the file, the other top-level
    packages it imports)."""
    mods = _modules()
    graph = {}
    for name, f in mods.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        inner, outer = set(), set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            else:
                continue
            for t in targets:
                if t.split(".")[0] == "ipb":
                    while t not in mods and "." in t:
                        t = t.rpartition(".")[0]
                    if t != name:
                        inner.add(t)
                else:
                    outer.add(t.split(".")[0])
        graph[name] = (inner, outer)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(name: str) -> str | None:
    return next((p for p in ALLOWED if name == p or name.startswith(p + ".")), None)


def test_no_import_circle_counting_function_level_imports():
    graph = {k: v[0] for k, v in imports().items()}
    assert cycles(graph) == []
    # the check finds one: a module that imports its importer
    assert cycles({**graph, "ipb.config": graph["ipb.config"] | {"ipb.train"}})


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_lower_layers_import_nothing_above_them_and_no_ray_or_mlflow(layer):
    bad = []
    for name, (inner, outer) in imports().items():
        if _layer(name) != layer:
            continue
        up = [t for t in inner if not any(t == p or t.startswith(p + ".")
                                          for p in ALLOWED[layer])]
        services = {"ray", "mlflow", "optuna"} & outer
        if name in RAY_ALLOWED:
            services -= {"ray"}
        bad += [f"{name} imports {t}" for t in sorted(up)]
        bad += [f"{name} imports {s}" for s in sorted(services)]
    assert not bad, bad
