"""The layers of docs/architecture.md, checked on the source: dependencies point down, no import cycles.

Parsed with `ast` (nothing is imported), so a rule broken inside a function body counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ddit_export"

# layer -> packages it must never import (at any depth, module level or inside functions).
FORBIDDEN = {
    "artifacts": {"export", "runtime", "pipelines", "serve", "train", "bench", "demo", "commands"},
    "runtime": {"export", "pipelines", "serve", "train", "bench", "demo", "commands"},
    "families": {"export", "runtime", "pipelines", "serve", "train", "bench", "demo", "commands"},
    "ddit": {"export", "runtime", "pipelines", "serve", "train", "bench", "demo", "commands"},
    "export": {"serve", "train", "bench", "demo", "commands"},
    # the demo model's runtime half is pipelines/demo/; demo/ (its application) sits a layer above
    "pipelines": {"export", "serve", "train", "bench", "demo", "commands"},
    # siblings of one layer use the layers below, never each other (bench/ is shared by demo/, see the doc)
    "train": {"serve", "bench", "demo", "commands"},
    "demo": {"serve", "train", "commands"},
    "bench": {"serve", "train", "demo", "commands"},
    "util": {"artifacts", "ddit", "families", "runtime", "export", "pipelines", "serve", "train", "bench", "demo",
             "commands"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """Absolute names of the ddit_export modules that `path` imports."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base.startswith("ddit_export"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ddit_export"))
    return found


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_layers_never_import_upwards():
    broken = []
    for name, path in all_modules().items():
        layer = name.split(".")[1] if name.count(".") else ""
        for target in imports(path, top_level_only=False):
            parts = target.split(".")
            if len(parts) > 1 and parts[1] in FORBIDDEN.get(layer, ()):
                broken.append(f"{name} imports {target}")
    assert not broken, "\n".join(sorted(broken))


def test_no_import_cycles_between_modules():
    modules = all_modules()
    graph = {n: {t for t in imports(p, top_level_only=True) if t in modules and t != n} for n, p in modules.items()}
    # A package's __init__ importing its own submodules is how Python packages work, not a cycle of layers.
    graph = {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in graph.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert len(modules) > 100  # the walk found the package
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
