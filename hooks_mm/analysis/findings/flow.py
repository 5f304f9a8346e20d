"""Attention flow per layer and attention knockout per window of layers, each with a control and a 95 %
interval over held-out image questions (issue 19, item 2; methods: FastV flow, Zhang et al. knockout).

Example::

    from hooks_mm.analysis.findings.flow import flow_by_layer, knockout_by_window
    model = HookedMLLM.from_pretrained("toy-llava")
    flow_by_layer(model, n=200)                 # one row per layer: mass to the image vs the image's key share
    knockout_by_window(model, n=200, draws=20)  # one row per (window, edge): accuracy drop vs random keys
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float

from hooks_mm.analysis.controls import random_positions
from hooks_mm.analysis.erasure import accuracy, choice_score
from hooks_mm.analysis.findings.common import Finding, check_sizes, image_questions
from hooks_mm.analysis.stats import Control, Interval, bootstrap, verdict
from hooks_mm.interventions import AttentionKnockout, compose
from hooks_mm.layout import Modality
from hooks_mm.model import HookedMLLM
from hooks_mm.selectors import After, Image, Last, Selector, Text, Where
from hooks_mm.tasks.evaluate import word_ids
from hooks_mm.tasks.shapes import ANSWERS

QUESTION: Selector = After(Image()) & Text() & ~Last()
"""The question: text after the image, the last position left out (it is its own query set)."""

EDGES: dict[str, tuple[Selector, Selector]] = {"last->image": (Last(), Image()), "question->image": (QUESTION, Image())}
"""Edge kinds knocked out: name -> (queries, keys)."""


def _cols(name: str, iv: Interval) -> dict[str, float]:
    return {name: iv.value, f"{name}_lo": iv.lo, f"{name}_hi": iv.hi}


def _held_out(model: HookedMLLM, n: int, split: str, seed: int) -> tuple[list[Any], list[torch.Tensor]]:
    """``n`` image questions of ``split``; an error naming the problem when a row has no image or no question."""
    qa, answers = image_questions(model, n, split, seed)
    for inputs in qa:
        layout = model.prepare(inputs).layout
        for name, sel in (("image", Image()), ("question after the image", QUESTION)):
            if not bool(layout.select(sel).any(-1).all()):
                raise ValueError(
                    f"{type(model).__name__}: some prompts hold no {name} positions in the sequence "
                    f"(present: {layout.summary()}): attention flow and knockout need image tokens in the "
                    "language model's sequence with the question after them: use a model such as toy-llava."
                )
    return qa, answers


@torch.no_grad()
def row_flow(
    model: HookedMLLM, inputs: Any, queries: Selector
) -> tuple[Float[torch.Tensor, "batch layer"], Float[torch.Tensor, "batch layer"]]:
    """Per row and layer: the head-mean attention from ``queries`` to the image positions, summed over image
    keys and averaged over the row's queries (the per-row form of
    :func:`hooks_mm.analysis.alignment.attention_flow`); and the image's share of the keys each query sees
    (image keys / real keys up to and with itself), averaged the same way: the mass a query would give the
    image if it ignored modality and spread evenly over what it sees.

    Example::

        mass, share = row_flow(model, inputs, Last())       # [batch, layer] each
    """
    batch = model.prepare(inputs)
    layout = batch.layout
    q, k = layout.select(queries), layout.select(Image())
    real = layout.modality != Modality.PAD
    if not bool(q.any(-1).all()):
        raise ValueError(f"row_flow: some rows have no {queries!r} positions (present: {layout.summary()}).")
    s = q.shape[1]
    seen = real[:, None, :] & torch.ones(s, s, dtype=torch.bool).tril()[None]  # [b, q, k] causal real keys
    share = (seen & k[:, None, :]).sum(-1).double() / seen.sum(-1).clamp(min=1)  # [b, q]
    share = (share * q).sum(-1) / q.sum(-1)
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise ValueError(f"row_flow: {missing[:2]} have no self-attention pattern: use a model with attention only.")
    _, cache = model.run_with_cache(batch, names_filter=names)
    out = []
    for name in names:
        to_image = (cache[name].double().mean(1).cpu() * k[:, None, :]).sum(-1)  # [b, q]
        out.append((to_image * q).sum(-1) / q.sum(-1))
    return torch.stack(out, 1), share[:, None].expand(-1, len(names))


@torch.no_grad()
def flow_by_layer(model: HookedMLLM, n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per layer, on ``n`` held-out image questions: the attention mass from the question (text after the
    image, the last position left out) and, separately, from the last position to the image positions
    (head mean, summed over image keys, averaged over queries: the FastV convention), each a mean over
    examples with a 95 % bootstrap interval.

    The control beside it (``*_share``) is the image's share of the keys each query sees: the mass it would
    give the image if attention ignored modality (uniform over its real causal keys). It is exact (no draws)
    and independent of which non-image tokens absorb attention; the alternative (mass to as many random
    non-image positions) mostly measures the BOS attention sink, whether or not it is drawn. ``*_excess``
    is the per-example paired difference mass - share, with its interval: > 0 means more attention to the
    image than its share of the keys.

    Example::

        flow_by_layer(model, n=200)[["layer", "question", "question_lo", "question_hi", "question_share"]]
    """
    check_sizes(n)
    qa, _ = _held_out(model, n, "test", seed)
    rows = []
    per = {
        name: [row_flow(model, inputs, sel) for inputs in qa]
        for name, sel in (("question", QUESTION), ("last", Last()))
    }
    for layer in range(model.cfg.n_layers):
        row: dict[str, float] = {"layer": layer}
        for name, parts in per.items():
            mass = torch.cat([m[:, layer] for m, _ in parts])
            share = torch.cat([s[:, layer] for _, s in parts])
            row.update(_cols(name, bootstrap(mass, seed=seed)))
            row[f"{name}_share"] = float(share.mean())
            row.update(_cols(f"{name}_excess", bootstrap(mass - share, seed=seed)))
        rows.append(row)
    return pd.DataFrame(rows)


