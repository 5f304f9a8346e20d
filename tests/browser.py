"""Headless Chromium for the browser tests and the README figures, driven by Playwright.

The browser is Debian's ``chromium`` (``/usr/bin/chromium``; ``.ci/run`` installs it) or
``$HOOKS_MM_CHROMIUM``, never a Playwright download. Every request a page makes, in any
frame, is recorded (Playwright's ``request`` event), so a test can check the page stays offline.

Example::

    with Chromium() as browser:
        loaded = browser.open(Path("page.html"), ready="document.querySelector('canvas')")
        loaded.external                              # requested URLs that would leave the machine
        browser.screenshot(".hmm-vis").save("vis.png")  # PIL image of that element
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from PIL import Image
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = (  # besides --headless, which Playwright adds
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
    "--enable-unsafe-swiftshader",  # software WebGL (circuitsvis AttentionPattern draws with it)
)
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def find_chromium() -> str | None:
    """Path of the Chromium binary (``$HOOKS_MM_CHROMIUM``, /usr/bin/chromium, or PATH)."""
    for cand in (
        os.environ.get("HOOKS_MM_CHROMIUM"),
        CHROMIUM,
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


@dataclass
class Loaded:
    """What a page load did: the URLs requested and the uncaught JavaScript errors."""

    url: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def external(self) -> list[str]:
        """Requested URLs that would leave the machine (anything but file/data/blob/about)."""
        return [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)]


class Chromium:
    """One headless Chromium with one page of ``width`` x ``height`` CSS pixels (scale 1)."""

    def __init__(self, binary: str | None = None, width: int = 1100, height: int = 900, timeout: float = 30.0):
        binary = binary or find_chromium()
        if binary is None:
            raise FileNotFoundError(
                "Chromium not found: install it (Debian: apt-get install -y chromium) or set HOOKS_MM_CHROMIUM."
            )
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(executable_path=binary, args=FLAGS, timeout=timeout * 1000)
            self.page = self._browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        except Exception:
            self._playwright.stop()
            raise
        self.page.set_default_timeout(timeout * 1000)
        self._loaded = Loaded("about:blank")
        self.page.context.on("request", lambda request: self._loaded.requests.append(request.url))
        self.page.on("pageerror", lambda error: self._loaded.errors.append(f"{error.name}: {error.message}"[:500]))

    def open(self, url: str | Path, ready: str = "true", settle: float = 0.3) -> Loaded:
        """Navigate (a Path or bare path is a local file), wait for the load event and for JS
        ``ready`` to be truthy, then ``settle`` seconds more; returns what the page did."""
        local = isinstance(url, Path) or not str(url).startswith(("file:", "http:", "https:", "about:", "data:"))
        self._loaded = loaded = Loaded(Path(url).resolve().as_uri() if local else str(url))
        self.page.goto(loaded.url)
        self.page.wait_for_function(f"!!({ready})")
        self.page.wait_for_timeout(settle * 1000)
        return loaded

    def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page (promises awaited)."""
        return self.page.evaluate(expression)

    def screenshot(self, selector: str | None = None, index: int = 0) -> Image.Image:
        """RGB image of the ``index``-th element matching ``selector`` (None: the viewport)."""
        target = self.page if selector is None else self.page.locator(selector).nth(index)
        return Image.open(io.BytesIO(target.screenshot())).convert("RGB")

    def close(self) -> None:
        self._browser.close()
        self._playwright.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
