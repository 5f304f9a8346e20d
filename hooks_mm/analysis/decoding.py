"""Contrastive decoding as generation: VCD, TCCD or any intervention spec as the reference run.

At every step the next token is chosen from ``(1 + alpha) log p(y | x) - alpha log p(y | x_ref)``,
with the adaptive plausibility constraint of VCD (-inf where ``p(y | x) < beta max_w p(w | x)``,
from the clean distribution), by argmax or by sampling. The reference run sees the same
generated tokens and keeps its own KV cache: one HF ``generate`` runs the batch doubled (rows
``0..B-1`` clean, ``B..2B-1`` the reference), and a logits processor combines row ``i`` with row
``B + i``, picks the token and gives it to both rows.

References: :func:`vcd` (the image noised by a diffusion forward step), :func:`tccd` (the text
after the image collapsed onto a centroid bank, at the prompt's text AND at every generated
position, which is text after the image too, as the method applies it to every text position
after the image), or any intervention spec (with ``sources``), applied to the reference rows only.

Example::

    tokens = contrastive_generate(model, inputs, vcd(), alpha=1.0, beta=0.1, max_new_tokens=20)
    tokens, logits = contrastive_generate(model, inputs, tccd(text_bank, a_interp=0.4), beta=0.0,
                                          return_logits=True)         # logits [batch, step, vocab]
    model.to_str_tokens(tokens[0, inputs["input_ids"].shape[1]:])
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, TopPLogitsWarper

from hooks_mm.analysis.erasure import check_bank, check_reaches_last, noised_pixels
from hooks_mm.interventions import CentroidBank, CentroidReplacement
from hooks_mm.interventions.base import SELECTOR_FIELDS, Compose, GenerationContext, Intervention, check_number
from hooks_mm.layout import generation_layout
from hooks_mm.model.checks import check_left_padded
from hooks_mm.model.concat import concat_inputs
from hooks_mm.selectors import After, Image, Rows

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM

# generate keywords passed through; anything else that HF turns into a logits processor would act before the contrast
PASSED = ("eos_token_id", "pad_token_id", "stopping_criteria", "use_cache")
ROW_OPS = ("ablate", "steer", "centroid", "zero", "restore")  # ops whose argument 1 is a [batch, seq] mask


@dataclass
class Reference:
    """The reference run of contrastive decoding: ``kind`` "vcd" (noised pixels: ``t``, ``seed``)
    or "spec" (the clean inputs under ``spec``, reading ``sources``). Build it with :func:`vcd`,
    :func:`tccd` or :func:`spec_reference`."""

    kind: str
    spec: Intervention | None = None
    sources: dict[str, Any] | None = None
    t: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("vcd", "spec") or (self.kind == "spec") != isinstance(self.spec, Intervention):
            raise ValueError(
                f"Reference(kind={self.kind!r}, spec={type(self.spec).__name__}): build references with vcd(), "
                "tccd(bank) or spec_reference(spec, sources)."
            )


def vcd(t: int = 500, seed: int = 0) -> Reference:
    """VCD's reference: the image noised by the diffusion forward step ``t`` of 1000
    (:func:`~hooks_mm.analysis.erasure.noised_pixels`, noise seed ``seed``)."""
    if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= 1000:
        raise ValueError(f"vcd(t={t!r}): t is a diffusion step, an int in 1..1000 (VCD uses 500).")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"vcd(seed={seed!r}): the noise seed is an int.")
    return Reference("vcd", t=t, seed=seed)


def tccd(text_bank: CentroidBank, a_interp: float = 0.4) -> Reference:
    """TCCD's reference: the clean inputs under ``CentroidReplacement(text_bank, After(Image()), a_interp)``,
    applied at every text position after the image, the generated ones included."""
    check_bank(text_bank, After(Image()), "text_bank")
    return Reference("spec", CentroidReplacement(text_bank, After(Image()), a_interp))


def spec_reference(spec: Intervention, sources: dict[str, Any] | None = None) -> Reference:
    """Any intervention spec as the reference run (``sources``: the runs it reads, as in
    ``run_with_interventions``); it is applied to the reference rows only, at the prompt and
    at the generated positions its selectors pick."""
    if not isinstance(spec, Intervention):
        raise TypeError(f"spec_reference: give an intervention spec, got {type(spec).__name__}.")
    return Reference("spec", spec, dict(sources) if sources is not None else None)


def contrast(
    clean: Float[Tensor, "batch vocab"], reference: Float[Tensor, "batch vocab"], alpha: float, beta: float
) -> Float[Tensor, "batch vocab"]:
    """``(1 + alpha) log p(y|x) - alpha log p(y|x_ref)``, -inf where ``p(y|x) < beta max_w p(w|x)``
    (``beta = 0``: no cut). TCCD's form ``l + alpha (l - l_ref)`` on raw logits differs by a
    per-row constant: the same argmax and the same sampling distribution."""
    lp, ref = clean.float().log_softmax(-1), reference.float().log_softmax(-1)
    out = (1 + alpha) * lp - alpha * ref
    if beta > 0:
        out = out.masked_fill(lp < math.log(beta) + lp.max(-1, keepdim=True).values, float("-inf"))
    return out


def pick(
    scores: Float[Tensor, "batch vocab"],
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, " batch"]:
    """Argmax, or a draw from ``softmax(scores / temperature)`` restricted to the top-p nucleus
    (HF's TopPLogitsWarper), with ``generator`` (on its own device)."""
    if not do_sample:
        return scores.argmax(-1)
    scores = scores / temperature
    if top_p is not None and top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    probs = scores.softmax(-1)
    if generator is not None:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(scores.device)


class Contrast(LogitsProcessor):
    """Combines row ``i`` (clean) with row ``rows + i`` (reference), picks a token, and returns
    scores that make HF's greedy step append it to both rows; keeps each step's contrast."""

    def __init__(self, rows: int, alpha: float, beta: float, record: bool, **sampling: Any):
        self.rows, self.alpha, self.beta, self.record, self.sampling = rows, alpha, beta, record, sampling
        self.steps: list[Tensor] = []

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        b = self.rows
        if scores.shape[0] != 2 * b or not bool(torch.isfinite(scores).all()):
            raise RuntimeError(
                f"contrastive decoding got scores of shape {tuple(scores.shape)} for {b} + {b} rows, or non-finite "
                "ones: NaN / inf logits (from the model or the reference's edit: check the spec's values and the "
                "dtype), or another logits processor acting before the contrast (report that as a bug)."
            )
        cd = contrast(scores[:b], scores[b:], self.alpha, self.beta)
        if self.record:
            self.steps.append(cd)
        token = pick(cd, **self.sampling).repeat(2)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(2 * b, device=out.device), token] = 0.0
        return out


