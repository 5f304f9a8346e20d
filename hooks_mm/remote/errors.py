"""Clear errors for the remote path, from nnsight's ``RemoteError`` and NDIF's answers.

Example::

    try:
        remote_sweep(model, inputs, configs, metric, remote=True)
    except ModelNotDeployedError as e:
        print(e)        # names the model key and what the server has deployed
"""

from __future__ import annotations

from typing import Any


class NDIFError(RuntimeError):
    """Base of the remote path's errors."""


class ServerUnavailableError(NDIFError):
    """The server did not answer or failed transiently (retried before this is raised)."""


class AuthenticationError(NDIFError):
    """The server refused the API key (missing, malformed or unknown)."""


class VersionMismatchError(NDIFError):
    """The server refuses this client's nnsight / Python version."""


class ModelNotDeployedError(NDIFError):
    """The model key is not deployed on the server."""


class DeployError(NDIFError):
    """The server could not deploy the model on demand (the server's reason is in the message)."""


class ModelMismatchError(NDIFError, ValueError):
    """The local HookedMLLM is not the model the nnsight model (the deployed checkpoint) is."""


class RemoteExecutionError(NDIFError):
    """The trace raised on the server (the server's traceback is in the message)."""


class RequestTooLargeError(NDIFError):
    """A request is over the configured per-request limit."""


TRANSIENT = (
    "connection refused",
    "connect call failed",
    "timed out",
    "temporarily unavailable",
    "502",
    "503",
    "504",
    "connection reset",
    "remote end closed",
    "server disconnected",
    "broken pipe",
    "connection aborted",
    "all connection attempts failed",
    "name or service not known",
    "eof occurred",
    "bad gateway",
    "unavailable",
)


def classify(error: BaseException, host: str, lm: Any) -> NDIFError:
    """The NDIFError that says what went wrong with one request, and what to do."""
    msg = str(error)
    low = msg.lower()
    key = _key(lm)
    if low.startswith("failed to send request"):
        if "nnsight version" in low or "python version" in low:
            return VersionMismatchError(
                f"NDIF at {host} refuses this client: {msg}. Install the nnsight version it asks for."
            )
        if any(w in low for w in ("api key", "unauthorized", "forbidden", "401", "403")):
            return AuthenticationError(
                f"NDIF at {host} refused the API key: {msg}. Set it with nnsight.CONFIG.set_default_api_key(KEY), "
                "$NDIF_API_KEY, or api_key=."
            )
        if any(w in low for w in ("not deployed", "not found", "no deployment", "unknown model")):
            return ModelNotDeployedError(f"{key} is not deployed on {host}: {msg}")
        if any(w in low for w in TRANSIENT):
            return ServerUnavailableError(f"NDIF at {host} is unavailable: {msg}")
        return NDIFError(f"NDIF at {host} rejected the request: {msg}")
    if any(w in low for w in ("not deployed", "no deployment for", "not found in deployments")):
        return ModelNotDeployedError(f"{key} is not deployed on {host}: {msg}")
    if "could not deploy" in low or "failed to deploy" in low:
        return DeployError(
            f"NDIF at {host} could not deploy {key} on demand: {_short(msg)}\nThe trace never ran. Check that the "
            "server can load this checkpoint (path or hub id, revision, its ndif/nnsight versions), or deploy it "
            "there first (`ndif deploy`)."
        )
    return RemoteExecutionError(f"the trace failed on {host}: {_short(msg)}")


def _short(msg: str, lines: int = 12) -> str:
    """A server message with its traceback cut to the last ``lines`` lines (where the error is)."""
    parts = msg.splitlines()
    if len(parts) <= lines + 1:
        return msg
    return "\n".join([parts[0], f"  ... ({len(parts) - lines - 1} traceback lines left out)", *parts[-lines:]])


def is_transient(error: BaseException) -> bool:
    if isinstance(error, ServerUnavailableError):
        return True
    if isinstance(error, NDIFError):
        return False
    return isinstance(error, (OSError, ConnectionError)) or any(w in str(error).lower() for w in TRANSIENT)


def _key(lm: Any) -> str:
    try:
        return lm.to_model_key()
    except Exception:  # noqa: BLE001
        return "this model"
