"""The adapter table: where each part of a Hugging Face multimodal model lives.

An adapter is data, not a subclass. Adding a family means writing one ``Adapter(...)``
with the dotted paths of its language-model parts and, for image families, two small
functions: which positions receive image features, and how those positions map onto each
image's patch grid. Video and audio families add the same pair for their modality
(``video_mask`` / ``video_plans``, ``audio_mask`` / ``audio_plans``: a
:class:`~hooks_mm.layout.MediaPlan` per video or clip, with frames, cells and seconds).

Example::

    from hooks_mm.adapters import Adapter, register

    register(Adapter(
        name="my-vlm",
        architectures=("MyVLMForConditionalGeneration",),
        layers="model.language_model.layers",
        embed="model.language_model.embed_tokens",
        final_norm="model.language_model.norm",
        projector="model.multi_modal_projector",
        image_mask=token_id_mask("image_token_id"),
        image_plans=square_plans,
    ))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from hooks_mm.layout import MediaPlan

# An image plan says, for each LM position that receives the features of one image (in the
# order the model writes them), which tile of the image it shows and which (row, col) cell
# of that tile's grid.  col == -1 marks a separator that is not a patch (a newline /
# end-of-row token inside the image span).  Shape [n_tokens, 3] = (tile, row, col).
ImagePlan = Int[Tensor, "n_tokens 3"]

ImageMaskFn = Callable[[Any, Int[Tensor, "batch seq"]], Bool[Tensor, "batch seq"]]
ImagePlansFn = Callable[[Any, dict[str, Any]], list[ImagePlan]]
# (config, inputs, processor or None) -> one MediaPlan per video / audio clip, in the order
# the model writes their features; the processor tells frame rates where the inputs do not
MediaPlansFn = Callable[[Any, dict[str, Any], Any], list[MediaPlan]]
# (hf_model, inputs) -> [batch, seq] seconds from the model's own time-aligned position ids
PositionTimesFn = Callable[[Any, dict[str, Any]], Tensor | None]


@dataclass(frozen=True)
class Adapter:
    """Where the language model's parts live in one HF family, as dotted paths.

    Paths ``layers``, ``embed``, ``final_norm``, ``vision_out`` and ``projector`` are
    relative to the top-level HF model; the others are relative to one decoder layer.
    """

    name: str
    architectures: tuple[str, ...]
    layers: str
    embed: str
    final_norm: str
    # inside one decoder layer
    attn: str = "self_attn"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    ln1: str = "input_layernorm"
    # the norm whose INPUT is resid_mid (pre_feedforward_layernorm under sandwich norms)
    ln2: str = "post_attention_layernorm"
    # module whose OUTPUT is what the attention branch adds to the residual stream
    # (o_proj; the post-attention norm under sandwich norms); None: derived as mid - pre
    attn_out: str | None = "self_attn.o_proj"
    mlp: str = "mlp"
    gate: str | None = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    # module whose OUTPUT is what the MLP branch adds to the residual stream; None: derived
    mlp_out: str | None = "mlp"
    # cross-attention layers (Mllama): which layer indices, and the attribute holding the
    # cross-attention module in those layers; their attn_out / mlp_out are gated, so derived
    cross_attn_layers: Callable[[Any], list[int]] | None = None
    cross_attn: str = "cross_attn"
    # layers after which vision features are injected into the residual (Qwen3-VL deepstack)
    injection_layers: Callable[[Any], list[int]] | None = None
    # vision side: the projector module (its INPUT is the vision encoder's output as the
    # model uses it, its OUTPUT the features written at the image positions); None: no
    # continuous vision path (discrete-token families)
    projector: str | None = None
    # positions that receive image features / hold image codes
    image_mask: ImageMaskFn | None = None
    # grid plan of every image, in the order the model writes image features
    image_plans: ImagePlansFn | None = None
    # positions that receive video features and the plan (frames x cells, seconds) of each video
    video_mask: ImageMaskFn | None = None
    video_plans: MediaPlansFn | None = None
    # positions that receive audio features / hold audio codes, and the plan of each clip
    audio_mask: ImageMaskFn | None = None
    audio_plans: MediaPlansFn | None = None
    # audio side: module whose INPUT is the audio encoder's output and whose OUTPUT is what is
    # written at the audio positions (hook_audio_out / hook_audio_projector_out)
    audio_projector: str | None = None
    # seconds of every position from time-aligned position ids (Qwen2.5-Omni), else None
    position_times: PositionTimesFn | None = None
    # token ids that are structural (begin/end of image, vision start/end, row markers)
    special_ids: Callable[[Any], set[int]] = field(default=lambda config: set())
    # (hf_model, logits) -> logits: what the model's head does after the unembedding
    # (soft-capping, suppressed tokens), for code that unembeds a residual itself (the sweep's replay)
    logits_post: Callable[[Any, Tensor], Tensor] | None = None
    # extra forward kwargs the model needs that a plain tokenizer call lacks
    notes: str = ""


# ---------------------------------------------------------------------------------------
# Small helpers shared by the family tables


def config_get(config: Any, *names: str, default: Any = None) -> Any:
    """First attribute among ``names`` found on ``config`` or its text config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else None
    for obj in (config, text):
        if obj is None:
            continue
        for name in names:
            value = getattr(obj, name, None)
            if value is not None:
                return value
    return default


