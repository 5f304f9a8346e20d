"""Metrics of logits for sweeps and patching: each factory binds a batch, returns ``f(logits)``.

``f(logits[batch, seq, vocab])`` returns a scalar (the mean over rows).

Example::

    metric = answer_logprob(model, inputs)            # the clean answer at the last position
    result = sweep(model, inputs, configs, metric)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from hooks_mm.layout import Last, Modality, Selector

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM

Metric = Callable[[Tensor], Tensor]


class PositionMetric:
    """A metric that reads one position per row: ``f(logits) = at(logits[rows, positions])``.

    The sweep's fast path then unembeds only those positions (``at`` gets [batch, vocab]).
    """

    def __init__(self, positions: Tensor, at: Callable[[Tensor], Tensor]):
        self.positions, self.at = positions, at
        self.rows = torch.arange(len(positions))

    def __call__(self, logits: Tensor) -> Tensor:
        return self.at(logits[self.rows, self.positions.to(logits.device)])


def _rows_at(model: "HookedMLLM", inputs: Any, positions: Selector) -> Tensor:
    idx = model.layout(inputs).indices(positions)
    if idx.shape[1] != 1:
        raise ValueError(f"{positions!r} must pick one position per row, got {idx.shape[1]}.")
    return idx[:, 0]


def answer_logprob(model: "HookedMLLM", inputs: Any, targets: Sequence[int] | Tensor | None = None, positions: Selector | None = None) -> Metric:
    """Mean log-probability of ``targets`` (default: the clean argmax) at ``positions`` (last)."""
    pos = _rows_at(model, inputs, positions or Last())
    rows = torch.arange(len(pos))
    if targets is None:
        with torch.no_grad():
            targets = model(inputs)[rows, pos].argmax(-1)
    tgt = torch.as_tensor(targets).view(-1)
    return PositionMetric(pos, lambda at: at.float().log_softmax(-1)[rows, tgt.to(at.device)].mean())


def logit_diff(model: "HookedMLLM", inputs: Any, correct: Sequence[int], wrong: Sequence[int], positions: Selector | None = None) -> Metric:
    """Mean of ``logit[correct] - logit[wrong]`` per row at ``positions`` (last)."""
    pos = _rows_at(model, inputs, positions or Last())
    rows = torch.arange(len(pos))
    c, w = torch.as_tensor(correct).view(-1), torch.as_tensor(wrong).view(-1)
    return PositionMetric(pos, lambda at: (at[rows, c.to(at.device)] - at[rows, w.to(at.device)]).float().mean())


def kl_to_clean(model: "HookedMLLM", inputs: Any, positions: Selector | None = None) -> Metric:
    """Mean KL(clean || run) of the next-token distributions at ``positions`` (last)."""
    pos = _rows_at(model, inputs, positions or Last())
    rows = torch.arange(len(pos))
    with torch.no_grad():
        clean = model(inputs)[rows, pos].float().log_softmax(-1)

    def kl(at: Tensor) -> Tensor:
        run = at.float().log_softmax(-1)
        return (clean.to(run.device).exp() * (clean.to(run.device) - run)).sum(-1).mean()

    return PositionMetric(pos, kl)


def modality_nll(model: "HookedMLLM", inputs: Any, modality: str = "text") -> Metric:
    """Mean next-token NLL over the tokens of one modality (``exp`` of it is the perplexity).

    Token ``t`` is predicted at position ``t - 1``; only real (non-padding) predictions count.
    """
    inputs = model._as_inputs(inputs)
    layout = model.layout(inputs)
    want = Modality[modality.upper()]
    ids = inputs["input_ids"]
    target = (layout.modality[:, 1:] == want) & (layout.modality[:, :-1] != Modality.PAD)
    if not bool(target.any()):
        raise ValueError(f"no {modality} tokens to predict in this batch (present: {layout.summary()}).")

    def metric(logits: Tensor) -> Tensor:
        lp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None].to(logits.device)).squeeze(-1)
        return -lp[target.to(logits.device)].mean()

    return metric