def check_window(model: HookedMLLM, window: int | None) -> int:
    """``window`` checked (None: about a third of the depth, at least 1)."""
    n_layers = model.cfg.n_layers
    if window is None:
        return max(1, round(n_layers / 3))
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= n_layers:
        raise ValueError(
            f"window={window!r}: give the number of consecutive layers knocked out at once, an int in "
            f"1..{n_layers} (this model's depth), or None for about a third of it."
        )
    return window


def control_keys(
    layout: Any, queries: Selector, keys: Selector, seed: int
) -> list[tuple[Bool[torch.Tensor, "batch pos"], Bool[torch.Tensor, "batch pos"]]]:
    """Random non-image keys for each query of ``queries``: ``[(query mask, key mask)]``, one pair per query
    slot (the j-th query of every row). Each query gets as many keys as ``keys`` knocks out from it, drawn
    (:func:`hooks_mm.analysis.controls.random_positions`) among the real non-image positions before it
    (itself excluded, so no query is ever blocked from itself and each keeps at least its own key); where
    fewer exist (the question's first tokens), all of them.

    Example::

        pairs = control_keys(batch.layout, Last(), Image(), seed=0)   # one pair: (last, 9 random text keys)
    """
    q, k = layout.select(queries), layout.select(keys)
    real = layout.modality != Modality.PAD
    allowed_all = real & ~layout.select(Image())
    pos = torch.arange(q.shape[1])
    out = []
    for j in range(int(q.sum(-1).max())):
        slot = q & (q.cumsum(-1) == j + 1)  # [b, s]: the (j+1)-th query of each row (none where fewer)
        before = pos[None] < torch.where(slot.any(-1), slot.float().argmax(-1), 0)[:, None]  # keys it sees
        allowed = allowed_all & before & slot.any(-1, keepdim=True)
        selected = k & before & slot.any(-1, keepdim=True)
        count = torch.minimum(selected.sum(-1), allowed.sum(-1))  # as many as exist before the query
        selected = selected & (selected.cumsum(-1) <= count[:, None])
        out.append((slot, random_positions(selected, allowed, seed=seed * 1009 + j)))
    return out


def _mask(m: torch.Tensor) -> Where:
    return Where(lambda layout, m=m: m.to(layout.modality.device))