@torch.no_grad()
def contrastive_generate(
    model: "HookedMLLM",
    inputs: Any,
    reference: Reference | Intervention,
    *,
    alpha: float = 1.0,
    beta: float = 0.1,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    sources: dict[str, Any] | None = None,
    return_logits: bool = False,
    **generate_kwargs: Any,
) -> Int[Tensor, "batch total"] | tuple[Int[Tensor, "batch total"], Float[Tensor, "batch step vocab"]]:
    """Generate with contrastive decoding against ``reference`` (:func:`vcd`, :func:`tccd`, or a spec).

    Each step's token comes from ``(1 + alpha) log p(y|x) - alpha log p(y|x_ref)`` with
    -inf where ``p(y|x) < beta max_w p(w|x)`` (VCD: alpha 1, beta 0.1; TCCD's paper uses no cut:
    ``beta=0.0``), by argmax or (``do_sample``) by sampling at ``temperature`` within top-p
    ``top_p`` with ``generator``. The reference run sees the same tokens, with its own KV cache.
    Returns the clean rows' tokens [batch, prompt + new] as ``model.generate`` does (rows that
    reached EOS are padded); with ``return_logits=True`` also each step's contrast [batch, step,
    vocab] (after EOS a row's values are those of its padding: ignore them). ``generate_kwargs``:
    ``eos_token_id``, ``pad_token_id``, ``stopping_criteria``, ``use_cache`` (HF's meaning); the
    model's own generation config (repetition penalty, top-k ...) is not applied.

    Example::

        tokens = contrastive_generate(model, inputs, vcd(), alpha=1.0, max_new_tokens=20)
        tokens = contrastive_generate(model, inputs, tccd(text_bank), beta=0.0, do_sample=True,
                                      generator=torch.Generator().manual_seed(0))
    """
    if isinstance(reference, Reference) and sources is not None:
        raise ValueError("contrastive_generate: sources belong to the spec: pass spec_reference(spec, sources).")
    if not isinstance(reference, (Reference, Intervention)):
        raise TypeError(f"contrastive_generate: reference is vcd(), tccd(bank) or a spec, got {reference!r:.80}.")
    ref = reference if isinstance(reference, Reference) else spec_reference(reference, sources)
    sampling = check_options(alpha, beta, max_new_tokens, do_sample, temperature, top_p, generator, generate_kwargs)
    batch = model.prepare(inputs)
    check_left_padded(batch)
    rows = batch.shape[0]
    if ref.kind == "vcd":
        if "pixel_values" not in batch:
            raise ValueError(
                "vcd(): visual contrastive decoding noises pixel_values, and these inputs have none (a discrete-token "
                "or text-only batch): give inputs with images, or use tccd(bank) / a spec as the reference."
            )
        noised = noised_pixels(batch["pixel_values"], ref.t, seed=ref.seed)
        doubled = model.prepare(concat_inputs(batch, dict(batch.inputs, pixel_values=noised)))
        run: dict[str, Any] = {}
    else:
        check_reaches_last(model, batch, ref.spec)  # a centroid replacement that cannot change the first token
        doubled = model.prepare(concat_inputs(batch, batch))
        spec = on_rows(ref.spec, range(rows, 2 * rows))
        two = {k: concat_inputs(model.prepare(v), model.prepare(v)) for k, v in (ref.sources or {}).items()}
        ext = doubled.with_layout(generation_layout(doubled.layout, doubled.shape[1] + max_new_tokens))
        check_reference_rows(model, ext, spec, two, rows)
        run = {"interventions": spec, "sources": two or None}
    proc = Contrast(rows, float(alpha), float(beta), return_logits, **sampling)
    with plain_generation_config(model):
        out = model.generate(
            doubled,
            max_new_tokens=max_new_tokens,
            logits_processor=LogitsProcessorList([proc]),
            **run,
            **generate_kwargs,
        )
    tokens = out[:rows]
    if not return_logits:
        return tokens
    return tokens, torch.stack(proc.steps, 1) if proc.steps else torch.empty(rows, 0, model.cfg.d_vocab)


