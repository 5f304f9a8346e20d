"""Import cost: each statement in a fresh interpreter on 1 thread, the median of ``--reps`` runs,
beside ``import torch`` measured the same way (the issue's targets: ``import hooks_mm`` <= 2 s over
``import torch``, ``hooks-mm --help`` <= 1 s). Runs are interleaved so machine noise hits all alike;
the load average is printed (these are wall times: on a busy machine every figure grows).

    python benchmarks/import_time.py [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = "import runpy, sys; sys.argv = ['hooks-mm', {}]; runpy.run_module('hooks_mm.cli', run_name='__main__')"
STATEMENTS = {
    "import torch": "import torch",
    "import hooks_mm": "import hooks_mm",
    "from hooks_mm import Image, Last": "from hooks_mm import Image, Last",
    "from hooks_mm import HookedMLLM": "from hooks_mm import HookedMLLM",
    "hooks-mm --help": CLI.format("'--help'"),
    "hooks-mm sweep --help": CLI.format("'sweep', '--help'"),
}


def wall(code: str) -> float:
    """Seconds for a fresh ``python -c code`` (interpreter start included)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=False, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    reps = parser.parse_args().reps
    times: dict[str, list[float]] = {k: [] for k in STATEMENTS}
    bare = [wall("pass") for _ in range(3)]
    for _ in range(reps):
        for name, code in STATEMENTS.items():
            times[name].append(wall(code))
    python = statistics.median(bare)
    torch_s = statistics.median(times["import torch"]) - python
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"python start {python:.2f} s; each figure below is the median of {reps} without it")
    print(f"{'':34} {'seconds':>8} {'over torch':>11}")
    for name in STATEMENTS:
        s = statistics.median(times[name]) - python
        print(f"{name:34} {s:8.2f} {s - torch_s:+11.2f}")


if __name__ == "__main__":
    main()
