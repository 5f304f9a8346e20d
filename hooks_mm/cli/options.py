"""The ``hooks-mm`` options' values: parsed and checked, each error one line naming the fix.

Only the standard library at module level, so ``hooks-mm --help`` loads no torch; what needs a
model (layer counts, selectors, metrics) is checked in :mod:`hooks_mm.cli.expressions` and
:mod:`hooks_mm.cli.commands` once one is loaded.

Example::

    parse_indices("0,2,5-7", "--layers")      # [0, 2, 5, 6, 7]
    Neurons.parse("16").resolve(384)           # the first 16 neurons: [0, ..., 15]
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "toy-llava"  # = hooks_mm.zoo.DEFAULT_MODEL (a test checks), here without importing the zoo
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")  # floating dtypes HookedMLLM.from_pretrained takes
MAX_AUTO_THREADS = 4  # small models gain little beyond 4 threads; more contend with other processes
# the files a sweep writes into --out (and --force deletes; nothing else there is touched)
RUN_FILES = ("checkpoint.pt", "checkpoint.pt.tmp", "results.csv", "meta.json", "report.html")


class OptionError(ValueError):
    """A bad option value; the message names the option, what is wrong and the fix."""


def parse_indices(text: str, what: str) -> list[int]:
    """``"0,2,5-7"`` -> ``[0, 2, 5, 6, 7]``: non-negative ints and inclusive ranges ``a-b``, each once."""
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            which = f"{part!r} is " if part != text else ""
            raise OptionError(
                f"{what} {text!r}: {which}not an index or a range: give non-negative ints and inclusive "
                "ranges separated by commas, e.g. 0,2,5-7."
            )
        a, b = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if b < a:
            raise OptionError(f"{what} {text!r}: the range {part} runs backwards: write it as {b}-{a}.")
        out += range(a, b + 1)
    twice = sorted({i for i in out if out.count(i) > 1})
    if twice:
        raise OptionError(f"{what} {text!r} names {', '.join(map(str, twice))} more than once: name each once.")
    return out


def check_indices(values: list[int], n: int, what: str, of: str) -> list[int]:
    """``values`` when all are below ``n``; else an error naming the valid range ``0..n-1`` of ``of``."""
    bad = [i for i in values if i >= n]
    if bad:
        raise OptionError(
            f"{what}: {', '.join(map(str, bad))} out of range: {of} has {n} (0-{n - 1}); pass indices up to {n - 1}."
        )
    return values


def layers_arg(text: str) -> list[int]:
    """argparse ``type`` of one ``--layers`` word."""
    try:
        return parse_indices(text, "--layers")
    except OptionError as e:
        hint = " (MODEL goes before the options)" if re.search(r"[a-zA-Z]", text) else ""
        raise argparse.ArgumentTypeError(str(e).removeprefix("--layers ") + hint) from None


@dataclass(frozen=True)
class Neurons:
    """``--neurons``: the first ``count`` neurons of each layer (``"16"``), or explicit ``indices``
    (``"3,7,10-12"``; one neuron alone: ``"5-5"``)."""

    count: int | None = None
    indices: tuple[int, ...] | None = None

    @staticmethod
    def parse(text: str) -> Neurons:
        text = str(text).strip()
        if text.isdigit():
            if int(text) < 1:
                raise OptionError(
                    "--neurons 0: give a positive count (the first N neurons) or indices, e.g. 3,7,10-12."
                )
            return Neurons(count=int(text))
        return Neurons(indices=tuple(parse_indices(text, "--neurons")))

    def resolve(self, d_mlp: int) -> list[int]:
        """The neuron indices, checked against the MLP width ``d_mlp``."""
        if self.count is not None:
            if self.count > d_mlp:
                raise OptionError(
                    f"--neurons {self.count}: a layer has {d_mlp} MLP neurons: pass a count up to {d_mlp}, or omit "
                    "--neurons for all of them."
                )
            return list(range(self.count))
        return check_indices(list(self.indices or ()), d_mlp, "--neurons", "an MLP layer's width (d_mlp)")


def neurons_arg(text: str) -> Neurons:
    """argparse ``type`` of ``--neurons``."""
    try:
        return Neurons.parse(text)
    except OptionError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--neurons ")) from None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_arg(text: str) -> int | None:
    """argparse ``type`` of ``--threads``: a positive count up to the usable CPUs, or ``auto`` (None)."""
    if text == "auto":
        return None
    cpus = usable_cpus()
    if not text.isdigit() or not 1 <= int(text) <= cpus:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a thread count from 1 to {cpus} (the CPUs this process may use), or auto."
        )
    return int(text)


def auto_threads() -> tuple[int, str]:
    """The thread count ``--threads auto`` picks, and why.

    ``$OMP_NUM_THREADS`` when set; else the usable CPUs minus the load average (what other
    processes keep busy), at least 1 and at most :data:`MAX_AUTO_THREADS`: on a loaded machine
    torch's default (every core) spins threads that wait for each other, a forward many times
    slower than on 1 thread.
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env), "OMP_NUM_THREADS"
    cpus = usable_cpus()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        load = 0.0
    n = max(1, min(MAX_AUTO_THREADS, cpus, round(cpus - load)))
    return n, f"auto: {cpus} CPUs, load {load:.1f}"


def check_run_dir(out: str, force: bool, resume: bool) -> Path:
    """``--out`` as a run directory a sweep may write: an error when it already holds a run and
    neither ``--force`` (overwrite) nor ``--resume`` (continue from its checkpoint) is given."""
    run = Path(out)
    if run.exists() and not run.is_dir():
        raise OptionError(f"--out {out} is a file, not a run directory: pass a directory path.")
    held = [f for f in RUN_FILES if (run / f).exists()]
    if resume and not (run / "checkpoint.pt").exists():
        fix = "pass --force to start it over" if held else "drop --resume to start a new run there"
        raise OptionError(f"--resume: {out} holds no checkpoint (checkpoint.pt) to continue from: {fix}.")
    if held and not (force or resume):
        raise OptionError(
            f"--out {out} already holds a run ({', '.join(held)}): pass --resume to continue from its checkpoint, "
            "--force to overwrite it, or another --out."
        )
    return run


def clear_run_dir(run: Path) -> list[str]:
    """Delete the files a sweep writes (:data:`RUN_FILES`) from ``run``; nothing else. Returns their names."""
    gone = [f for f in RUN_FILES if (run / f).exists()]
    for f in gone:
        (run / f).unlink()
    return gone
