"""Process and port bookkeeping for scripts/ndif_stack.py (stdlib only, Linux ``/proc``).

A recorded process is ``[pid, start]``: its PID and its start time (``/proc/PID/stat`` field 22, clock
ticks since boot). A PID whose start time no longer matches was reused by another process after a
crash, and is never signalled. ``stop`` ends whole process trees: every member of a recorded
leader's process group (gunicorn's workers and the dispatcher it spawns, which the master waits for
when it gets SIGTERM) and every descendant, re-scanned while it waits (a gunicorn master respawns
workers it sees die), SIGTERM first and SIGKILL for what is left after ``grace`` seconds.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

Record = list  # [pid, start time]


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/PID/stat`` (state, ppid, pgrp, ...), or None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    st = _stat(pid)
    return int(st[19]) if st else None


def record(pid: int) -> Record:
    return [pid, start_time(pid)]


def matches(rec: Record) -> bool:
    """Whether the recorded process still runs (same PID and start time; a zombie counts as gone)."""
    pid, start = (rec, None) if isinstance(rec, int) else rec
    st = _stat(pid)
    return st is not None and st[0] != "Z" and (start is None or int(st[19]) == start)


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, pgrp) of every live process."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) and st[0] != "Z":
            out[int(d.name)] = (int(st[1]), int(st[2]))
    return out


def tree(pids: list[int], groups: list[int] = ()) -> list[int]:
    """``pids``, their descendants, and every member of the process groups ``groups`` (and theirs)."""
    table = _table()
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(p)
    out = {p for p in pids if p in table} | {p for p, (_, g) in table.items() if g in groups}
    todo = list(out)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return sorted(out - {os.getpid()})


def stop(recs: list[Record], extra: list[int] = (), grace: float = 10.0, kill_wait: float = 10.0) -> list[int]:
    """End the recorded processes' trees (and ``extra`` PIDs); returns the PIDs still alive after SIGKILL.

    Only records whose start time matches are used; a recorded process that leads its group (we start
    every one with ``start_new_session``) has its whole group ended. SIGTERM once to each process met,
    then after ``grace`` seconds SIGKILL to all that remain (the set is re-scanned every 0.2 s, so a
    worker respawned meanwhile, or a child re-parented to init, is still caught).
    """
    live = [r[0] for r in recs if matches(r)]
    groups = [p for p in live if (st := _stat(p)) and int(st[2]) == p]
    seen: set[int] = set()

    def current() -> list[int]:
        now = set(tree(live + list(extra), groups)) | {p for p in seen if alive(p)}
        seen.update(now)
        return sorted(now)

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        told: set[int] = set()
        deadline = time.time() + wait
        while (now := current()) and time.time() < deadline:
            for p in now:
                if p not in told or sig == signal.SIGKILL:
                    try:
                        os.kill(p, sig)
                    except ProcessLookupError:
                        pass
                    told.add(p)
            time.sleep(0.2)
    return current()


def listening(port: int, pid: int | str = "self") -> bool:
    """Whether a TCP socket listens on ``port`` in the network namespace of process ``pid``."""
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def wait_ports_free(ports: list[int], pid: int | str = "self", timeout: float = 20.0) -> list[int]:
    """Wait until none of ``ports`` listens (in ``pid``'s namespace); returns those still taken."""
    deadline = time.time() + timeout
    while (taken := [p for p in ports if listening(p, pid)]) and time.time() < deadline:
        time.sleep(0.2)
    return taken
