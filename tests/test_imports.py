"""Import structure: the zoo loads its builders on demand, and processing never reaches the zoo
(the zoo builds processors; a saved model loads its processor without the zoo)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from hooks_mm import zoo

ROOT = Path(__file__).resolve().parents[1]


def import_graph() -> dict[str, set[str]]:
    """hooks_mm module -> the hooks_mm modules it names in an import (at module level or inside
    functions). Parent packages are left out: importing any submodule also runs ``hooks_mm/__init__``."""
    files = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / "hooks_mm").rglob("*.py")
    }
    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                source = ".".join(p for p in (base, node.module) if p)
                names |= {source, *(f"{source}.{a.name}" for a in node.names)}
        graph[module] = names & files.keys()
    return graph


def test_processing_does_not_reach_the_zoo() -> None:
    graph = import_graph()
    seen, todo = set(), [m for m in graph if m.startswith("hooks_mm.processing")]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph[module]
    assert "hooks_mm.processing.codebook" in seen
    assert not [m for m in seen if m.startswith("hooks_mm.zoo")], sorted(seen)


def test_importing_the_zoo_loads_no_builder() -> None:
    code = "import sys, hooks_mm.zoo; print(*sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    builders = {f"hooks_mm.zoo.{where.split(':')[0]}" for where in zoo.BUILDERS.values()}
    assert "hooks_mm.zoo" in loaded.split() and not builders & set(loaded.split())
