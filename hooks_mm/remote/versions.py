"""Which nnsight an NDIF server runs, and the model key it answers to for a checkpoint.

A request names its model by key, and the key format is nnsight's, so it changed with
nnsight's series:

- nnsight 0.7: ``nnsight.modeling.vlm.VisionLanguageModel:{"repo_id": ..., "revision": ...}``
  (``nnsight.modeling.language.LanguageModel:`` for a text model);
- nnsight 0.8: ``nnsight.modeling.transformers.TransformersModel:{"repo_id": ..., "revision": ..., "task": ...}``.

A request's payload is an nnsight-pickled trace whose wire format also changed between 0.7
and 0.8 (0.7 pickles a ``RequestModel(interventions, tracer)``, 0.8 a ``(tracer, block
source)`` pair under a JSON envelope), so a client can only talk to a server of its own
series. :func:`resolve_key` reads the server's ``/status`` (deployed keys) and ``/env``
(its nnsight version, where it has one), finds the checkpoint under either format, and
either returns the key to send or raises an error that names both versions and the fix.

Example::

    info = server_info("http://127.0.0.1:8001")
    print(info.nnsight, info.series)           # "0.8.1", "0.8"
    key = resolve_key(lm, info)                # the key this checkpoint is deployed under
"""

from __future__ import annotations

import difflib
import json
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from typing import Any

import nnsight

from hooks_mm.remote.errors import ModelNotDeployedError, VersionMismatchError

# the nnsight series the client is tested with (pyproject's range), oldest first
SUPPORTED = ("0.7", "0.8")
# the model-key class of each series, per pipeline task (0.8 has one class for every task)
_CLASS_07 = {"image-text-to-text": "nnsight.modeling.vlm.VisionLanguageModel"}
_TEXT_07 = "nnsight.modeling.language.LanguageModel"
_CLASS_08 = "nnsight.modeling.transformers.TransformersModel"


@dataclass(frozen=True)
class CheckpointId:
    """What a model key names: the repo id (or server-side path), its revision and the pipeline task."""

    repo_id: str
    revision: str | None = None
    task: str | None = None
    trust_remote_code: bool = False


def series(version: str | None) -> str | None:
    """``"0.8"`` for ``"0.8.1"``; None when unknown."""
    if not version:
        return None
    parts = version.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 and parts[0].isdigit() else None


def client_series() -> str | None:
    """The series of the nnsight installed here."""
    return series(getattr(nnsight, "__version__", None))


def key_for(ckpt: CheckpointId, fmt: str) -> str:
    """The model key a server of nnsight series ``fmt`` (``"0.7"`` / ``"0.8"``) gives ``ckpt``.

    Example::

        key_for(CheckpointId("llava-hf/llava-1.5-7b-hf", None, "image-text-to-text"), "0.7")
        # 'nnsight.modeling.vlm.VisionLanguageModel:{"repo_id": "llava-hf/llava-1.5-7b-hf", "revision": null}'
    """
    data: dict[str, Any] = {"repo_id": ckpt.repo_id, "revision": ckpt.revision}
    if fmt == "0.7":
        if ckpt.task is None:
            raise ValueError(f"an nnsight 0.7 key needs the task (its class depends on it): {ckpt}")
        return f"{_CLASS_07.get(ckpt.task, _TEXT_07)}:{json.dumps(data)}"
    if fmt == "0.8":
        if ckpt.trust_remote_code:
            data["trust_remote_code"] = True
        data["task"] = ckpt.task
        return f"{_CLASS_08}:{json.dumps(data)}"
    raise ValueError(f"no model-key format for nnsight {fmt}: the formats known are {', '.join(SUPPORTED)}.")


def parse_key(key: str) -> tuple[str | None, CheckpointId | None]:
    """(series of its format, checkpoint) of a model key; (None, None) for a key of another kind."""
    cls, _, body = key.partition(":")
    try:
        data = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(data, dict) or "repo_id" not in data:
        return None, None
    remote_code = bool(data.get("trust_remote_code"))
    if cls == _CLASS_08:
        return "0.8", CheckpointId(data["repo_id"], data.get("revision"), data.get("task"), remote_code)
    if cls in _CLASS_07.values() or cls == _TEXT_07:
        task = next((t for t, c in _CLASS_07.items() if c == cls), "text-generation")
        return "0.7", CheckpointId(data["repo_id"], data.get("revision"), task, remote_code)
    return None, None


@dataclass
class ServerInfo:
    """What a server says of itself: its deployed model keys and, where ``/env`` answers, its versions."""

    host: str
    keys: list[str] = field(default_factory=list)
    nnsight: str | None = None  # from GET /env; None when the server does not publish it
    python: str | None = None

    @property
    def series(self) -> str | None:
        """The server's nnsight series: from its version, else from the format of its deployed keys."""
        if self.nnsight:
            return series(self.nnsight)
        found = {_parse_in(k)[0] for k in self.keys} - {None}
        return found.pop() if len(found) == 1 else None

    def describe(self) -> str:
        """``nnsight 0.7.0`` or, when only its keys tell, ``nnsight 0.7 (from its model keys)``."""
        if self.nnsight:
            return f"nnsight {self.nnsight}"
        return f"nnsight {self.series} (from its model keys)" if self.series else "an unknown nnsight version"


