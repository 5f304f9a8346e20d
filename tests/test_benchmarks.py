"""The benchmark scripts run (tiny sizes, ``--smoke``), so they do not rot; no speed is asserted.

Each script runs as its users run it (``python benchmarks/X.py --smoke``, from the repository
root, in a fresh process). What is asserted: it exits 0, prints every section, and the ways it
compares agree with each other (the script prints the largest difference).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"{name} --smoke failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def max_diff(text: str, label: str) -> float:
    line = next(l for l in text.splitlines() if label in l)
    return max(float(x) for x in re.findall(r"\d\.\de[+-]\d\d", line))


def test_sweep_benchmark_runs() -> None:
    out = run_script("sweep.py")
    for part in (
        "machine:",
        "(a) loop",
        "(b) nnsight",
        "(c) nnsight",
        "whole model, image",
        "whole model, Last()",
        "BEST CASE",
        "(e) attribution",
        "Spearman",
        "cost growth",
    ):
        assert part in out, f"sweep.py --smoke printed no {part!r}:\n{out}"
    # float32 rounding of log-probs ~10 is ~1e-6; a wrong neuron gives ~3e-5 on the smoke model
    assert max_diff(out, "max |way - fast|") < 1e-5


def test_scale_benchmark_runs() -> None:
    out = run_script("scale.py")
    for part in (
        "machine:",
        "run_with_cache, every hook at pos=Last()",
        "plan_memory",
        "(a) loop",
        "(c) nnsight",
        "budget:",
        "attribution:",
        "kernel:",
        "not measured",
    ):
        assert part in out, f"scale.py --smoke printed no {part!r}:\n{out}"
    # float32 rounding of log-probs ~10 is ~1e-6; a wrong neuron gives ~3e-5 on the smoke model
    assert max_diff(out, "max |loop or nnsight - fast|") < 1e-5
