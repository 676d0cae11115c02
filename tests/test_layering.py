"""The package's layers: data flows geometry -> operators -> partition -> distributed -> problem ->
optimizer -> outputs, over the MPI floor ``comm``. Every import (also one inside a function) goes
to the same or a lower layer, and no module is part of an import circle."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "dtpinn_dist"

#: subpackage (or top-level module) -> layer; an import may only go to the same or a lower layer
LAYERS = {"comm": 0, "resources": 0, "atomic": 0, "geometry": 1, "model": 1, "operators": 2,
          "partition": 3, "distributed": 4, "problem": 5, "optimizer": 6, "outputs": 7,
          "train": 8, "predict": 8, "info": 9, "__init__": 9, "__main__": 9}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """Absolute names of the package modules ``path`` imports (anywhere in the file)."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("dtpinn_dist"):
                # "from . import x" / "from .pkg import mod": the module itself when it is one
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    yield full if _exists(full) else target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dtpinn_dist"):
                    yield alias.name


def _exists(name: str) -> bool:
    p = PKG.parent.joinpath(*name.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _layer(name: str) -> int:
    parts = name.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    return LAYERS[key]


def _graph():
    g = {}
    for path in PKG.rglob("*.py"):
        g[_module_name(path)] = {t for t in _imports(path) if t != _module_name(path)}
    return g


def test_every_subpackage_has_a_layer():
    for path in PKG.iterdir():
        if path.name.startswith("_") and path.name not in ("__init__.py", "__main__.py"):
            continue
        name = path.stem
        if path.is_dir() and not (path / "__init__.py").exists():
            continue
        assert name in LAYERS, f"{name} has no layer in tests/test_layering.py"


def test_imports_go_down_the_layers():
    bad = []
    for mod, targets in _graph().items():
        for t in targets:
            if _layer(t) > _layer(mod):
                bad.append(f"{mod} -> {t}")
    assert not bad, "imports going up the layers:\n" + "\n".join(sorted(bad))


def test_no_import_circles():
    g = _graph()
    # a subpackage's __init__ re-exports its modules: an edge into a package means its __init__
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(g.get(m, ())):
            if t not in g:
                continue
            if state.get(t) == 1:
                cyc = stack[stack.index(t):] + [t]
                # a package's __init__ importing its own modules is not a circle by itself
                if not all(c.startswith(cyc[0]) for c in cyc):
                    cycles.append(" -> ".join(cyc))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import circles:\n" + "\n".join(cycles)