def deployed_keys(status: dict[str, Any]) -> list[str]:
    """Model keys in a ``GET /status`` answer (ndif names a replica ``"<id>:<actor class>:<key>"``;
    its ``model_key`` field, where present, is the key itself)."""
    deployments = status.get("deployments") or {}
    return [v.get("model_key") or name for name, v in deployments.items() if isinstance(v, dict)]


def _get_json(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def server_info(host: str, timeout: float = 10.0) -> ServerInfo:
    """Read ``host``'s ``/status`` (deployed keys; raises OSError / ValueError when it does not answer)
    and ``/env`` (nnsight and Python versions; left unknown when it has none)."""
    base = host.rstrip("/")
    info = ServerInfo(host, deployed_keys(_get_json(f"{base}/status", timeout)))
    try:
        env = _get_json(f"{base}/env", timeout)
    except (OSError, ValueError, urllib.error.HTTPError):
        return info
    if isinstance(env, dict):
        packages = env.get("packages") or {}
        info.nnsight = packages.get("nnsight") if isinstance(packages, dict) else None
        info.python = (str(env.get("python_version") or "").split() or [None])[0]
    return info


def _deployed(key: str, keys: list[str]) -> bool:
    return any(k == key or k.endswith(":" + key) for k in keys)


def _parse_in(key: str) -> tuple[str | None, CheckpointId | None]:
    """:func:`parse_key` of a deployed key, or of a replica name that ends in one (``"<id>:ModelActor:<key>"``)."""
    start = key.find("nnsight.modeling.")
    return parse_key(key[start:]) if start >= 0 else (None, None)


def _fix(server: ServerInfo) -> str:
    """How to reach a server of another nnsight series."""
    s = server.series
    if s in SUPPORTED:
        pin = f"nnsight=={server.nnsight}" if server.nnsight else f"nnsight=={s}.*"
        return (
            f"install the server's nnsight in this environment (pip install '{pin}'; hooks_mm's client supports "
            f"nnsight {' and '.join(s + '.x' for s in SUPPORTED)}), or use a server on nnsight {client_series()}."
        )
    return (
        f"hooks_mm's client supports nnsight {' and '.join(s + '.x' for s in SUPPORTED)} only: use a server on one "
        "of those, or ask the server's operators which nnsight it needs."
    )


def resolve_key(lm: Any, server: ServerInfo) -> str:
    """The model key to send ``server`` for ``lm``'s checkpoint, in the format the server speaks.

    Raises :class:`VersionMismatchError` when the checkpoint is deployed only under another
    nnsight series' key format (the request would not load there), naming both versions and
    the fix; :class:`ModelNotDeployedError` when it is deployed under neither, listing the
    deployed keys that are close.
    """
    ours = lm.to_model_key()
    mine = client_series()
    fmt, ckpt = parse_key(ours)
    if _deployed(ours, server.keys):
        if server.series not in (None, mine):
            warnings.warn(
                f"{server.host} runs {server.describe()} and this client nnsight {nnsight.__version__}, but it lists "
                "this model under this client's key format: the request may not load there. "
                f"If it fails, {_fix(server)}",
                stacklevel=3,
            )
        return ours
    candidates = {s: key_for(ckpt, s) for s in SUPPORTED} if ckpt is not None and ckpt.task else {}
    for s, key in candidates.items():
        if s != fmt and _deployed(key, server.keys):
            raise VersionMismatchError(
                f"{server.host} runs {server.describe()} and this client nnsight {nnsight.__version__}: the server "
                f"deploys this checkpoint as\n  {key}\nwhile this client names it\n  {ours}\nand an nnsight {s} "
                f"server cannot load an nnsight {mine} request. Fix: {_fix(server)}"
            )
    raise ModelNotDeployedError(_not_deployed(ours, ckpt, server))


def _not_deployed(ours: str, ckpt: CheckpointId | None, server: ServerInfo) -> str:
    same_repo = [k for k in server.keys if ckpt is not None and (c := _parse_in(k)[1]) and c.repo_id == ckpt.repo_id]
    close = same_repo or difflib.get_close_matches(ours, server.keys, n=5, cutoff=0.6)
    listed = "\n  ".join(server.keys) or "(none)"
    lines = [f"{ours}\nis not deployed on {server.host} ({server.describe()}); deployed:\n  {listed}"]
    if close:
        lines.append("close to this one (another revision, task or nnsight version?):\n  " + "\n  ".join(close))
    if server.series not in (None, client_series()):
        lines.append(f"This client runs nnsight {nnsight.__version__}: {_fix(server)}")
    lines.append("Deploy it (`ndif deploy`), or pass check_deployed=False if the server deploys models on demand.")
    return "\n".join(lines)


__all__ = [
    "SUPPORTED",
    "CheckpointId",
    "ServerInfo",
    "client_series",
    "deployed_keys",
    "key_for",
    "parse_key",
    "resolve_key",
    "series",
    "server_info",
]
