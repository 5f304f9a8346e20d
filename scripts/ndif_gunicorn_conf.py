"""ndif 0.1.2's gunicorn config, plus an ``on_exit`` that ends the queue dispatcher.

ndif's ``on_starting`` spawns the dispatcher as a non-daemon ``multiprocessing`` child and never
stops it, so a gunicorn master given SIGTERM waits for it forever (multiprocessing joins non-daemon
children at exit). Here ``on_starting`` keeps the handle and ``on_exit`` terminates it (SIGKILL after
5 s). scripts/ndif_stack.py still stops the API's whole process group, escalating to SIGKILL.

Loaded via ``gunicorn --config python:ndif_gunicorn_conf`` with scripts/ on ``PYTHONPATH``.
"""

from multiprocessing import get_context

from ndif.services.api import gunicorn_conf as _ndif
from ndif.services.api.gunicorn_conf import bind, post_fork, timeout, worker_class, workers  # noqa: F401

_DISPATCHERS: list = []


def on_starting(server):
    """ndif's dispatcher, spawned (not forked) as ndif does, with its handle kept for ``on_exit``."""
    proc = get_context("spawn").Process(target=_ndif._run_dispatcher, daemon=False, name="DispatcherProcess")
    proc.start()
    _DISPATCHERS.append(proc)


def on_exit(server):
    for proc in _DISPATCHERS:
        proc.terminate()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
