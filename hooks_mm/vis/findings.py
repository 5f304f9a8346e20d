"""Findings drawn with their controls beside them (issue 19): the effect as a point with its 95 % interval,
the control as its random draws (one dot per draw) with their central 95 % range, or the null value as a
line; and the findings' curves (:mod:`hooks_mm.analysis.findings.curves`) with a band for every interval.

Both return matplotlib Figures (no pyplot state); pass ``ax=`` to draw into an Axes of your own.

Example::

    from hooks_mm.analysis.findings import neuron_ablation
    from hooks_mm.analysis.findings.curves import alignment_by_layer
    from hooks_mm.vis.findings import curve_figure, finding_figure
    finding_figure(neuron_ablation(model, selector="top5", n=100, draws=20)).savefig("ablation.png")
    curve_figure(alignment_by_layer(model, n=100), "layer", "cross", controls=("image_image", "text_text"))
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from hooks_mm.analysis.findings.common import Finding

EFFECT_AGREES, EFFECT_DISAGREES, CONTROL = "#1a9850", "#d73027", "#4d4d4d"
SLOT = 0.4  # half the width of one finding's slot on the x axis


def _check_ax(ax: Any) -> None:
    from matplotlib.axes import Axes

    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"ax={type(ax).__name__}: pass a matplotlib Axes (fig.subplots()) or None for a new figure.")


def _as_findings(findings: Any) -> list[Finding]:
    items = [findings] if isinstance(findings, Finding) else findings
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(
            f"finding_figure draws a Finding or a list of them, not {type(findings).__name__}: pass the result of "
            "e.g. neuron_ablation(...) or findings() (hooks_mm.analysis.findings)."
        )
    items = list(items)
    if not items:
        raise ValueError("finding_figure got an empty list: pass at least one Finding.")
    for i, f in enumerate(items):
        if not isinstance(f, Finding):
            raise TypeError(
                f"item {i} is a {type(f).__name__}, not a Finding: pass the results of the functions of "
                "hooks_mm.analysis.findings (a Verdict or an Interval alone has no name or control)."
            )
        v = f.verdict
        if (v.control is None) == (v.null is None):
            raise ValueError(f"finding {f.name!r}: its verdict needs exactly one of a control or a null value.")
        numbers = [v.effect.value, v.effect.lo, v.effect.hi] + ([v.null] if v.null is not None else [])
        if not all(math.isfinite(x) for x in numbers):
            raise ValueError(f"finding {f.name!r}: its effect or null is not finite ({v.effect}); nothing to draw.")
    return items


def _draw(ax: Any, f: Finding, x: float) -> None:
    """Effect at ``x - 0.18``, control at ``x + 0.18`` (or the null line across the slot)."""
    v = f.verdict
    e = v.effect
    colour = EFFECT_AGREES if v.agrees else EFFECT_DISAGREES
    ax.vlines(x - 0.18, e.lo, e.hi, colors=colour, lw=2.5, label=f"effect {e.level:.0%} interval")
    ax.plot([x - 0.18], [e.value], "o", color=colour, ms=7, label="effect")
    if v.control is not None:
        draws = v.control.draws.double().numpy()
        jitter = np.random.default_rng(0).uniform(-0.06, 0.06, len(draws))
        ax.scatter(x + 0.18 + jitter, draws, s=10, color=CONTROL, alpha=0.6, label=f"control ({len(draws)} draws)")
        lo, hi = v.control.interval(e.level)
        ax.vlines(x + 0.18, lo, hi, colors=CONTROL, lw=8, alpha=0.25, label=f"control {e.level:.0%} range")
        bound = hi if v.expect == "greater" else lo
        ax.hlines(bound, x - SLOT, x + SLOT, colors=CONTROL, lw=0.8, linestyles=":", label="control bound")
    else:
        ax.hlines(v.null, x - SLOT, x + SLOT, colors=CONTROL, lw=1.0, linestyles="--", label=f"null {v.null:.3g}")


def _title(f: Finding) -> str:
    v = f.verdict
    word = "agrees" if v.agrees else "does not agree"
    pct = f", effect at pct {v.percentile:.0f}" if v.control is not None else ""
    return "\n".join([*textwrap.wrap(f.name, 34), f"{f.model}: {word}{pct}"])


def finding_figure(findings: Finding | Sequence[Finding], ax: Any = None):
    """Each finding's effect (a point and its 95 % interval, green when the verdict agrees, red when not)
    beside its control: the random draws, one dot each, with their central 95 % range as a grey bar and
    the bound the effect must pass as a dotted line; or the null value as a dashed line.

    Without ``ax``: a new Figure with one panel per finding (each on its own scale, titled with the verdict);
    with ``ax``: every finding side by side on that Axes (give findings measured in the same units).

    Example::

        fs = [neuron_ablation(model, selector=s, n=100, draws=20) for s in ("lape", "top5")]
        finding_figure(fs).savefig("ablation.png")
    """
    _check_ax(ax)
    items = _as_findings(findings)
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(0.6 + 2.6 * len(items), 3.6), layout="constrained")
        axes = list(np.atleast_1d(fig.subplots(1, len(items))))
        for a, f in zip(axes, items):
            _draw(a, f, 0.0)
            _finish(a, [f], f.expected)
            a.set_title(_title(f), fontsize=8)
        return fig
    for i, f in enumerate(items):
        _draw(ax, f, float(i))
    _finish(ax, items, items[0].expected if len(items) == 1 else "effect")
    if len(items) == 1:
        ax.set_title(_title(items[0]), fontsize=8)
    return ax.figure


def _finish(ax: Any, items: list[Finding], ylabel: str) -> None:
    ticks, labels = [], []
    for i, f in enumerate(items):
        ticks += [i - 0.18, i + 0.18]
        control = "random" if f.verdict.control is not None else "null"
        labels += ["effect" if len(items) == 1 else f"{i}: effect", control]
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_xlim(-0.5, len(items) - 0.5)
    ax.set_ylabel("\n".join(textwrap.wrap(ylabel, 30)), fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def _column(df: pd.DataFrame, name: Any, role: str) -> np.ndarray:
    if name not in df.columns:
        raise ValueError(f"{role}={name!r} is not a column of the table (it has {list(df.columns)}): pick one of them.")
    return df[name].to_numpy()


def _band(df: pd.DataFrame, name: str, role: str) -> tuple[np.ndarray, ...]:
    _column(df, name, role)
    missing = [c for c in (f"{name}_lo", f"{name}_hi") if c not in df.columns]
    if missing:
        raise ValueError(
            f"{role}={name!r} has no interval (no column {', '.join(missing)}): draw a column that has its _lo / _hi "
            "columns, as every table of hooks_mm.analysis.findings.curves has."
        )
    cols = [df[c].to_numpy() for c in (name, f"{name}_lo", f"{name}_hi")]
    try:
        y, lo, hi = (np.asarray(c, dtype=float) for c in cols)
    except (TypeError, ValueError):
        raise ValueError(f"{role}={name!r}: its value and _lo / _hi columns must be numbers.") from None
    if not (np.isfinite(y).all() and np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise ValueError(f"{role}={name!r}: NaN or inf in {name}, {name}_lo or {name}_hi: drop those rows first.")
    return y, lo, hi


def curve_figure(
    df: pd.DataFrame,
    x: str,
    y: str | Sequence[str],
    *,
    controls: Sequence[str] = (),
    by: str | None = None,
    null: float | None = None,
    ax: Any = None,
    title: str | None = None,
    ylabel: str | None = None,
):
    """A curve per column of ``y`` (and per value of ``by``, e.g. ``"k"``) over ``x``, each with its
    interval as a band (columns ``{y}_lo`` / ``{y}_hi``, as every table of
    :mod:`hooks_mm.analysis.findings.curves` has); ``controls``: columns drawn dashed with their bands
    (e.g. the image-image and text-text cosines); ``null``: a horizontal reference line. A non-numeric
    ``x`` (e.g. ``"site"``) is drawn in the table's order with its values as tick labels.

    Example::

        curve_figure(erasure_by_depth(model, n=100, ks=(64, 1)), "site", "gap", by="k", null=0.0)
        curve_figure(alignment_by_layer(model, n=100), "layer", "cross", controls=("image_image", "text_text"))
    """
    _check_ax(ax)
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"curve_figure draws a pandas DataFrame (a curves table), not {type(df).__name__}.")
    if df.empty:
        raise ValueError("curve_figure got an empty table: nothing to draw.")
    ys = [y] if isinstance(y, str) else list(y)
    if not ys:
        raise ValueError("y=[]: name at least one column to draw (e.g. y='gap').")
    xs = _column(df, x, "x")
    numeric = pd.api.types.is_numeric_dtype(df[x])
    order = list(dict.fromkeys(xs.tolist()))
    pos = np.asarray(xs, dtype=float) if numeric else np.array([order.index(v) for v in xs.tolist()], dtype=float)
    groups = [(None, np.ones(len(df), dtype=bool))]
    if by is not None:
        keys = _column(df, by, "by")
        groups = [(k, keys == k) for k in dict.fromkeys(keys.tolist())]
    for k, rows in groups:
        if len(set(pos[rows].tolist())) != int(rows.sum()):
            what = f"by={by!r} = {k!r}" if by is not None else "the table"
            raise ValueError(f"x={x!r} repeats within one curve ({what}): pass by= the column that tells them apart.")
    if null is not None and (isinstance(null, bool) or not isinstance(null, (int, float)) or not math.isfinite(null)):
        raise ValueError(f"null={null!r}: give a finite number (e.g. 0.0) or None.")
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.8, 3.4), layout="constrained")
        ax = fig.subplots()
    series = [(name, False) for name in ys] + [(name, True) for name in controls]
    bands = {name: _band(df, name, "controls" if control else "y") for name, control in series}
    for k, rows in groups:
        order_rows = np.argsort(pos[rows], kind="stable")
        for name, control in series:
            val, lo, hi = (a[rows][order_rows] for a in bands[name])
            px = pos[rows][order_rows]
            label = (f"control: {name}" if control else name) + (f" ({by}={k})" if by is not None else "")
            (line,) = ax.plot(px, val, "--" if control else "-", marker="o", ms=3, lw=1.2, label=label)
            ax.fill_between(px, lo, hi, color=line.get_color(), alpha=0.15 if control else 0.25, lw=0)
    if null is not None:
        ax.axhline(null, color="k", lw=0.7, ls=":", label=f"null {null:.3g}")
    if not numeric:
        ax.set_xticks(range(len(order)), [str(v) for v in order], rotation=30, ha="right", fontsize=7)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or (ys[0] if len(ys) == 1 else "value"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return ax.figure