def check_options(
    alpha: Any,
    beta: Any,
    max_new_tokens: Any,
    do_sample: Any,
    temperature: Any,
    top_p: Any,
    generator: Any,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """The sampling options, checked; an error naming the fix for anything out of range."""
    alpha = check_number(alpha, "contrastive_generate: alpha")
    if alpha < 0:
        raise ValueError(
            f"contrastive_generate: alpha={alpha} is negative: that amplifies the reference instead of contrasting "
            "against it; give alpha >= 0 (1.0 in VCD and TCCD; 0 is plain decoding)."
        )
    beta = check_number(beta, "contrastive_generate: beta")
    if not 0 <= beta <= 1:
        raise ValueError(
            f"contrastive_generate: beta={beta} is outside [0, 1]: it is the plausibility cut (keep tokens with "
            "p >= beta * max p); give 0.1 (VCD) or 0.0 (no cut, TCCD)."
        )
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"contrastive_generate: max_new_tokens={max_new_tokens!r}: give a positive int.")
    if not isinstance(do_sample, bool):
        raise TypeError(f"contrastive_generate: do_sample={do_sample!r}: give True or False.")
    if check_number(temperature, "contrastive_generate: temperature") <= 0:
        raise ValueError(f"contrastive_generate: temperature={temperature} must be > 0 (1.0: the distribution as is).")
    if top_p is not None and not 0 < check_number(top_p, "contrastive_generate: top_p") <= 1:
        raise ValueError(f"contrastive_generate: top_p={top_p} must be in (0, 1], or None for no nucleus cut.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"contrastive_generate: generator must be a torch.Generator, got {type(generator).__name__}.")
    if kwargs.get("num_beams", 1) != 1:
        raise ValueError(
            f"contrastive_generate: num_beams={kwargs['num_beams']}: contrastive decoding chooses one token per "
            "step (greedy or sampled); beam search is not supported: leave num_beams out."
        )
    kwargs.pop("num_beams", None)
    if other := sorted(set(kwargs) - set(PASSED)):
        raise ValueError(
            f"contrastive_generate: {other} not supported: HF would apply them to the logits before the contrast. "
            "Sample with do_sample / temperature / top_p / generator; pass only " + ", ".join(PASSED) + "."
        )
    return {"do_sample": do_sample, "temperature": float(temperature), "top_p": top_p, "generator": generator}


def on_rows(spec: Intervention, rows: range) -> Intervention:
    """``spec`` with every position selector (positions, source_positions, queries) restricted to ``rows``."""
    if isinstance(spec, Compose):
        return Compose([on_rows(item, rows) for item in spec.items])
    changes = {
        f: getattr(spec, f) & Rows(rows)
        for f in SELECTOR_FIELDS
        if f != "keys" and getattr(spec, f, None) is not None and hasattr(spec, f)
    }
    if not changes:
        raise ValueError(
            f"contrastive_generate: {type(spec).__name__} has no positions to restrict to the reference rows, so "
            "it would edit the clean rows too: use a spec with positions= (Steer, NeuronAblation, "
            "CentroidReplacement, Patch, AttentionKnockout, Skip)."
        )
    return dataclasses.replace(spec, **changes)


def check_reference_rows(model: "HookedMLLM", ext: "Batch", spec: Intervention, sources: Any, rows: int) -> None:
    """Refuse a spec whose resolved edits would touch a clean row (0..rows-1) of the doubled batch
    (``ext``: its layout extended over the generated positions)."""
    for edit in spec.edits(GenerationContext(model, ext, sources)):
        kind, arg = edit.op[0], edit.op[1] if len(edit.op) > 1 else None
        if kind in ROW_OPS or kind == "knock":
            touched = bool(arg[:rows].any())
        elif kind == "copy":
            touched = bool((torch.as_tensor(edit.op[4]) < rows).any())
        elif kind == "grid":
            touched = any(pair[0] < rows for pair in edit.op[2])
        elif kind == "keep":
            touched = False
        else:
            touched = True
        if touched:
            raise ValueError(
                f"contrastive_generate: the reference spec's {kind!r} edit at {edit.hook} would change the clean rows "
                "too, so the contrast would compare two edited runs: give a spec whose edits follow its positions."
            )


@contextlib.contextmanager
def plain_generation_config(model: "HookedMLLM") -> Iterator[None]:
    """The model's generation config set aside for the block, but for its token ids (HF fills unset
    options from it, so a checkpoint's repetition penalty or suppressed tokens would act before the contrast)."""
    hf = model.hf_model
    own = hf.generation_config
    hf.generation_config = GenerationConfig(
        bos_token_id=own.bos_token_id, eos_token_id=own.eos_token_id, pad_token_id=own.pad_token_id
    )
    try:
        yield
    finally:
        hf.generation_config = own