def vocab_id(config: Any, name: str) -> int | None:
    """The id of token ``name`` in the config's ``vocabulary_map`` (Chameleon, Emu3, Janus)."""
    return (getattr(config, "vocabulary_map", None) or {}).get(name)


def token_id_mask(*fields: str, vocab: str | None = None) -> ImageMaskFn:
    """Image positions are where ``input_ids`` equals the config's image token id: the first of
    ``fields`` the config holds, else the ``vocabulary_map`` entry ``vocab``."""

    def mask(config: Any, input_ids: Tensor) -> Tensor:
        token = config_get(config, *fields)
        if token is None and vocab is not None:
            token = vocab_id(config, vocab)
        if token is None:
            where = f"no {vocab!r} in vocabulary_map" if vocab is not None else f"none of {fields}"
            raise ValueError(f"config has {where}: cannot find image positions")
        return input_ids == token

    return mask


def special_ids(*fields: str, vocab: tuple[str, ...] = ()) -> Callable[[Any], set[int]]:
    """A ``special_ids`` entry: the ids the config holds under ``fields`` (one id or a list of
    ids each) and those of the ``vocabulary_map`` tokens ``vocab``."""

    def ids(config: Any) -> set[int]:
        out = {vocab_id(config, name) for name in vocab}
        for name in fields:
            value = config_get(config, name)
            out |= set(value) if isinstance(value, (list, tuple)) else {value}
        return {int(v) for v in out if v is not None}

    return ids


def runs(row: Tensor) -> list[tuple[int, int]]:
    """Maximal runs ``[start, end)`` of True in a 1-D bool tensor."""
    out: list[list[int]] = []
    for p in row.nonzero().flatten().tolist():
        if out and out[-1][1] == p:
            out[-1][1] = p + 1
        else:
            out.append([p, p + 1])
    return [(s, e) for s, e in out]


def run_lengths(mask: Tensor, attention_mask: Tensor | None = None) -> list[int]:
    """Lengths of the maximal runs of True in each row of ``mask`` (real positions only when
    ``attention_mask`` is given), row-major: one run per image / clip for code-run families."""
    if attention_mask is not None:
        mask = mask & attention_mask.bool()
    return [end - start for row in mask for start, end in runs(row)]


def pair(v: Any) -> tuple[int, int]:
    """``(h, w)`` of a size given as one int or a pair."""
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def patch_grid(config: Any, pixel_values: Tensor | None) -> tuple[int, int]:
    """``(rows, cols)`` of the vision tower's patch grid over ``pixel_values`` (else over the
    config's ``image_size``), ``patch_size`` pixels per patch."""
    vision = config.vision_config
    ph, pw = pair(vision.patch_size)
    if pixel_values is not None:
        h, w = int(pixel_values.shape[-2]), int(pixel_values.shape[-1])
    else:
        h, w = pair(vision.image_size)
    return h // ph, w // pw


def lm_paths(prefix: str) -> dict[str, str]:
    """``layers``, ``embed`` and ``final_norm`` of a decoder whose model sits at ``prefix``."""
    return {"layers": f"{prefix}.layers", "embed": f"{prefix}.embed_tokens", "final_norm": f"{prefix}.norm"}


