"""The import order of docs/architecture.md, checked over every import in the package.

Every module of snn2hw belongs to one unit (a package such as ``runs`` or a
target package such as ``export.loihi``); units are stacked in layers. A module
may import its own unit and units of lower layers, never a layer above its own
or a sibling unit of its layer, and the module graph has no cycle. Imports
inside functions count too: a lazy import is still a dependency.

Run ``python tests/test_architecture.py`` to print the unit graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "snn2hw"

# Bottom to top; one tuple per layer, one name per unit (a module or a package
# under snn2hw). "export.<target>" stands for every target package in export/.
LAYERS: list[tuple[str, ...]] = [
    ("version", "errors"),
    ("mapping_file", "registry", "environment", "devices"),
    ("core",),
    ("data",),
    ("models",),
    ("distributed",),
    ("methods",),
    ("runs",),
    ("export.hub",),          # base, grid, qat, to_nir, from_nir, nir_reading, reference
    ("export.<target>",),     # one package per target; siblings never import each other
    ("export",),              # the registry (export/__init__.py)
    ("export.api",),          # the driver every verb calls
    ("hwsim",),
    ("train",),
    ("reports",),
    ("sweep",),
    ("api",),
    ("cli", ""),              # "" is the package root: the facade
    ("__main__",),            # python -m snn2hw -> cli
]
HUB = {"base", "grid", "to_nir", "from_nir", "nir_reading", "reference", "interop", "nir_reference", "qat"}


def module_names() -> dict[str, Path]:
    """Dotted name below snn2hw ("" for the root) -> file, for every module."""
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def target_packages() -> set[str]:
    return {p.name for p in (PACKAGE / "export").iterdir() if (p / "__init__.py").exists()}


def unit_of(module: str) -> str:
    parts = module.split(".") if module else []
    if parts[:1] == ["export"] and len(parts) > 1:
        if parts[1] in HUB:
            return "export.hub"
        if parts[1] in target_packages():
            return f"export.{parts[1]}"
        return f"export.{parts[1]}"
    return parts[0] if parts else ""


def layer_of(unit: str) -> int:
    key = "export.<target>" if unit.startswith("export.") and unit.split(".")[1] in target_packages() else unit
    for i, layer in enumerate(LAYERS):
        if key in layer:
            return i
    raise AssertionError(f"snn2hw.{unit} has no layer: add it to LAYERS and docs/architecture.md")


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The snn2hw modules ``module`` imports (relative or absolute, anywhere in the file)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if module == "":
        package = []
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "snn2hw":
                mod = node.module.partition(".")[2] if "." in node.module else ""
            else:
                continue
            # ``from pkg import submodule`` depends on the submodule, not on pkg's own code
            subs = [f"{mod}.{a.name}".lstrip(".") for a in node.names]
            names = [s for s in subs if s in modules] or [mod]
            found.update(n for n in names if n in modules and n != module)
            continue
        else:
            continue
        for n in names:
            if n.split(".")[0] == "snn2hw":
                n = n.partition(".")[2]
                while n not in modules and "." in n:
                    n = n.rsplit(".", 1)[0]
                if n in modules and n != module:
                    found.add(n)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in sorted(graph.items()):
        su = unit_of(src)
        for dst in sorted(targets):
            du = unit_of(dst)
            if du != su and layer_of(du) >= layer_of(su):
                bad.append(f"snn2hw.{src} ({su}) imports snn2hw.{dst} ({du}), not below it")
    return bad


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_every_module_imports_only_below_its_layer():
    assert upward_imports(import_graph()) == []


def test_every_unit_has_a_layer():
    layers = {module: layer_of(unit_of(module)) for module in module_names()}
    assert all(0 <= layer < len(LAYERS) for layer in layers.values())
    with pytest.raises(AssertionError, match="has no layer"):   # a new package must be placed
        layer_of("quantum")


def test_checker_catches_a_cycle_and_an_upward_import():
    graph = {"core.neuron": {"runs.model"}, "runs.model": {"core.neuron"}}
    assert cycles(graph) == [["core.neuron", "runs.model"]]
    assert upward_imports(graph) == ["snn2hw.core.neuron (core) imports snn2hw.runs.model (runs), not below it"]
    assert upward_imports({"export.loihi.grid": {"export.speck.discretize"}})  # sibling targets


def test_resolves_relative_and_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from ..runs.model import load_model\n"
                 "def g():\n    from .. import distributed as dist\n    import snn2hw.core.neuron\n")
    modules = module_names()
    assert imports_of("export.api", f, modules) == {"runs.model", "distributed", "core.neuron"}


if __name__ == "__main__":
    g = import_graph()
    units: dict[str, set[str]] = {}
    for src, dsts in g.items():
        units.setdefault(unit_of(src), set()).update(unit_of(d) for d in dsts if unit_of(d) != unit_of(src))
    for u in sorted(units, key=lambda u: (layer_of(u), u)):
        print(f"{layer_of(u):2d} {u or '(root)':18s} -> {', '.join(sorted(units[u], key=layer_of))}")
    print("cycles:", cycles(g) or "none")
    print("upward imports:", upward_imports(g) or "none")
