"""The ``ndif`` tier: tests against the loopback NDIF stack of scripts/ndif-stack.sh.

They skip, saying why, when no stack answers (state file missing or /ping silent). CI runs
``scripts/ndif-stack.sh up`` before the suite and ``down`` after, so they run on every landing.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
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


@pytest.fixture(scope="session")
def ndif() -> dict[str, Any]:
    return stack_info()


def stack(command: str) -> None:
    """``scripts/ndif-stack.sh api-stop|api-start``: stop or restart the real API server."""
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "ndif-stack.sh"), command],
        check=True,
        env={**os.environ, "NDIF_STATE": str(STATE)},
    )
