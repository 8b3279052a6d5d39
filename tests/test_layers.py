"""The packages' layers: no module imports a package of a layer above its own, and module-level imports
have no cycle. Read from the source (ast), so a lazy import inside a function counts for the layers too."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Bottom first. A package imports only itself and packages of lower layers.
LAYERS = [
    {"s3d", "synthetic"},  # the model and the test data: nothing of the project below them
    {"storage"},  # paths, object stores, http, runs (the version string comes from s3d)
    {"decoder", "captions", "vector_index"},  # video -> clips; captions files; the index: no Beam
    {"transforms"},  # the Beam steps
    {"pipeline"},  # the jobs and commands
    {"benchmarks", "deploy", "examples"},  # what measures, deploys and shows the jobs
]
LAYER = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _modules() -> dict[str, str]:
    """Module name -> path, for every .py of the packages."""
    out = {}
    for pkg in LAYER:
        for root, dirs, files in os.walk(os.path.join(ROOT, pkg)):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, f), ROOT)[:-3].replace(os.sep, ".")
                    out[rel.removesuffix(".__init__")] = os.path.join(root, f)
    return out


def _imports(path: str, module_level: bool) -> list[str]:
    tree = ast.parse(open(path, encoding="utf-8").read())
    nodes = tree.body if module_level else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names]  # `from pkg import module`
    return found


MODULES = _modules()


def test_the_layers_cover_every_package_of_the_repository():
    packages = {d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, "__init__.py"))}
    assert packages <= set(LAYER), f"packages without a layer: {sorted(packages - set(LAYER))}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_above_its_own(module):
    own = module.split(".")[0]
    above = sorted({name for name in _imports(MODULES[module], module_level=False)
                    if name.split(".")[0] in LAYER and name.split(".")[0] != own
                    and LAYER[name.split(".")[0]] >= LAYER[own]})
    assert not above, f"{module} (layer {LAYER[own]}) imports {above}"


def test_module_level_imports_have_no_cycle():
    graph = {m: {n for n in _imports(p, module_level=True) if n in MODULES and n != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*path, m, n]
            if n not in state and (cycle := visit(n, [*path, m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m, [])
            assert cycle is None, " -> ".join(cycle)


def test_the_benchmark_driver_finds_every_section():
    """benchmarks/run.py names each section's function in its own module: a moved or renamed one fails here,
    not an hour into make bench."""
    from benchmarks.run import SECTIONS

    assert {name: callable(fn) for name, fn in SECTIONS.items()} == dict.fromkeys(SECTIONS, True)
    assert {"model", "decode", "pipeline", "captions", "soak"} <= set(SECTIONS)
