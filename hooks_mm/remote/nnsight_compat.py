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
import nnsight.intervention.backends.remote as _remote
from nnsight.intervention.backends.remote import RemoteBackend

from hooks_mm.remote.errors import RequestTooLargeError

TESTED = ("0.7.0", "0.8.0", "0.8.1")  # nnsight versions whose internals these functions were checked against
NNSIGHT_07 = nnsight.__version__.startswith("0.7.")  # 0.7's API: model classes per task, its own backend hooks
# the exception nnsight raises for a server's error answer (0.7 names it RemoteException)
RemoteError = getattr(_remote, "RemoteError", None) or _remote.RemoteException


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

    cache = huggingface.ID_CACHE if NNSIGHT_07 else huggingface._ID_CACHE
    cache[path] = path


def nnsight_model(checkpoint: Any, task: str | None, processor: Any, **kwargs: Any) -> Any:
    """nnsight's model of ``checkpoint`` (a hub id, a local directory or a loaded HF module) for ``task``
    (``image-text-to-text`` / ``text-generation``; None: nnsight 0.8 infers it), keyed the way a server
    of this nnsight names it."""
    require()
    key = "processor" if task == "image-text-to-text" else "tokenizer"
    if NNSIGHT_07:  # 0.7 keys a deployment by class: VisionLanguageModel / LanguageModel
        from nnsight.modeling.language import LanguageModel
        from nnsight.modeling.vlm import VisionLanguageModel

        if task == "image-text-to-text" or (task is None and hasattr(processor, "tokenizer")):
            tokenizer = getattr(processor, "tokenizer", None)  # 0.7 sets it only when it loads the processor itself
            return VisionLanguageModel(checkpoint, processor=processor, tokenizer=tokenizer, **kwargs)
        return LanguageModel(checkpoint, tokenizer=processor, **kwargs)
    from nnsight.modeling.transformers import TransformersModel

    return TransformersModel(checkpoint, task=task, **{key: processor}, **kwargs)


def remote_env(lm: Any) -> dict:
    """The client environment a request to NDIF carries."""
    require()
    get_env = getattr(lm, "_remoteable_get_env", None)  # 0.8's per-request environment; 0.7 sends none
    return get_env() if get_env is not None else {}


def wrapped_module(lm: Any) -> Any:
    """The torch module an nnsight model wraps."""
    require()
    return lm._module


def local_simulation(lm: Any) -> Any:
    """nnsight's backend that serialises a request and runs it here, as a server would."""
    require()
    if NNSIGHT_07:
        from nnsight.intervention.backends.local_simulation import LocalSimulationBackend
    else:
        from nnsight.intervention.backends.local import LocalSimulationBackend

    return LocalSimulationBackend(lm)


def show_status(backend: Any, enabled: bool) -> None:
    """Turn nnsight's per-request status line on or off."""
    display = getattr(backend, "display", None) or getattr(backend, "status_display", None)
    if display is not None:
        display.enabled = enabled


def ship_by_value(*modules: Any) -> None:
    """Send these modules' source with every request (the server does not have hooks_mm)."""
    for module in modules:
        nnsight.register(module)


class MeteredRemoteBackend(RemoteBackend):
    """nnsight's RemoteBackend that counts bytes and refuses a payload over ``max_request_bytes``."""

    def __init__(self, *args: Any, stats: Any, max_request_bytes: int | None, **kwargs: Any):
        require()
        if NNSIGHT_07:
            kwargs.pop("env", None)  # 0.7 requests carry no environment
        super().__init__(*args, **kwargs)
        self.stats, self.max_request_bytes = stats, max_request_bytes
        self.describe: Any = None  # () -> str: what the request carries (its inputs, images, edits), for the error
        if NNSIGHT_07:
            self.host = self.address

    def _check_size(self, blob: bytes) -> bytes:
        if self.max_request_bytes is not None and len(blob) > self.max_request_bytes:
            raise RequestTooLargeError(
                f"this request serialises to {len(blob):,} bytes, over max_request_bytes={self.max_request_bytes:,}"
                + (f" ({self.describe()})" if self.describe is not None else "")
                + ": send fewer or smaller images (each goes once per request), lower max_configs_per_request when "
                "the edits dominate, or raise the limit if the server accepts more."
            )
        self.stats.bytes_sent += len(blob)
        return blob

    if NNSIGHT_07:  # 0.7's hooks: request() builds the payload, _decompress_and_load() reads the result

        def request(self, tracer: Any) -> Any:
            data, headers = super().request(tracer)
            return self._check_size(data), headers

        def _decompress_and_load(self, result_bytes: Any) -> Any:
            self.stats.bytes_received += result_bytes.getbuffer().nbytes
            return super()._decompress_and_load(result_bytes)

    else:  # 0.8's: _serialize() builds the payload, finalize() reads the result

        def _serialize(self, tracer: Any) -> bytes:
            return self._check_size(super()._serialize(tracer))

        def finalize(self, content: bytes) -> Any:
            self.stats.bytes_received += len(content)
            return super().finalize(content)


__all__ = [
    "TESTED",
    "MeteredRemoteBackend",
    "RemoteBackend",
    "RemoteError",
    "local_simulation",
    "nnsight_model",
    "register_local_checkpoint",
    "remote_env",
    "require",
    "ship_by_value",
    "show_status",
    "wrapped_module",
]
