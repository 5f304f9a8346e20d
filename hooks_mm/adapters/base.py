"""The wrapper table: where each part of a Hugging Face multimodal model lives.

An adapter is data, not a subclass, in two tables:

- a *wrapper* row (:class:`Adapter`): where the decoder layers, embedding and final norm sit,
  where media enter (projector paths, which positions receive image / video / audio features,
  and how those positions map onto each image's patch grid: ``image_mask`` / ``image_plans``,
  ``video_mask`` / ``video_plans``, ``audio_mask`` / ``audio_plans``, a
  :class:`~hooks_mm.layout.MediaPlan` per video or clip), and the head's logit post-processing;
- a *backbone* row (:class:`~hooks_mm.adapters.backbones.Backbone` in ``BACKBONES``, keyed by the
  text config's ``model_type``): the decoder block (norm placement, fused projections, parallel
  blocks, residual multipliers). ``HookedMLLM`` chooses it when it wraps a model, so any wrapper
  composes with any backbone; the block fields read through it (``adapter.ln2``).

Adding a family is a wrapper row (a new multimodal class over a known backbone), a backbone
row (a known wrapper over a new decoder block), or both. A backbone ``model_type`` without a row
is read as Llama-like and accepted only when its block matches (otherwise refused, named). The
conformance tests pick a new row up: tests/test_conformance.py for a family in ``hooks_mm.zoo``,
tests/test_backbones.py for a backbone under LLaVA (add its config to ``CASES`` there).

Example::

    from hooks_mm.adapters import BACKBONES, Adapter, Backbone, register

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
    BACKBONES["my_lm"] = Backbone("my_lm", ln2="pre_mlp_norm", mlp_out="post_mlp_norm")
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from hooks_mm.adapters.backbones import BLOCK_FIELDS, LLAMA, Backbone, backbone_for
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
    """Where the language model's parts and the media live in one HF family, as dotted paths.

    Paths ``layers``, ``embed``, ``final_norm``, ``projector`` and ``audio_projector`` are
    relative to the top-level HF model; the block fields (``attn``, ``ln2``, ``mlp_out``, ...)
    are the ``backbone``'s, relative to one decoder layer.
    """

    name: str
    architectures: tuple[str, ...]
    layers: str
    embed: str
    final_norm: str
    # the decoder block (hooks_mm.adapters.backbones); None: chosen from the text config's model_type
    # when the model is wrapped (HookedMLLM). Block fields (adapter.ln2, ...) read through it.
    backbone: Backbone | None = None
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
    # the projector is called once per image / tile in a forward (LFM2-VL): hook_vision_out / hook_projector_out
    # then hold every call of the forward, concatenated along the token axis (hooks_mm.model.wiring)
    projector_per_call: bool = False
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
    # (forward kwargs) -> which call of the embedding module in one forward gives the embeddings the
    # model uses (hook_embed); None: the first. Granite Speech embeds input_ids again once audio is encoded
    embed_call: Callable[[dict[str, Any]], int] | None = None
    # seconds of every position from time-aligned position ids (Qwen2.5-Omni), else None
    position_times: PositionTimesFn | None = None
    # token ids that are structural (begin/end of image, vision start/end, row markers)
    special_ids: Callable[[Any], set[int]] = field(default=lambda config: set())
    # (hf_model, logits) -> logits: what the model's head does after the unembedding
    # (soft-capping, suppressed tokens), for code that unembeds a residual itself (the sweep's replay)
    logits_post: Callable[[Any, Tensor], Tensor] | None = None
    # extra forward kwargs the model needs that a plain tokenizer call lacks
    notes: str = ""

    def __getattr__(self, name: str) -> Any:
        # block fields (attn, q, ..., ln2, attn_out, mlp_out, gated) are the backbone's; an adapter whose
        # backbone is not chosen yet reads the Llama-like row
        if name in BLOCK_FIELDS:
            return getattr(self.__dict__.get("backbone") or LLAMA, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def with_backbone(self, config: Any) -> Adapter:
        """This adapter over the backbone row of ``config``'s text model (kept when already chosen)."""
        if self.backbone is not None:
            return self
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        row = backbone_for(text)  # a text model whose final norm is not ``norm`` (LFM2: embedding_norm)
        final = self.final_norm[: -len("norm")] + row.norm if self.final_norm.endswith(".norm") else self.final_norm
        paths = {"layers": self.layers, "embed": self.embed, "final_norm": final}
        if row.decoder:  # OPT: the text model's layers, embedding and final norm sit in its ``decoder``
            paths = {k: _under(v, row.decoder) for k, v in paths.items()}
        return replace(self, backbone=row, **paths)


def _under(path: str, decoder: str) -> str:
    """``"a.b.layers"`` -> ``"a.b.<decoder>.layers"`` (kept when the path already goes through it)."""
    if f"{decoder}." in f".{path}":
        return path
    head, _, tail = path.rpartition(".")
    return ".".join(filter(None, (head, decoder, tail)))


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
            raise ValueError(
                f"config has {where}, so the positions of that placeholder token cannot be found: set "
                f"config.{fields[0] if fields else 'vocabulary_map'} to the placeholder token's id (the "
                "tokenizer's image / video / audio token) before wrapping the model."
            )
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