def knockout_spec(layers: list[int], pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """One :class:`AttentionKnockout` per (query mask, key mask) pair of :func:`control_keys`, composed.

    Example::

        model.run_with_interventions(batch, knockout_spec([1], control_keys(batch.layout, Last(), Image(), 0)))
    """
    return compose([AttentionKnockout(layers, queries=_mask(q), keys=_mask(k)) for q, k in pairs if k.any()])


@torch.no_grad()
def _drops(
    model: HookedMLLM,
    qa: list[Any],
    answers: list[torch.Tensor],
    combos: Sequence[tuple[list[int], str]],
    draws: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Per (layers, edge): per-example drops, control mean drops, and the mean keys knocked per query."""
    score = choice_score(word_ids(model, ANSWERS).tolist())
    clean = accuracy(model, qa, answers, score, per_example=True)
    layouts = [model.prepare(b).layout for b in qa]
    out = []
    for layers, edge in combos:
        queries, keys = EDGES[edge]
        spec = AttentionKnockout(layers, queries=queries, keys=keys)
        drop = clean - accuracy(model, qa, answers, score, spec, per_example=True)
        rand, n_keys = [], []
        for d in range(draws):
            pairs = [control_keys(layout, queries, keys, seed=seed * 7919 + d) for layout in layouts]
            scores = []
            for b, a, p in zip(qa, answers, pairs):
                scores.append(accuracy(model, [b], [a], score, knockout_spec(layers, p), per_example=True))
            rand.append(float((clean - torch.cat(scores)).mean()))
            n_keys.append(sum(float(sum(kk.sum() for _, kk in p)) for p in pairs))
        n_queries = sum(float(layout.select(queries).sum()) for layout in layouts)
        effect_keys = sum(float(_knocked(layout, queries, keys)) for layout in layouts)
        out.append(
            {
                "layers": layers,
                "edge": edge,
                "drop": drop,
                "control": Control.of(rand),
                "keys": effect_keys / n_queries,
                "control_keys": sum(n_keys) / draws / n_queries,
                "clean": float(clean.mean()),
            }
        )
    return out


def _knocked(layout: Any, queries: Selector, keys: Selector) -> torch.Tensor:
    """The number of (query, earlier key) edges ``queries -> keys`` removes (keys a query sees)."""
    q, k = layout.select(queries), layout.select(keys)
    s = q.shape[1]
    return (q[:, :, None] & k[:, None, :] & torch.ones(s, s, dtype=torch.bool).tril(-1)[None]).sum()


@torch.no_grad()
def knockout_by_window(
    model: HookedMLLM, n: int = 200, window: int | None = None, draws: int = 20, seed: int = 0
) -> pd.DataFrame:
    """Per window of ``window`` consecutive layers (default about a third of the depth; windows slide by 1)
    and per edge kind (``last->image``, ``question->image``; :data:`EDGES`), on ``n`` held-out image
    questions: the accuracy drop when that attention is knocked out (per-example paired difference clean -
    knocked, 95 % interval) beside the control: the same queries knocked out from as many RANDOM real
    non-image keys (``draws`` draws, :func:`control_keys`): its mean, 2.5-97.5 % range, and the effect's
    percentile among the draws; ``agrees`` when the effect's interval lies above that range (:func:`verdict`).

    ``keys`` / ``control_keys``: the mean number of keys knocked out per query in the effect / the control.
    They are equal for ``last->image``; for ``question->image`` the control knocks fewer (the first question
    tokens see fewer non-image keys than image keys): read its verdict with that in mind.

    Guards: the control never blocks a query from itself (keys drawn strictly before it), so every query
    keeps a key; the effect's keys (image) never hold a query; :class:`AttentionKnockout` also refuses
    any query left with no key. (``last->question`` is left out: fewer non-question keys exist before the
    last position than question tokens, so no control of the same size can be drawn.)

    Example::

        t = knockout_by_window(model, n=200, draws=20)
        t[["layers", "edge", "drop", "drop_lo", "drop_hi", "control_lo", "control_hi", "agrees"]]
    """
    check_sizes(n, draws)
    window = check_window(model, window)
    qa, answers = _held_out(model, n, "test", seed)
    rows = []
    starts = range(model.cfg.n_layers - window + 1)
    combos = [(list(range(s, s + window)), edge) for s in starts for edge in EDGES]
    for r in _drops(model, qa, answers, combos, draws, seed):
        v = verdict(bootstrap(r["drop"], seed=seed), r["control"], expect="greater")
        lo, hi = r["control"].interval()
        rows.append(
            {
                "layers": f"{r['layers'][0]}-{r['layers'][-1]}",
                "edge": r["edge"],
                **_cols("drop", v.effect),
                "control": r["control"].mean,
                "control_lo": lo,
                "control_hi": hi,
                "percentile": v.percentile,
                "agrees": v.agrees,
                "keys": r["keys"],
                "control_keys": r["control_keys"],
                "clean": r["clean"],
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def attention_knockout(
    model: HookedMLLM,
    n: int = 200,
    draws: int = 20,
    seed: int = 0,
    edge: str = "last->image",
    window: int | None = None,
    name: str = "toy-llava",
) -> Finding:
    """The knockout finding: the window of ``window`` layers whose ``edge`` knockout drops accuracy most on
    ``n`` calibration questions (training split) is chosen there; on ``n`` held-out ones, the per-example
    drop against the same queries knocked out from random non-image keys (``draws`` draws).

    Example::

        attention_knockout(model, n=200, draws=20).row()
    """
    check_sizes(n, draws)
    if edge not in EDGES:
        raise ValueError(f"edge={edge!r}: give one of {sorted(EDGES)}.")
    window = check_window(model, window)
    score = choice_score(word_ids(model, ANSWERS).tolist())
    cal, cal_answers = _held_out(model, n, "train", seed)
    queries, keys = EDGES[edge]
    clean = accuracy(model, cal, cal_answers, score)
    starts = range(model.cfg.n_layers - window + 1)
    cal_drop = [
        clean - accuracy(model, cal, cal_answers, score, AttentionKnockout(list(range(s, s + window)), queries, keys))
        for s in starts
    ]
    best = int(torch.tensor(cal_drop).argmax())
    layers = list(range(best, best + window))
    qa, answers = _held_out(model, n, "test", seed)
    r = _drops(model, qa, answers, [(layers, edge)], draws, seed)[0]
    return Finding(
        f"attention knockout {edge} drops accuracy",
        name,
        "drop > drop with random non-image keys",
        verdict(bootstrap(r["drop"], seed=seed), r["control"], expect="greater"),
        {
            "first_layer": float(layers[0]),
            "window": float(window),
            "calibration_drop": float(cal_drop[best]),
            "clean_accuracy": r["clean"],
            "keys": r["keys"],
            "control_keys": r["control_keys"],
        },
    )
