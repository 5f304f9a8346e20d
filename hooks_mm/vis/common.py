"""Small helpers shared by the vis modules: arrays, token strings, colours, PNG data URIs."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np


def to_numpy(x: Any) -> np.ndarray:
    """Tensor / array / list -> numpy (float tensors as float64, on CPU, detached)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.double() if x.is_floating_point() else x
        return x.numpy()
    return np.asarray(x)


def str_tokens(model: Any, inputs: dict[str, Any], row: int = 0) -> list[str]:
    """One string per position of ``inputs["input_ids"][row]`` (special tokens kept).

    ``model`` is a :class:`~hooks_mm.HookedMLLM` (its processor's tokenizer is used), a
    processor or a tokenizer.

    Example::

        tokens = str_tokens(model, inputs, row=0)   # ['<s>', 'USER', ':', '<image>', ...]
    """
    proc = getattr(model, "processor", model)
    tok = getattr(proc, "tokenizer", proc)
    if tok is None or not hasattr(tok, "batch_decode"):
        raise ValueError(
            "str_tokens needs a tokenizer: load the model with its processor, or pass token strings yourself."
        )
    ids = to_numpy(inputs["input_ids"][row]).tolist()
    return tok.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)


def color_limits(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> tuple[float, float, str]:
    """(vmin, vmax, cmap): symmetric ``RdBu_r`` for signed values, ``viridis`` otherwise."""
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if lo < 0 < hi and vmin is None and vmax is None:
        m = max(-lo, hi)
        return -m, m, "RdBu_r"
    lo = lo if vmin is None else vmin
    hi = hi if vmax is None else vmax
    if hi <= lo:
        hi = lo + 1e-9
    return lo, hi, "viridis"


def css_colors(values: np.ndarray, vmin: float, vmax: float, cmap: str, alpha: float = 1.0) -> list[str]:
    """CSS rgba() colours of ``values`` under a matplotlib colormap (NaN -> transparent)."""
    from matplotlib import colormaps

    cm = colormaps[cmap]
    out = []
    for v in np.asarray(values, dtype=float).ravel():
        if not np.isfinite(v):
            out.append("transparent")
            continue
        r, g, b, _ = cm(float(np.clip((v - vmin) / (vmax - vmin), 0, 1)))
        out.append(f"rgba({round(r * 255)},{round(g * 255)},{round(b * 255)},{alpha:g})")
    return out


def png_data_uri(obj: Any, dpi: int = 110) -> str:
    """``data:image/png;base64,...`` of a matplotlib Figure, a PIL image or PNG bytes."""
    if isinstance(obj, (bytes, bytearray)):
        data = bytes(obj)
    else:
        buf = io.BytesIO()
        if hasattr(obj, "savefig"):
            obj.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        else:
            obj.convert("RGB").save(buf, format="PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
