"""Progress bars for long calls (sweeps, fits, analyses over datasets, EAP steps, faithfulness curves).

Every long call takes ``progress=``: ``True`` shows a bar, ``False`` hides it, ``None`` (the default) decides
by itself. The global switch :func:`set_progress` (or the environment variable ``HOOKS_MM_PROGRESS=0|1``)
overrides the automatic choice. Automatic: a bar in a Jupyter kernel or when stderr is a terminal, none when
stderr is a pipe or a log file (CI, ``hooks-mm ... 2> log``) or under pytest, so tests and logs stay free of
bar noise. Bars are tqdm's (a widget in Jupyter with ipywidgets, text elsewhere) and are removed when done.

Example::

    import hooks_mm.progress
    hooks_mm.progress.set_progress(False)                 # no bar anywhere from now on
    NeuronMeans.fit(model, batches, progress=True)       # this call shows one anyway
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

ENV = "HOOKS_MM_PROGRESS"
_switch: dict[str, bool | None] = {"on": None}  # set_progress's value; None: automatic


def set_progress(enabled: bool | None) -> None:
    """Show (``True``) or hide (``False``) progress bars of every call that is not given ``progress=``;
    ``None`` goes back to the automatic choice (module docstring)."""
    _switch["on"] = check_progress(enabled, "set_progress")


def check_progress(progress: Any, where: str = "progress") -> bool | None:
    """``progress`` if it is True, False or None; a TypeError naming the fix otherwise."""
    if progress is None or isinstance(progress, bool):
        return progress
    raise TypeError(f"{where}: progress={progress!r}: pass True (show a bar), False (hide it) or None (automatic).")


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _tqdm_class() -> Any:
    """tqdm's notebook widget in a notebook with ipywidgets, its text bar otherwise (``tqdm.auto`` would warn
    "IProgress not found" in a notebook without ipywidgets; the text bar shows there as well)."""
    if _in_notebook():
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm

            return tqdm
        except ImportError:
            pass
    from tqdm.std import tqdm

    return tqdm


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether a call given ``progress`` shows a bar: the argument, else :func:`set_progress`, else
    ``$HOOKS_MM_PROGRESS``, else automatic (a notebook or a terminal, never under pytest)."""
    progress = check_progress(progress)
    if progress is not None:
        return progress
    if _switch["on"] is not None:
        return bool(_switch["on"])
    env = os.environ.get(ENV, "").strip().lower()
    if env in ("0", "1", "false", "true", "off", "on"):
        return env in ("1", "true", "on")
    if "PYTEST_CURRENT_TEST" in os.environ:
        return False
    if _in_notebook():
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    progress: bool | None = None,
    initial: int = 0,
) -> Any:
    """A tqdm bar over ``iterable`` (or a manual one: ``total`` and ``.update(n)``), shown as
    :func:`progress_enabled` says; ``total`` defaults to ``len(iterable)`` when it has one.

    Example::

        for inputs in progress_bar(batches, desc="NeuronMeans.fit", unit="batch", progress=progress):
            ...
    """
    tqdm = _tqdm_class()
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        initial=initial,
        disable=not progress_enabled(progress),
        leave=False,
        dynamic_ncols=True,
    )
