"""Modality-specific neurons (LAPE and the top-k%-difference selector) and the neuron-masking
matrix (methods.md section 1).

Any set of modalities works (``"text"``, ``"image"``, ``"video"``, ``"audio"``: the
:class:`~hooks_mm.layout.Modality` names), e.g. LAPE over text / image / audio positions of
a mixed-modality model.

Example::

    probs = activation_probabilities(model, batches, modalities=("text", "image", "audio"))
    found = lape(probs)                                  # published defaults
    found.specific["image"]                              # [(layer, neuron), ...]
    neuron_masking_matrix(model, batches, found.specific)   # masked x evaluated perplexity
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from hooks_mm.interventions import NeuronAblation, compose
from hooks_mm.layout import Modality
from hooks_mm.progress import check_progress, progress_bar
from hooks_mm.selectors import NonPad
from hooks_mm.sweep.metrics import modality_nll, predicts

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM


@dataclass
class ActivationProbabilities:
    """``probs[layer, neuron, m]`` = P(act > 0) over the tokens of modality ``modalities[m]``."""

    probs: Float[Tensor, "layer neuron modality"]
    modalities: tuple[str, ...]
    tokens: dict[str, int]


@torch.no_grad()
def activation_probabilities(
    model: "HookedMLLM",
    batches: Iterable[Any],
    modalities: Sequence[str] = ("text", "image"),
    layers: Sequence[int] | None = None,
    progress: bool | None = None,
) -> ActivationProbabilities:
    """Stream ``batches``; count, per MLP neuron, how often it is active per modality (any
    of text / image / video / audio / special).

    Active means ``act_fn(gate_proj(x)) > 0`` in gated MLPs (``act_fn(fc1(x)) > 0``
    otherwise), as the published LAPE code counts it: the sign of the gate activation, not
    of its product with ``up_proj(x)`` (whose sign is that of the up projection, near a coin
    flip). For SiLU / GELU / ReLU that is ``mlp.hook_pre > 0``, the hook this reads. ``progress``: a bar over the
    batches (None: automatic, :mod:`hooks_mm.progress`).
    """
    check_progress(progress, "activation_probabilities")
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    names = [model.hook_name(f"blocks.{l}.mlp.hook_pre") for l in layers]  # MoE layers: refused with the reason
    codes = [_modality(m) for m in modalities]
    pos = torch.zeros(len(layers), model.cfg.d_mlp, len(codes), dtype=torch.float64)
    tokens = torch.zeros(len(codes), dtype=torch.float64)
    for inputs in progress_bar(batches, desc="activation_probabilities", unit="batch", progress=progress):
        batch = model.prepare(inputs)
        _, cache = model.run_with_cache(batch, names_filter=names)
        for mi, code in enumerate(codes):
            mask = batch.layout.modality == code
            tokens[mi] += mask.sum()
            for li, n in enumerate(names):
                pos[li, :, mi] += (cache[n][mask] > 0).sum(0).double()
    empty = [m for m, t in zip(modalities, tokens) if t == 0]
    if empty:
        raise ValueError(f"activation_probabilities: no tokens of {empty} in the batches given.")
    return ActivationProbabilities(
        (pos / tokens).float(), tuple(modalities), dict(zip(modalities, tokens.long().tolist()))
    )


def _predicted(modality: Tensor, code: Modality) -> int:
    """Tokens of ``code`` predicted from a real position (what :func:`modality_nll` averages)."""
    return int(((modality[:, 1:] == code) & (modality[:, :-1] != Modality.PAD)).sum())


def _modality(name: str) -> Modality:
    try:
        code = Modality[name.upper()]
    except KeyError:
        code = None
    if code is None or code == Modality.PAD:
        valid = [m.name.lower() for m in Modality if m != Modality.PAD]
        raise ValueError(f"unknown modality {name!r}: use one of {valid}.")
    return code


@dataclass
class SpecificNeurons:
    entropy: Float[Tensor, "layer neuron"]
    specific: dict[str, list[tuple[int, int]]]
    selected: list[tuple[int, int]]


def lape(
    probs: ActivationProbabilities, filter_rate: float = 0.95, top_rate: float = 0.01, activation_bar: float = 0.95
) -> SpecificNeurons:
    """LAPE: the lowest-entropy ``top_rate`` of neurons whose max probability passes the
    ``filter_rate`` quantile; a selected neuron is specific to every modality where its
    probability passes the ``activation_bar`` quantile (defaults: 0.95, 0.01, 0.95)."""
    for name, rate in (("filter_rate", filter_rate), ("top_rate", top_rate), ("activation_bar", activation_bar)):
        if not 0 < rate <= 1:
            raise ValueError(f"lape: {name}={rate} is a fraction: pass a value in (0, 1] (e.g. top_rate=0.01 for 1%).")
    p = probs.probs.double()
    q = p / p.sum(-1, keepdim=True)
    entropy = -(q * torch.log(q)).nan_to_num(0.0).sum(-1)
    flat = p.flatten()
    top_value = flat.kthvalue(max(1, round(len(flat) * filter_rate))).values
    ent = torch.where(p.max(-1).values > top_value, entropy, torch.full_like(entropy, float("inf")))
    k = max(1, round(ent.numel() * top_rate))
    order = ent.flatten().argsort()[:k]
    order = order[torch.isfinite(ent.flatten()[order])]
    d = p.shape[1]
    selected = [(int(i) // d, int(i) % d) for i in order]
    bar = flat.kthvalue(max(1, round(len(flat) * activation_bar))).values
    specific = {m: [(l, j) for l, j in selected if p[l, j, mi] > bar] for mi, m in enumerate(probs.modalities)}
    return SpecificNeurons(entropy.float(), specific, selected)


def top_difference(probs: ActivationProbabilities, top_percent: float = 1.0) -> dict[str, list[tuple[int, int]]]:
    """Per modality, the top ``top_percent`` % of neurons by ``p[m] - max_{m' != m} p[m']``."""
    if not 0 < top_percent <= 100:
        raise ValueError(f"top_difference: top_percent={top_percent} is a percentage: pass a value in (0, 100].")
    p = probs.probs
    d = p.shape[1]
    k = max(1, round(p[..., 0].numel() * top_percent / 100))
    out = {}
    for mi, m in enumerate(probs.modalities):
        others = torch.cat([p[..., :mi], p[..., mi + 1 :]], -1).max(-1).values
        score = (p[..., mi] - others).flatten()
        out[m] = [(int(i) // d, int(i) % d) for i in score.argsort(descending=True)[:k]]
    return out


def mask_spec(neurons: list[tuple[int, int]]) -> Any:
    """One NeuronAblation per layer zeroing the given (layer, neuron) pairs at every position."""
    by_layer: dict[int, list[int]] = {}
    for l, j in neurons:
        by_layer.setdefault(l, []).append(j)
    return compose([NeuronAblation(l, sorted(js), NonPad()) for l, js in sorted(by_layer.items())])


@torch.no_grad()
def neuron_masking_matrix(
    model: "HookedMLLM",
    batches: Sequence[Any],
    specific: dict[str, list[tuple[int, int]]],
    evaluate: Sequence[str] | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Perplexity of each evaluated modality's tokens with each modality's neurons masked.

    ``evaluate``: the modalities whose perplexity is measured (default: text, and image where the model
    predicts image tokens, :func:`hooks_mm.sweep.metrics.predicts`; a model that feeds image features in
    place of a placeholder token has no image perplexity, and asking for one is refused).

    Rows: "none" (clean) and every masked modality; columns: evaluated modalities. The
    perplexity is over all tokens of the batches (each batch weighted by its token count).
    A healthy result is diagonal-dominant (masking image neurons hurts image tokens most). ``progress``: a bar
    over the forwards (None: automatic, :mod:`hooks_mm.progress`).
    """
    check_progress(progress, "neuron_masking_matrix")
    if evaluate is None:
        evaluate = [m for m in ("text", "image") if predicts(model, batches[0], m)] if batches else ["text"]
    total = (1 + len(specific)) * len(evaluate) * len(batches)
    bar = progress_bar(desc="neuron_masking_matrix", total=total, unit="forward", progress=progress)
    rows: dict[str, dict[str, float]] = {}
    for masked, neurons in [("none", []), *specific.items()]:
        spec = mask_spec(neurons) if neurons else None
        vals = {}
        for ev in evaluate:
            nll, n = 0.0, 0
            for inputs in batches:
                batch = model.prepare(inputs)
                metric = modality_nll(model, batch, ev)
                logits = model(batch) if spec is None else model.run_with_interventions(batch, spec)
                count = _predicted(batch.layout.modality, _modality(ev))  # weight each batch by its tokens
                nll += float(metric(logits)) * count
                n += count
                bar.update(1)
            vals[ev] = float(torch.tensor(nll / n).exp())
        rows[masked] = vals
    bar.close()
    return pd.DataFrame(rows).T
