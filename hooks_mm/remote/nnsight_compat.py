"""Everything hooks_mm uses of nnsight beyond its documented API, in one place, version-checked.

hooks_mm reaches into a few nnsight internals: the model-id cache that lets a local
checkpoint directory act as a model key, ``RemoteBackend._serialize`` / ``finalize`` (to
meter and bound request sizes), ``_remoteable_get_env`` (the client environment a request
carries), the local simulation backend and the wrapped module of an nnsight model. Those
are checked against the nnsight versions in :data:`TESTED`; any other installed version
gets a clear error naming both, on first use, instead of a failure deep inside a trace.

Example::

    lm = TransformersModel(path, task="text-generation")
    backend = MeteredRemoteBackend(
        lm.to_model_key(), host=host, env=remote_env(lm), stats=stats, max_request_bytes=16 << 20
    )
"""

from __future__ import annotations

import functools
from typing import Any

import nnsight
from nnsight.intervention.backends.remote import RemoteBackend, RemoteError

from hooks_mm.remote.errors import RequestTooLargeError

TESTED = ("0.8.1",)  # nnsight versions whose internals these functions were checked against


@functools.cache
def require() -> str:
    """The installed nnsight version, when it is one hooks_mm's remote path was tested with."""
    version = getattr(nnsight, "__version__", "unknown")
    if version not in TESTED:
        raise ImportError(
            f"hooks_mm's nnsight backend uses nnsight internals checked on nnsight {', '.join(TESTED)}, but nnsight "
            f"{version} is installed: pip install 'nnsight=={TESTED[-1]}'."
        )
    return version


def register_local_checkpoint(path: str) -> None:
    """Let the local directory ``path`` be its own model id (no hub look-up)."""
    require()
    from nnsight.modeling import huggingface

    huggingface._ID_CACHE[path] = path


def remote_env(lm: Any) -> dict:
    """The client environment a request to NDIF carries."""
    require()
    return lm._remoteable_get_env()


def wrapped_module(lm: Any) -> Any:
    """The torch module an nnsight model wraps."""
    require()
    return lm._module


def local_simulation(lm: Any) -> Any:
    """nnsight's backend that serialises a request and runs it here, as a server would."""
    require()
    from nnsight.intervention.backends.local import LocalSimulationBackend

    return LocalSimulationBackend(lm)


def ship_by_value(*modules: Any) -> None:
    """Send these modules' source with every request (the server does not have hooks_mm)."""
    for module in modules:
        nnsight.register(module)


class MeteredRemoteBackend(RemoteBackend):
    """nnsight's RemoteBackend that counts bytes and refuses a payload over ``max_request_bytes``."""

    def __init__(self, *args: Any, stats: Any, max_request_bytes: int | None, **kwargs: Any):
        require()
        super().__init__(*args, **kwargs)
        self.stats, self.max_request_bytes = stats, max_request_bytes
        self.describe: Any = None  # () -> str: what the request carries (its inputs, images, edits), for the error

    def _serialize(self, tracer: Any) -> bytes:
        blob = super()._serialize(tracer)
        if self.max_request_bytes is not None and len(blob) > self.max_request_bytes:
            raise RequestTooLargeError(
                f"this request serialises to {len(blob):,} bytes, over max_request_bytes={self.max_request_bytes:,}"
                + (f" ({self.describe()})" if self.describe is not None else "")
                + ": send fewer or smaller images (each goes once per request), lower max_configs_per_request when "
                "the edits dominate, or raise the limit if the server accepts more."
            )
        self.stats.bytes_sent += len(blob)
        return blob

    def finalize(self, content: bytes) -> Any:
        self.stats.bytes_received += len(content)
        return super().finalize(content)


__all__ = [
    "TESTED",
    "MeteredRemoteBackend",
    "RemoteBackend",
    "RemoteError",
    "local_simulation",
    "register_local_checkpoint",
    "remote_env",
    "require",
    "ship_by_value",
    "wrapped_module",
]
