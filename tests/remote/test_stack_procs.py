"""scripts/ndif_procs.py, which scripts/ndif_stack.py stops the stack with: no stack needed.

A process that ignores SIGTERM and waits for a child (ndif's gunicorn master and its non-daemon
dispatcher), a child re-spawned while stopping, a PID reused after a crash, a port that must be free.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "ndif_procs", Path(__file__).resolve().parents[2] / "scripts" / "ndif_procs.py"
)
procs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(procs)

# A master that ignores SIGTERM, keeps one child alive (restarting it when it dies, like gunicorn's
# workers) and a non-daemon grandchild; it prints the PIDs it started.
MASTER = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def child():
    return subprocess.Popen([sys.executable, "-c",
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"])
c = child()
print(c.pid, flush=True)
while True:
    if c.poll() is not None:
        c = child()
    time.sleep(0.05)
"""


def _master() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", MASTER], stdout=subprocess.PIPE, start_new_session=True, text=True)
    proc.stdout.readline()
    deadline = time.time() + 20
    while len(procs.tree([proc.pid])) < 3 and time.time() < deadline:  # master, child, grandchild
        time.sleep(0.05)
    return proc


def test_stop_ends_a_group_that_ignores_sigterm_and_respawns_children() -> None:
    proc = _master()
    try:
        every = procs.tree([proc.pid])
        assert len(every) >= 3
        t0 = time.time()
        left = procs.stop([procs.record(proc.pid)], grace=1.0, kill_wait=10.0)
        assert left == [], f"left alive: {left}"
        assert not any(procs.alive(p) for p in every)
        assert time.time() - t0 < 8  # SIGTERM ignored: SIGKILL after the 1 s grace, not a hang
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever a failure left behind (the group is the test's own)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def test_a_reused_pid_is_never_signalled() -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        rec = procs.record(victim.pid)
        assert procs.matches(rec)
        stale = [victim.pid, rec[1] - 1]  # the same PID, another start time: a process after a crash
        assert not procs.matches(stale)
        assert procs.stop([stale], grace=0.5, kill_wait=0.5) == []
        assert victim.poll() is None, "a process whose start time differs from the record was signalled"
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()


def test_ports_are_reported_until_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert procs.listening(port)
        assert procs.wait_ports_free([port], timeout=0.3) == [port]
    assert procs.wait_ports_free([port], timeout=5) == []


@pytest.mark.parametrize("pid", [0, 2**22 + 7])
def test_gone_pids(pid: int) -> None:
    assert procs.start_time(pid) is None and not procs.matches([pid, None])
