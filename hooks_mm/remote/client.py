"""Remote sweeps from a weightless client (:meth:`hooks_mm.HookedMLLM.from_config`: config + processor only).

The client lays out the inputs, validates and compiles the specs on the CPU; everything that
needs the weights runs on the server:

- a metric whose reference comes from the clean run (``answer_logprob`` without targets,
  ``kl_to_clean``) gets it from a first request that returns only the clean logits at the
  metric's positions ([batch, vocab], never the full sequence), bound with
  :meth:`~hooks_mm.sweep.metrics.PositionMetric.bind_at`;
- the local clean-metric check (``check_weights``: the server's clean metric against the local
  model's) is skipped, its reason in ``result.meta["weights_check"]``;
- ``remote=False`` / ``"local"`` run the checkpoint through nnsight's own copy of the model
  (loaded in this process, as a server would), never the meta parameters.

Example::

    model = HookedMLLM.from_config("llava-hf/llava-1.5-7b-hf")
    result = remote_sweep(model, inputs, configs, answer_logprob(model, inputs), remote=URL)
    result.meta["weights_check"]   # 'skipped: ...'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from hooks_mm.model.meta import is_weightless
from hooks_mm.sweep.metrics import PositionMetric

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM
    from hooks_mm.remote.backend import NNsightBackend

SKIPPED = (
    "skipped: the client holds no weights (HookedMLLM.from_config), so the server's clean metric is not compared "
    "with a local one; the values are the deployed checkpoint's"
)


def needs_clean(metric: Any) -> bool:
    """True when ``metric`` derives its reference (targets, clean distribution) from the clean run."""
    return isinstance(metric, PositionMetric) and metric.from_clean is not None and metric.given_state is None


def bind_remotely(
    nn: NNsightBackend,
    model: HookedMLLM,
    batch: Batch,
    metric: Any,
    send: Callable[[Callable[[], Any]], Any],
    remote: Any,
) -> bool:
    """For a weightless ``model``: bind ``metric``'s clean reference from the server's clean run (one
    request returning the clean logits at the metric's positions). ``send`` runs a request with the
    sweep's retries. False when there was nothing to do."""
    if not is_weightless(model) or not needs_clean(metric):
        return False
    plan = nn.plan([None], batch, reduce=(metric.positions, torch.clone))
    out = send(lambda: nn.execute([plan], remote=remote))
    clean_at = torch.as_tensor(out[0])[0]  # one copy: [batch, vocab]
    if clean_at.shape != (batch.shape[0], model.cfg.d_vocab):
        raise ValueError(
            f"the server's clean logits at {metric.name}'s positions have shape {tuple(clean_at.shape)}, not "
            f"[batch {batch.shape[0]}, vocab {model.cfg.d_vocab}]: the deployed checkpoint is not this config's "
            "(another vocabulary?); build the client from the deployed checkpoint's config."
        )
    metric.bind_at(batch, clean_at, model)
    return True


__all__ = ["SKIPPED", "bind_remotely", "needs_clean"]