def grid_plan(rows: int, cols: int, tile: int = 0, newline: bool = False) -> ImagePlan:
    """Row-major plan of one ``rows x cols`` grid; ``newline`` adds one separator per row."""
    r = torch.arange(rows).repeat_interleave(cols)
    c = torch.arange(cols).repeat(rows)
    plan = torch.stack([torch.full_like(r, tile), r, c], dim=1)
    if newline:
        sep = torch.stack([torch.full((rows,), tile), torch.arange(rows), torch.full((rows,), -1)], dim=1)
        plan = torch.cat([plan.view(rows, cols, 3), sep.view(rows, 1, 3)], dim=1).view(-1, 3)
    return plan


def square_side(n: int) -> tuple[int, int]:
    """(rows, cols) of a square grid of ``n`` tokens, or one row when ``n`` is no square."""
    side = math.isqrt(n)
    return (side, side) if side * side == n else (1, n)


def grid_plan_for(n: int, side: Any = None, tile: int = 0) -> ImagePlan:
    """Row-major plan of ``n`` tokens: the ``side = (rows, cols)`` grid when it holds ``n``, else
    :func:`square_side`."""
    rows, cols = side if side and side[0] * side[1] == n else square_side(n)
    return grid_plan(rows, cols, tile=tile)


def softcap_logits(hf_model: Any, logits: Tensor) -> Tensor:
    """``cap * tanh(logits / cap)`` with the text config's ``final_logit_softcapping`` (when set)."""
    cap = config_get(hf_model.config, "final_logit_softcapping")
    return torch.tanh(logits / cap) * cap if cap else logits


# text-config fields that scale what a block adds to the residual, the embedding or the logits
# (Granite, MiniCPM): a Llama-like table would put attn_out / mlp_out / hook_embed off by that factor
MULTIPLIERS = ("residual_multiplier", "embedding_multiplier", "logits_scaling", "scale_depth", "scale_emb")


def check_backbone(adapter: Adapter, layer: Any, text_config: Any) -> None:
    """Refuse a decoder block the adapter's table does not describe, before any hook point is named.

    The same wrapper (LLaVA, ...) sits over many backbones; a block with fused projections
    (Phi-3 ``qkv_proj``), post-norms (OLMo-2), sandwich norms (Gemma-2) or residual
    multipliers (Granite) would give hook points that are missing or silently not what is
    added to the residual stream.
    """
    a = adapter
    paths = [a.attn, f"{a.attn}.{a.q}", f"{a.attn}.{a.k}", f"{a.attn}.{a.v}", f"{a.attn}.{a.o}", a.ln1, a.ln2]
    paths += [a.mlp, f"{a.mlp}.{a.up}", f"{a.mlp}.{a.down}", *([f"{a.mlp}.{a.gate}"] if a.gate else [])]
    paths += [p for p in (a.attn_out, a.mlp_out) if p]
    missing = [p for p in paths if not _has(layer, p)]
    problems = [f"no module {', '.join(missing)}"] if missing else []
    children = {name for name, _ in layer.named_children()}
    if "pre_feedforward_layernorm" in children and a.ln2 != "pre_feedforward_layernorm":
        problems.append("sandwich norms (pre_/post_feedforward_layernorm) the table does not name")
    elif "post_feedforward_layernorm" in children and a.mlp_out != "post_feedforward_layernorm":
        problems.append("a norm after the MLP (post_feedforward_layernorm) the table does not name")
    scaled = {m: getattr(text_config, m) for m in MULTIPLIERS if getattr(text_config, m, None) not in (None, 1, 1.0)}
    if not problems and not scaled:
        return
    kind = getattr(text_config, "model_type", None) or type(layer).__name__
    fix = (
        "Register an Adapter whose paths match this block (hooks_mm.adapters.register) to use it."
        if problems
        else "Use a checkpoint over another backbone: an adapter table has no field for these multipliers yet."
    )
    if scaled:
        problems.append(f"residual / embedding / logit multipliers {scaled}")
    raise NotImplementedError(
        f"the {a.name} adapter's table describes a Llama-like decoder block, but this model's language "
        f"backbone ({kind}, {type(layer).__name__} with {', '.join(sorted(children))}) has "
        f"{'; '.join(problems)}: its hook points would be missing or not what is added to the residual stream. {fix}"
    )


def _has(module: Any, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False
