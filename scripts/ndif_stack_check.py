"""Check that scripts/ndif-stack.sh stops what it starts: up, api-stop, api-start, down, down (and a crash).

Run with the stack's interpreter and the same environment as ``scripts/ndif-stack.sh``::

    NDIF_STATE=$PWD/.ndif-state $NDIF_VENV/bin/python scripts/ndif_stack_check.py            # up first
    NDIF_STATE=$PWD/.ndif-state $NDIF_VENV/bin/python scripts/ndif_stack_check.py --running  # a stack that is up
    ... scripts/ndif_stack_check.py --crash   # then: SIGKILL the whole stack, `up` again over the stale state, down

After ``api-stop``: no process of the API's group is left, and nothing listens on the API port inside
the stack's namespace. After ``down``: no process the stack started (by PID and start time, their
groups and descendants, everything in its namespace) is left, the host ports (API, S3) are free, and
a second ``down`` succeeds and stops nothing. Exits non-zero naming what is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ndif_procs as procs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("NDIF_STATE", ROOT / ".ndif-state")).resolve()


def stack(cmd: str) -> str:
    t0 = time.time()
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ndif-stack.sh"), cmd], capture_output=True, text=True, cwd=ROOT, check=False
    )
    print(f"  {cmd}: rc {out.returncode} in {time.time() - t0:.1f} s: {out.stdout.strip().splitlines()[-1:]}")
    if out.returncode != 0:
        raise SystemExit(f"`ndif-stack.sh {cmd}` failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out.stdout


def snapshot() -> tuple[dict, list[list[int]], dict]:
    """(recorded PIDs, [pid, start] of every live process of the stack, ports.json)."""
    pids = json.loads((STATE / "pids.json").read_text())
    ports = json.loads((STATE / "ports.json").read_text())
    recs = [r for group in pids.values() for r in group]
    live = [r[0] for r in recs if procs.matches(r)]
    groups = [r[0] for r in recs if procs.matches(r)]
    holder = pids["netns"][0]
    ns = os.readlink(f"/proc/{holder[0]}/ns/net")
    in_ns = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _ns(d) == ns]
    every = sorted(set(procs.tree(live + in_ns, groups)))
    return pids, [procs.record(p) for p in every], ports


def _ns(d: Path) -> str | None:
    try:
        return os.readlink(d / "ns" / "net")
    except OSError:
        return None


def ping(host: str) -> bool:
    try:
        with urllib.request.urlopen(host + "/ping", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def check_down(every: list[list[int]], ports: dict) -> None:
    left = [r[0] for r in every if procs.matches(r)]
    taken = [p for p in (ports["NDIF_API_PORT"], ports["NDIF_S3_PORT"]) if procs.listening(p)]
    assert not left, f"processes of the stack still run after down: {left}"
    assert not taken, f"host ports still listen after down: {taken}"
    assert not (STATE / "pids.json").exists(), "pids.json kept after a clean down"
    print(f"  ok: none of {len(every)} processes remains; ports {sorted(ports.values())} free")


def main() -> None:
    running, crash = "--running" in sys.argv, "--crash" in sys.argv
    if not running:
        stack("up")
    pids, every, ports = snapshot()
    host = json.loads((STATE / "stack.json").read_text())["host"]
    print(f"stack: {len(every)} processes, host {host}")
    api_leaders = [r[0] for r in pids["api"]]
    api_pids = set(procs.tree(api_leaders, api_leaders))  # master, workers, dispatcher
    api = [r for r in every if r[0] in api_pids]
    holder = pids["netns"][0][0]
    stack("api-stop")
    left = [r[0] for r in api if procs.matches(r)]
    assert not left and not ping(host), f"API processes {left} left after api-stop (or it still answers)"
    assert not procs.listening(ports["NDIF_API_PORT"], holder), "the API port still listens in the namespace"
    print(f"  ok: the API's {len(api)} processes are gone and its port is free")
    stack("api-start")
    assert ping(host), "the API does not answer after api-start"
    print("  ok: the API answers again")
    _, every, _ = snapshot()
    stack("down")
    check_down(every, ports)
    out = stack("down")
    assert "nothing to stop" in out, out
    print("  ok: a second down stops nothing")
    if crash:
        stack("up")
        _, every, ports = snapshot()
        for r in every:  # a crash: everything dies at once, pids.json stays behind
            if procs.matches(r):
                os.kill(r[0], signal.SIGKILL)
        time.sleep(1)
        stack("up")  # over the stale records
        assert ping(json.loads((STATE / "stack.json").read_text())["host"])
        _, every, ports = snapshot()
        stack("down")
        check_down(every, ports)
        print("  ok: up after a crash cleaned the stale records and came up")
    print("stack lifecycle check passed")


if __name__ == "__main__":
    main()
