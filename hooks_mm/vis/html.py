"""Offline HTML for circuitsvis components: one copy of the bundled JS, escaped props.

circuitsvis 1.43.3 loads its JavaScript from a CDN unless told otherwise, inserts some
tokens as raw HTML, puts its props JSON unescaped inside ``<script>`` and never closes its
container ``<div/>``. Here every component is rendered from the package's own
``dist/cdn/iife.js`` (no request leaves the machine), the props are made safe inside a
script, and each component gets its own closed container, so any number of them share one
page.

Example::

    from hooks_mm.vis.html import Vis, page
    v = Vis("ColoredTokens", {"tokens": ["a", "&lt;s&gt;"], "values": [0.1, 0.9]}, title="demo")
    v                      # in Jupyter: renders offline (inlines the JS once per output)
    open("p.html", "w").write(page([v, "<p>any html</p>"], title="my page"))
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import circuitsvis
import numpy as np

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;background:#fff}
.hmm-vis{margin:18px 0;padding:8px 12px;border:1px solid #e3e3e3;border-radius:6px}
.hmm-title{font-weight:600;margin:2px 0 6px 0}
.hmm-note{color:#666;font-size:12px;margin:4px 0}
.hmm-grids{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start;margin-top:8px}
.hmm-panel{display:inline-block;font-size:11px;color:#444}
.hmm-panel-title{margin-bottom:3px}
.hmm-grid{display:grid;gap:1px;background:#ddd;border:1px solid #ddd;position:relative}
.hmm-grid-bg{position:relative}
.hmm-grid-bg img{position:absolute;inset:0;width:100%;height:100%;image-rendering:auto}
.hmm-cell{min-width:4px;min-height:4px}
.hmm-sep{margin-left:3px}
.hmm-bar{height:8px;width:160px;display:inline-block;vertical-align:middle;margin:0 4px}
table.hmm-table{border-collapse:collapse;font-size:13px;margin:8px 0}
table.hmm-table td,table.hmm-table th{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.hmm-table th{background:#f4f4f4}
img.hmm-fig{max-width:100%;display:block;margin:8px 0}
"""


@lru_cache(maxsize=1)
def circuitsvis_js() -> str:
    """circuitsvis's bundled JavaScript (defines the global ``CircuitsVis``), safe inline."""
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    js = path.read_text(encoding="utf-8")
    # no source-map fetch, and no literal "</script" that would end the inline script early
    js = "\n".join(line for line in js.splitlines() if not line.startswith("//# sourceMappingURL"))
    return js.replace("</script", "<\\/script")


def js_literal(value: Any) -> str:
    """JSON for a value placed inside ``<script>``: ``<``, ``>``, ``&`` escaped as unicode.

    A token such as ``</script>`` or ``<!--`` then cannot end or alter the script.
    """
    text = json.dumps(_plain(value), ensure_ascii=False, allow_nan=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _plain(value: Any) -> Any:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = np.nan_to_num(value, nan=0.0).tolist() if value.dtype.kind == "f" else value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return 0.0 if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def escape_token(token: str) -> str:
    """A token as HTML text (for circuitsvis components that insert tokens as HTML)."""
    return html.escape(str(token), quote=True)


@dataclass
class Vis:
    """One circuitsvis component (``element`` = its React name) plus optional HTML below it.

    ``props`` are the component's props as circuitsvis names them (camelCase). ``extra``
    is trusted HTML shown under the component (patch grids, notes).
    """

    element: str
    props: dict[str, Any]
    title: str = ""
    extra: str = ""
    id: str = field(default_factory=lambda: "hmm-" + uuid.uuid4().hex[:12])

    def fragment(self) -> str:
        """HTML for a page that already loaded :func:`circuitsvis_js` (see :func:`page`)."""
        title = f'<div class="hmm-title">{html.escape(self.title)}</div>' if self.title else ""
        return (
            f'<div class="hmm-vis" data-kind="{self.element}">{title}'
            f'<div id="{self.id}" class="hmm-cv"></div>'
            f"<script>CircuitsVis.render({js_literal(self.id)}, CircuitsVis.{self.element}, "
            f"{js_literal(self.props)});</script>{self.extra}</div>"
        )

    def __repr__(self) -> str:
        return f"Vis({self.element}, title={self.title!r}, props {sorted(self.props)})"

    def _repr_html_(self) -> str:
        """Jupyter: a standalone offline fragment (inlines the bundled JS, ~1.3 MB)."""
        return f"<style>{STYLE}</style><script>{circuitsvis_js()}</script>{self.fragment()}"

    def save(self, path: str | Path) -> Path:
        """Write a self-contained offline page with this visualization."""
        path = Path(path)
        path.write_text(page([self], title=self.title or self.element), encoding="utf-8")
        return path


def page(items: Sequence[Vis | str | Any], title: str = "hooks_mm") -> str:
    """One self-contained offline HTML document; the circuitsvis JS is included once.

    ``items`` are :class:`Vis`, HTML strings, or objects with ``_repr_html_`` (e.g. a
    :class:`~hooks_mm.vis.heatmap.PatchHeatmapHTML`).
    """
    body = []
    for item in items:
        if isinstance(item, Vis):
            body.append(item.fragment())
        elif isinstance(item, str):
            body.append(item)
        elif hasattr(item, "_repr_html_"):
            body.append(item._repr_html_())
        else:
            raise TypeError(
                f"cannot put {type(item).__name__} on a page: pass a Vis, an HTML string or an object with _repr_html_"
            )
    needs_js = any(isinstance(item, Vis) for item in items)
    js = f"<script>{circuitsvis_js()}</script>" if needs_js else ""
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style>{js}</head><body>{''.join(body)}</body></html>"
    )
