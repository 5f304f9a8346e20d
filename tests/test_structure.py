"""The package's structure: no import cycle, no private HookedMLLM use outside hooks_mm/model, small files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "hooks_mm"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere (function-level and TYPE_CHECKING too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, ignoring a package's __init__ importing its own children."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in graph[v]:
            if w.startswith(v + "."):  # a package re-exporting its own submodules
                continue
            if state.get(w) == 1:
                return stack[stack.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        stack.pop()
        return None

    for v in graph:
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_cycle_inside_hooks_mm() -> None:
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"p": {"p.x", "p.y"}, "p.x": {"p.y"}, "p.y": {"p.x"}}) == ["p.x", "p.y", "p.x"]
    assert _cycle({"p": {"p.x"}, "p.x": set()}) is None  # a package re-exporting its children
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_hooked_mllm_use_outside_model() -> None:
    private = re.compile(r"\b(?:model|self\.model|hm|m)\._[a-z]\w*\b(?!__)")
    hits = []
    for name, path in _modules().items():
        if name.startswith("hooks_mm.model"):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if private.search(line) and "._module" not in line:
                hits.append(f"{path.relative_to(PKG.parent)}:{i}: {line.strip()}")
    assert not hits, "private HookedMLLM attributes used outside hooks_mm/model:\n" + "\n".join(hits)


def test_no_file_over_500_lines() -> None:
    long = {
        str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long, f"split these modules: {long}"
