"""Headless Chromium over the DevTools protocol (``--remote-debugging-pipe``, stdlib only).

Used by the browser tests and to screenshot visualizations: load a page, record every
network request it makes (``Network.requestWillBeSent``, the DevTools request listener),
wait until a condition holds, and capture an element's region as a PIL image.

Example::

    with Chromium() as browser:
        loaded = browser.open("file:///tmp/page.html", ready="document.querySelector('canvas')")
        loaded.requests            # every URL the page asked for
        png = browser.screenshot(".hmm-vis")     # PIL image of that element
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
    "--enable-unsafe-swiftshader",  # software WebGL (circuitsvis AttentionPattern draws with it)
)
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def find_chromium() -> str | None:
    """Path of the Chromium binary (``$HOOKS_MM_CHROMIUM``, /usr/bin/chromium, or PATH)."""
    for cand in (os.environ.get("HOOKS_MM_CHROMIUM"), CHROMIUM, shutil.which("chromium"), shutil.which("chromium-browser")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


@dataclass
class Loaded:
    """What a page load did: the URLs requested and the console errors."""

    url: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def external(self) -> list[str]:
        """Requested URLs that would leave the machine (anything but file/data/blob/about)."""
        return [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)]


class Chromium:
    """One headless Chromium process driven through the DevTools protocol over a pipe."""

    def __init__(self, binary: str | None = None, width: int = 1100, height: int = 900, timeout: float = 30.0):
        binary = binary or find_chromium()
        if binary is None:
            raise FileNotFoundError("Chromium not found: install it (Debian: apt-get install -y chromium) or set HOOKS_MM_CHROMIUM.")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="hooks_mm_chromium_")
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4: the child's pipe ends go
        # to fds >= 10 and a bash exec maps them onto 3 / 4 (no preexec_fn, safe with threads)
        child_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_chrome_r), os.close(from_chrome_w)
        redirect = f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
        args = [binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}", "about:blank"]
        try:
            self._proc = subprocess.Popen(["/bin/bash", "-c", redirect, *args], pass_fds=(child_r, child_w),
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            os.close(self._r), os.close(self._w)
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        finally:
            os.close(child_r), os.close(child_w)
        self._buf, self._id, self._events = b"", 0, []
        self._session = None
        try:
            target = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
            self._session = self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
            for domain in ("Page", "Network", "Runtime"):
                self.send(f"{domain}.enable")
            self._width, self._height = width, height
            self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except Exception:
            self.close()
            raise

    # -- protocol --------------------------------------------------------------------
    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self._session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self._session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._recv(self.timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def _recv(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self._events.append(self._recv(max(0.01, end - time.monotonic())))
            except TimeoutError:
                return

    def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page."""
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"JavaScript error: {res['exceptionDetails'].get('text')} in {expression[:80]!r}")
        return res["result"].get("value")

    # -- pages -----------------------------------------------------------------------
    def open(self, url: str | Path, ready: str = "true", settle: float = 0.3) -> Loaded:
        """Navigate, wait for the load event and for JS ``ready`` to be truthy, then
        ``settle`` seconds more; returns the requests the page made meanwhile."""
        local = isinstance(url, Path) or not str(url).startswith(("file:", "http:", "https:", "about:", "data:"))
        url = Path(url).resolve().as_uri() if local else str(url)
        self._events.clear()
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + self.timeout
        loaded = False
        while not loaded:
            loaded = any(e.get("method") == "Page.loadEventFired" for e in self._events)
            if not loaded:
                self._drain(0.05)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading")
        while not self.evaluate(f"!!({ready})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: condition {ready!r} never held")
            self._drain(0.05)
        self._drain(settle)
        out = Loaded(url)
        for e in self._events:
            if e.get("method") == "Network.requestWillBeSent":
                out.requests.append(e["params"]["request"]["url"])
            elif e.get("method") == "Runtime.exceptionThrown":
                out.errors.append(json.dumps(e["params"]["exceptionDetails"])[:500])
        return out

    def screenshot(self, selector: str | None = None, index: int = 0) -> Any:
        """PIL image of the ``index``-th element matching ``selector`` (None: the viewport)."""
        from PIL import Image

        params: dict[str, Any] = {"format": "png"}
        if selector is not None:
            # a viewport as tall as the page: element boxes are then viewport coordinates
            height = int(self.evaluate("(window.scrollTo(0, 0), document.documentElement.scrollHeight)"))
            if height > self._height:
                self.send("Emulation.setDeviceMetricsOverride",
                          {"width": self._width, "height": min(height, 16000), "deviceScaleFactor": 1, "mobile": False})
                self._height = min(height, 16000)
            box = self.evaluate(
                f"(() => {{const e = document.querySelectorAll({json.dumps(selector)})[{index}]; if (!e) return null;"
                "const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height];})()"
            )
            if box is None:
                raise ValueError(f"no element {index} matches {selector!r}")
            x, y, w, h = box
            if w < 1 or h < 1:
                raise ValueError(f"element {selector!r} has an empty box ({w}x{h})")
            params["clip"] = {"x": x, "y": y, "width": w, "height": h, "scale": 1}
        data = self.send("Page.captureScreenshot", params)["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self.send("Browser.close")
                self._proc.wait(timeout=10)
            except (OSError, RuntimeError, TimeoutError, EOFError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
