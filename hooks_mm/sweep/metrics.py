"""Metrics of logits for sweeps and patching: each factory binds a batch, returns ``f(logits)``.

``f(logits[batch, seq, vocab])`` returns a scalar (the mean over rows). Metrics that need
the clean run (``answer_logprob`` without targets, ``kl_to_clean``) take it from the clean
forward a sweep runs anyway; called on their own, they run the bare HF model once, on first
use (so hooks active at that time never leak into the clean reference).

Example::

    metric = answer_logprob(model, inputs)            # the clean answer at the last position
    result = sweep(model, inputs, configs, metric)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from hooks_mm.layout import Modality
from hooks_mm.model.meta import check_forward
from hooks_mm.selectors import Last, Selector
from hooks_mm.sweep.identity import weights_digest

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM

Metric = Callable[[Tensor], Tensor]


class PositionMetric:
    """A metric that reads one position per row: ``f(logits) = at(logits[rows, positions])``.

    ``fn(logits_at, state)`` computes it; ``state`` is given, or derived from the clean
    logits at those positions by ``from_clean`` (bound by every sweep's clean run with
    :meth:`bind`; called on its own, computed from ``model(batch)`` on first use, and again
    when that model's weights change). The sweep's fast path unembeds only those positions
    (``at`` gets [batch, vocab]). ``name`` says what it is, in tables and errors; a checkpoint
    identifies the metric by its name, positions, given ``state`` and functions
    (:func:`hooks_mm.sweep.identity.metric_identity`).
    """

    def __init__(
        self,
        positions: Tensor,
        fn: Callable[[Tensor, Any], Tensor],
        state: Any = None,
        *,
        from_clean: Callable[[Tensor], Any] | None = None,
        model: HookedMLLM | None = None,
        batch: Batch | None = None,
        name: str = "metric",
    ):
        self.positions, self.fn, self.state, self.name = positions, fn, state, name
        self.given_state, self.from_clean = state, from_clean
        self.rows = torch.arange(len(positions))
        self._from_clean, self._model, self._batch = from_clean, model, batch
        self._source: tuple[Any, str] | None = None  # (model, weights digest) the state was derived from

    def __repr__(self) -> str:
        return f"{self.name}(positions={self.positions.tolist()})"

    def identity_parts(self) -> tuple:
        """What this metric computes, for checkpoints: name, positions, given state, functions."""
        return (self.name, self.positions, self.given_state, self.fn, self.from_clean)

    def check_batch(self, batch: Batch) -> None:
        """An error when this metric was made for other inputs than ``batch`` (its positions, targets
        and clean reference are those inputs')."""
        check_metric_batch(self, batch)

    def bind(self, batch: Batch, clean_logits: Tensor, model: HookedMLLM | None = None) -> None:
        """Derive the clean state (when not given) from ``clean_logits``, a clean run of ``batch`` by
        ``model`` (default: the model this metric was made with).

        A sweep binds its own clean run every time, so a metric reused on another model compares
        with the clean run of the model swept; when that model's weights change afterwards, the
        state is derived again on next use (never a stale reference).
        """
        if self._from_clean is not None and self.given_state is None:
            self.bind_at(batch, clean_logits[self.rows, self.positions.to(clean_logits.device)], model)

    def bind_at(self, batch: Batch, clean_at: Float[Tensor, "batch vocab"], model: HookedMLLM | None = None) -> None:
        """:meth:`bind` from the clean logits at this metric's positions only (one row each), e.g. as a
        remote sweep gets them from the server for a weightless model. A no-op when the state is given."""
        if self._from_clean is None or self.given_state is not None:
            return
        self.check_batch(batch)
        if clean_at.shape[0] != len(self.positions):
            raise ValueError(
                f"{self.name}: {clean_at.shape[0]} rows of clean logits for its {len(self.positions)} rows: pass the "
                "clean logits at this metric's positions of the batch it was made for."
            )
        self.state = self._from_clean(clean_at.detach())  # type: ignore[misc]
        source = model or self._model
        self._source = (source, weights_digest(source.hf_model)) if source is not None else None

    def _ready(self) -> Any:
        if self._from_clean is None or self.given_state is not None:
            return self.state
        source = self._source
        stale = source is not None and weights_digest(source[0].hf_model) != source[1]
        if self.state is None or stale:
            model = source[0] if source is not None else self._model
            fix = ", which computes the clean run on the server; or give the state (answer_logprob(..., targets=))"
            check_forward(model, f"{self.name} derives its reference from the clean run", fix)
            with torch.no_grad():  # the bare HF forward: clean even inside model.hooks(...) / model.interventions(...)
                logits = model.hf_model(**self._batch.model_inputs).logits  # type: ignore[union-attr]
            self.bind(self._batch, logits, model)  # type: ignore[arg-type]
        return self.state

    def at(self, logits_at: Tensor) -> Tensor:
        return self.fn(logits_at, self._ready())

    def reducer(self) -> Callable[[Tensor], Tensor]:
        """``at`` as a plain closure (no hooks_mm objects), e.g. to ship to an NDIF server."""
        fn, state = self.fn, self._ready()
        return lambda at: fn(at, state)

    def __call__(self, logits: Tensor) -> Tensor:
        return self.at(logits[self.rows, self.positions.to(logits.device)])


def check_metric_batch(metric: Any, batch: Batch) -> None:
    """An error when ``metric`` (a :class:`PositionMetric` or a metric function made by this module)
    was made for other inputs than ``batch``: same shapes are not enough, the tensors must be equal."""
    mine = metric._batch if isinstance(metric, PositionMetric) else getattr(metric, "made_for", None)
    if mine is None or mine is batch:
        return
    a, b = mine.inputs, batch.inputs
    same = set(a) == set(b) and all(
        not torch.is_tensor(a[k]) or (a[k].shape == b[k].shape and torch.equal(a[k].cpu(), b[k].cpu())) for k in a
    )
    if not same:
        name = getattr(metric, "name", None) or getattr(metric, "__qualname__", "metric").split(".")[0]
        raise ValueError(
            f"this {name} metric was made for other inputs ({tuple(mine.shape)}) than the ones run here "
            f"({tuple(batch.shape)}): its positions, targets and clean reference belong to those inputs. Make it "
            f"with the inputs you run, e.g. {name}(model, inputs)."
        )


def _rows_at(batch: Batch, positions: Selector) -> Tensor:
    counts = batch.layout.select(positions).sum(1)
    if not bool((counts == 1).all()):  # ragged selections too (a row without an image): never a padded slot
        raise ValueError(
            f"{positions!r} must pick one position per row, got {counts.tolist()} positions per row: pass a "
            "selector with exactly one in every row, e.g. Last() or LastN(1, of=Text())."
        )
    return batch.layout.indices(positions)[:, 0]


def _per_row(values: Sequence[int] | Tensor | int, rows: int, vocab: int | None, what: str) -> Tensor:
    """Token ids, one per row (an int: the same for every row); checked against the batch and vocabulary."""
    t = torch.as_tensor(values)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must be integer token ids, got {t.dtype}: pass e.g. [tok_id_row0, tok_id_row1].")
    t = t.reshape(-1).long().expand(rows) if t.dim() == 0 else t.reshape(-1).long()
    if len(t) != rows:
        raise ValueError(
            f"{what} has {len(t)} token ids for a batch of {rows} rows: give one id per row (or one int for all rows)."
        )
    if vocab and bool(((t < 0) | (t >= vocab)).any()):
        raise ValueError(f"{what} {t.tolist()} has ids outside the vocabulary 0..{vocab - 1}: pass token ids.")
    return t


def answer_logprob(
    model: HookedMLLM, inputs: Any, targets: Sequence[int] | Tensor | None = None, positions: Selector | None = None
) -> PositionMetric:
    """Mean log-probability of ``targets`` (default: the clean argmax) at ``positions`` (last).

    ``targets``: one token id per row (or one int for every row).
    """
    batch = model.prepare(inputs)
    pos = _rows_at(batch, positions or Last())
    rows = torch.arange(len(pos))

    def logprob(at: Tensor, tgt: Tensor) -> Tensor:
        return at.float().log_softmax(-1)[rows, tgt.to(at.device)].mean()

    if targets is not None:
        tgt = _per_row(targets, len(pos), model.cfg.d_vocab, "answer_logprob: targets")
        return PositionMetric(pos, logprob, tgt, model=model, batch=batch, name="answer_logprob")
    return PositionMetric(
        pos, logprob, from_clean=lambda clean: clean.argmax(-1), model=model, batch=batch, name="answer_logprob"
    )


def logit_diff(
    model: HookedMLLM, inputs: Any, correct: Sequence[int], wrong: Sequence[int], positions: Selector | None = None
) -> PositionMetric:
    """Mean of ``logit[correct] - logit[wrong]`` per row at ``positions`` (last).

    ``correct`` / ``wrong``: one token id per row (or one int for every row).
    """
    batch = model.prepare(inputs)
    pos = _rows_at(batch, positions or Last())
    rows = torch.arange(len(pos))
    c = _per_row(correct, len(pos), model.cfg.d_vocab, "logit_diff: correct")
    w = _per_row(wrong, len(pos), model.cfg.d_vocab, "logit_diff: wrong")
    return PositionMetric(
        pos,
        lambda at, cw: (at[rows, cw[0].to(at.device)] - at[rows, cw[1].to(at.device)]).float().mean(),
        (c, w),
        model=model,
        batch=batch,
        name="logit_diff",
    )


def kl_to_clean(model: HookedMLLM, inputs: Any, positions: Selector | None = None) -> PositionMetric:
    """Mean KL(clean || run) of the next-token distributions at ``positions`` (last)."""
    batch = model.prepare(inputs)
    pos = _rows_at(batch, positions or Last())

    def kl(at: Tensor, clean: Tensor) -> Tensor:
        run, clean = at.float().log_softmax(-1), clean.to(at.device)
        return (clean.exp() * (clean - run)).sum(-1).mean()

    return PositionMetric(
        pos, kl, from_clean=lambda c: c.float().log_softmax(-1), model=model, batch=batch, name="kl_to_clean"
    )


PLACEHOLDER_KEYS = ("image_token_index", "image_token_id", "video_token_index", "video_token_id", "audio_token_id")


def placeholder_ids(model: HookedMLLM) -> set[int]:
    """Token ids the model's config names as media placeholders (replaced by features inside the model)."""
    cfg = model.hf_model.config
    return {v for k in PLACEHOLDER_KEYS if isinstance(v := getattr(cfg, k, None), int)}


def predicts(model: HookedMLLM, batch: Any, modality: str) -> bool:
    """Whether ``modality``'s positions in ``batch`` (model inputs) hold tokens the model predicts: text
    always; an image (audio, video) only where its positions are real token ids (discrete-token models), not
    one placeholder token the model replaces by features (llava, qwen2-vl, chameleon's input ids).

    Example::

        predicts(model, inputs, "image")   # False on toy-llava, True on toy-anygpt
    """
    batch = model.prepare(batch)
    want = Modality[modality.upper()]
    if want == Modality.TEXT:
        return True
    held = set(batch["input_ids"][batch.layout.modality == want].unique().tolist())
    return not (len(held) == 1 and held <= placeholder_ids(model))


def modality_nll(model: HookedMLLM, inputs: Any, modality: str = "text", per_row: bool = False) -> Metric:
    """Mean next-token NLL over the tokens of one modality (``exp`` of it is the perplexity).

    Token ``t`` is predicted at position ``t - 1``; only real (non-padding) predictions count.
    ``per_row=True``: one mean per row (``[batch]``; NaN for a row without such tokens), for
    per-example intervals.
    """
    batch = model.prepare(inputs)
    layout = batch.layout
    want = Modality[modality.upper()]
    ids = batch["input_ids"]
    target = (layout.modality[:, 1:] == want) & (layout.modality[:, :-1] != Modality.PAD)
    if not bool(target.any()):
        raise ValueError(f"no {modality} tokens to predict in this batch (present: {layout.summary()}).")
    if not predicts(model, batch, modality):
        raise ValueError(
            f"modality_nll(modality={modality!r}): every {modality} position holds a placeholder token "
            f"(ids {sorted(placeholder_ids(model))}) that the model replaces by features, so its NLL scores "
            f"predicting the placeholder, not the {modality}: a perplexity of {modality} tokens needs a model that "
            "predicts them (discrete-token models such as toy-anygpt); use modality='text' here."
        )

    def metric(logits: Tensor) -> Tensor:
        lp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None].to(logits.device)).squeeze(-1)
        t = target.to(logits.device)
        if per_row:
            return -(lp * t).sum(1) / t.sum(1)
        return -lp[t].mean()

    metric.made_for = batch  # type: ignore[attr-defined]  # checked by sweeps: check_metric_batch
    metric.__qualname__ = "modality_nll"
    return metric
