"""The ``ndif`` tier: tests against the loopback NDIF stack of scripts/ndif-stack.sh.

They skip, saying why, when no stack answers (state file missing or /ping silent). CI runs
``scripts/ndif-stack.sh up`` before the suite and ``down`` after, so they run on every landing.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("NDIF_STATE", ROOT / ".ndif-state"))


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        "ndif: runs against the loopback NDIF stack (scripts/ndif-stack.sh up); skips when it does not answer",
    )
    config.addinivalue_line("markers", "sandboxed: an `ndif` test that also runs on the stack's sandboxed path")


def stack_info() -> dict[str, Any]:
    """Host and models of the running stack, or a skip that says what is missing."""
    f = STATE / "stack.json"
    if not f.exists():
        pytest.skip(f"no NDIF stack: {f} not found; start one with `scripts/ndif-stack.sh up`")
    info = json.loads(f.read_text())
    try:
        with urllib.request.urlopen(info["host"] + "/ping", timeout=5) as r:
            r.read()
    except OSError as e:
        pytest.skip(
            f"the NDIF stack at {info['host']} does not answer /ping ({e}); restart it with `scripts/ndif-stack.sh up`"
        )
    return info


PATHS = ("trusted", "sandboxed")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``ndif`` runs each test on the trusted path, and also on the sandboxed one when marked ``sandboxed``.

    A sandboxed request starts a fresh runner process (python, torch, nnsight), 8-20 s on a busy 2-core
    machine, so the tier runs there the tests whose result depends on where the block runs: equality with
    local, a sweep, a server-side error, and the sandbox's own checks (tests/remote/test_sandbox.py).
    """
    if "ndif" in metafunc.fixturenames:
        paths = PATHS if metafunc.definition.get_closest_marker("sandboxed") else PATHS[:1]
        metafunc.parametrize("ndif", paths, indirect=True, scope="session")


@pytest.fixture(scope="session")
def ndif(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The running stack, once per execution path: ``info["path"]`` is ``"trusted"`` or ``"sandboxed"``.

    The stack's API key for that path becomes nnsight's default key for the tests that use it (so every
    request, through hooks_mm or nnsight, carries it): the ``trusted`` key runs a request in the model
    actor's process, the untagged one (a public NDIF user's) through ndif's sandbox runner.
    """
    import nnsight

    info = dict(stack_info(), path=request.param)
    keys = info.get("keys") or {}
    if request.param not in keys:
        pytest.skip(
            f"the NDIF stack in {STATE} has no {request.param!r} API key: restart it with this checkout's "
            "`scripts/ndif-stack.sh down && scripts/ndif-stack.sh up`"
        )
    before = nnsight.CONFIG.API.APIKEY
    nnsight.CONFIG.API.APIKEY = info["api_key"] = keys[request.param]
    try:
        yield info
    finally:
        nnsight.CONFIG.API.APIKEY = before


def stack(command: str) -> None:
    """``scripts/ndif-stack.sh api-stop|api-start``: stop or restart the real API server."""
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "ndif-stack.sh"), command],
        check=True,
        env={**os.environ, "NDIF_STATE": str(STATE)},
    )
