"""Import cost, checked by what gets imported (not by the clock): ``import hooks_mm`` loads no torch,
public names load their own modules only, and ``hooks-mm --help`` loads nothing but argparse."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import hooks_mm

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["transformers", "transformer_lens", "nnsight", "matplotlib", "sklearn", "pandas", "circuitsvis", "datasets"]


def loaded(code: str, *, importtime: bool = False) -> set[str]:
    """Modules a fresh interpreter holds after ``code`` (from sys.modules; with ``importtime``, from
    ``python -X importtime``'s log, for code that exits, like --help)."""
    if importtime:
        out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        return {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    code += "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def heavy(mods: set[str], names: list[str]) -> list[str]:
    return sorted(n for n in names if n in mods)


def test_import_hooks_mm_loads_no_torch() -> None:
    mods = loaded("import hooks_mm")
    assert heavy(mods, ["torch", "numpy", *HEAVY]) == []
    assert sorted(m for m in mods if m.startswith("hooks_mm")) == ["hooks_mm"]


def test_a_selector_costs_torch_only() -> None:
    mods = loaded("from hooks_mm import Image, Last, ModalityLayout, Selector")
    assert "torch" in mods and heavy(mods, HEAVY) == []


def test_the_model_loads_no_optional_heavy_part() -> None:
    mods = loaded("from hooks_mm import HookedMLLM")
    assert "transformer_lens" in mods  # HookedMLLM is a HookedRootModule
    assert heavy(mods, ["nnsight", "matplotlib", "sklearn", "circuitsvis"]) == []
    mods = loaded("import hooks_mm.sweep, hooks_mm.analysis, hooks_mm.circuits, hooks_mm.interventions, hooks_mm.zoo")
    assert heavy(mods, ["nnsight", "matplotlib", "sklearn", "circuitsvis"]) == []


@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--help"], ["demo", "--help"], ["sweep", "--threads", "0"]])
def test_cli_help_and_option_errors_load_no_torch(argv: list[str]) -> None:
    run = f"import runpy, sys\nsys.argv = ['hooks-mm', *{argv!r}]\ntry:\n    runpy.run_module('hooks_mm.cli')\n"
    mods = loaded(run + "except SystemExit as e:\n    assert e.code == (0 if '--help' in sys.argv else 2)")
    assert heavy(mods, ["torch", "numpy", *HEAVY]) == []
    assert "argparse" in mods and "hooks_mm.cli.options" in mods
    assert not {"hooks_mm.cli.commands", "hooks_mm.model", "hooks_mm.zoo", "hooks_mm.selectors"} & mods


def test_the_import_graph_check_sees_an_eager_import() -> None:
    """The check above can fail: the same log for `import hooks_mm.selectors` names torch."""
    assert "torch" in loaded("import hooks_mm.selectors", importtime=True)
    assert "torch" in loaded("import hooks_mm.selectors")


def test_every_public_name_imports_from_its_module() -> None:
    assert set(hooks_mm.LAZY) == set(hooks_mm.__all__) and len(hooks_mm.__all__) == len(set(hooks_mm.__all__))
    for name in hooks_mm.__all__:
        value = getattr(importlib.import_module(hooks_mm.LAZY[name]), name)
        assert getattr(hooks_mm, name) is value, name
        ns: dict = {}
        exec(f"from hooks_mm import {name}", ns)
        assert ns[name] is value, name
    assert set(hooks_mm.__all__) <= set(dir(hooks_mm))
    exec("from hooks_mm import *", ns := {})
    assert set(hooks_mm.__all__) <= set(ns)


def test_unknown_names_and_submodules() -> None:
    with pytest.raises(AttributeError, match="module 'hooks_mm' has no attribute 'HookedMLLMM'"):
        hooks_mm.HookedMLLMM  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'HookedMLLMM'"):
        exec("from hooks_mm import HookedMLLMM", {})
    exec("from hooks_mm import zoo, sweep", ns := {})  # submodules still import as attributes
    assert ns["zoo"].__name__ == "hooks_mm.zoo" and ns["sweep"].__name__ == "hooks_mm.sweep"
