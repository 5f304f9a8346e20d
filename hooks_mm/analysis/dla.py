"""Direct logit attribution to every image patch through every attention head's OV circuit.

For a target token (or the logit difference of two) at a query position ``q`` (default: the last real position of
each row), head ``h`` of layer ``l`` moves from source position ``s`` into the residual at ``q``::

    contribution(l, h, s) = pattern[l, h, q, s] * (v[l, s, h] @ W_O[l, h]) . d_l

``d`` is the unembedding direction of the target through the final norm with its scale frozen at the real final
residual of ``q`` (TransformerLens's ``apply_ln_to_stack``): RMSNorm ``w * x / rms(x_q)`` (Gemma's ``(1 + w)``
included), LayerNorm ``w * (x - mean(x)) / std(x_q)``, read from the norm module by
:func:`~hooks_mm.model.norms.norm_form` (and checked to reproduce its output at ``q``). The logit attributed is the
head's raw output ``final_norm(x) @ W_U + b_U``, before the family's post-processing (soft-capping, logit scaling:
``model.resid_to_logits``). Families whose attention output passes a post-norm before the residual (Gemma-2/3
sandwich norms, GLM-4V) use that norm's scale frozen at the real attention output of ``q`` too:
``d_l = post_norm_frozen^T d``. Summed over every source position (image and text) and every head, the
contributions equal the direct logit attribution of ``blocks.{l}.hook_attn_out`` at ``q`` minus
its bias term (o_proj's bias and the post-norm's bias): checked on every call (an error, never a wrong number).

Layers with no per-head OV circuit are refused with the reason: cross-attention (Mllama), linear attention /
convolution mixers (hybrid stacks), values read through per-head norms or a gated query (Gemma-4, Qwen3.5), and
blocks whose attention output is derived (Granite's residual multiplier, Peri-LN).

Example::

    dla = patch_dla(model, inputs, target=red_id, against=blue_id)     # logit(red) - logit(blue) at the last position
    dla.image_total(0)             # [tile, rows, cols]: summed over layers and heads, on image 0's patch grid of row 0
    dla.on_grid(0).shape           # [layer, head, tile, rows, cols]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn

from hooks_mm.analysis.lens import ImagePositions, check_layers, check_token_ids, image_positions
from hooks_mm.layout import Modality, ModalityLayout
from hooks_mm.model.norms import NormForm, norm_form
from hooks_mm.selectors import Last, Selector, as_selector, is_int

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM


# ------------------------------------------------------------------ a norm with its scale frozen


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the self-checks for activations of ``dtype`` (1e-3 in float32, wider in half)."""
    return max(1e-3, 8 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3


@dataclass
class FrozenNorm:
    """A norm (its :class:`~hooks_mm.model.norms.NormForm`, read and checked by ``norm_form``) with its scale frozen
    at real inputs ``x`` [rows, d_model], and checked to reproduce the output ``out`` seen there."""

    form: NormForm
    scale: Float[Tensor, "rows 1"]

    @classmethod
    def at(cls, module: nn.Module, x: Tensor, out: Tensor, where: str) -> FrozenNorm:
        form = norm_form(module, x, where=where)
        frozen = cls(form, form.scale(x))
        err = float((frozen.linear(x) + frozen.bias - out.float()).abs().max())
        if err > tolerance(out.dtype) * (1.0 + float(out.float().abs().max())):
            raise RuntimeError(
                f"the {where} ({form.name}) with its scale frozen does not reproduce its output at the query (max "
                f"error {err:.3g}): its input is not the residual hooks_mm reads there; no attribution is returned."
            )
        return frozen

    @property
    def bias(self) -> Tensor | float:
        b = self.form.bias_term
        return 0.0 if b is None else b.float()

    def linear(self, c: Float[Tensor, "rows d_model"]) -> Float[Tensor, "rows d_model"]:
        """The frozen map without the bias, row by row."""
        return self.form.apply(c.float(), self.scale).float()

    def transpose(self, d: Float[Tensor, "rows d_model"]) -> Float[Tensor, "rows d_model"]:
        """The direction ``d'`` with ``linear(c) . d == c . d'`` for every ``c`` (row by row)."""
        if self.form.identity:
            return d
        out = d / self.scale
        out = out * self.form.weight.float() if self.form.weight is not None else out
        return out - out.mean(-1, keepdim=True) if self.form.centre else out


# ------------------------------------------------------------------ the attribution


@dataclass
class PatchDLA:
    """:func:`patch_dla`'s result (all on the CPU, float32).

    ``per_source`` [batch, layer, head, seq]: every source position's contribution through every head of each
    attributed layer (``layers``) to the target logit (difference) at ``query`` [batch]; ``attn_out_dla``
    [batch, layer]: the direct logit attribution of ``hook_attn_out`` at the query minus its bias term, which
    ``per_source`` sums to (checked); ``logit`` [batch]: the target logit (difference) before the family's
    post-processing; ``direction`` [batch, d_model]: ``d``, the frozen unembedding direction at the final residual.
    """

    image: int
    layers: list[int]
    target: Int[Tensor, " batch"]
    against: Int[Tensor, " batch"] | None
    query: Int[Tensor, " batch"]
    per_source: Float[Tensor, "batch layer head seq"]
    attn_out_dla: Float[Tensor, "batch layer"]
    logit: Float[Tensor, " batch"]
    direction: Float[Tensor, "batch d_model"]
    where: dict[int, ImagePositions] = field(repr=False)
    layout: ModalityLayout = field(repr=False)  # the batch's layout (the views lay the cells out with it)

    def _at(self, row: int) -> ImagePositions:
        if row not in self.where:
            raise KeyError(f"row {row} holds no image {self.image}; rows holding it: {sorted(self.where)}.")
        return self.where[row]

    def on_grid(self, row: int) -> Float[Tensor, "layer head tile rows cols"]:
        """Row ``row``'s contributions from image ``image``'s patches, on its patch grid (NaN: no cell)."""
        w = self._at(row)
        return w.on_grid(self.per_source[row][..., w.positions])

    def image_total(self, row: int, layers: bool = True, heads: bool = True) -> Tensor:
        """:meth:`on_grid` summed over the layers and / or the heads (default both: [tile, rows, cols])."""
        g = self.on_grid(row)
        g = g.sum(1) if heads else g
        return g.sum(0) if layers else g

    def values(self, row: int) -> Float[Tensor, " seq"]:
        """Row ``row``'s per-position contributions summed over layers and heads, NaN outside image ``image``: the
        ``[seq]`` values :func:`hooks_mm.vis.patch_heatmap` draws."""
        w = self._at(row)
        out = torch.full(self.per_source.shape[-1:], float("nan"))
        out[w.positions] = self.per_source[row].sum((0, 1))[w.positions]
        return out


def attribution_layers(model: HookedMLLM, layers: Any) -> list[int]:
    """The attention layers asked for, each with a per-head OV circuit; an error naming those without one."""
    cfg, a = model.cfg, model.adapter
    chosen = check_layers(layers, cfg.n_layers, "layers")
    why = {}
    for l in chosen:
        if l in cfg.cross_attn_layers:
            why[l] = "a cross-attention layer (its keys are the vision tiles, not positions of the sequence)"
        elif l in cfg.mixer_layers:
            why[l] = f"a {cfg.mixer_layers[l]} layer (no attention pattern or per-head values)"
        elif a.qkv_norms or a.q_gated:
            why[l] = "values read through per-head norms or an output gated by the query (" + a.backbone.name + ")"
        elif a.attn_out is None:
            why[l] = "an attention output derived inside the block (residual multiplier or Peri-LN norms)"
    if why:
        listed = "; ".join(f"layer {l}: {r}" for l, r in why.items())
        raise NotImplementedError(
            f"no per-head OV circuit to attribute through in {cfg.architecture}: {listed}. Pass layers= the "
            "attention layers (plain softmax attention whose o_proj output is what is added, maybe through a norm)."
        )
    return chosen


def _query(layout: Any, query: Selector | int) -> Tensor:
    mask = layout.at_positions([query]) if is_int(query) else layout.select(as_selector(query))
    counts = mask.sum(1)
    if not bool((counts == 1).all()):
        raise ValueError(
            f"query={query!r} selects {counts.tolist()} positions per row: give a selector (or position) that picks "
            "exactly one position in every row (default: Last(), the last real position)."
        )
    q = mask.float().argmax(1)
    pad = (layout.modality[torch.arange(len(q)), q] == Modality.PAD).nonzero().flatten().tolist()
    if pad:
        raise ValueError(
            f"query={query!r} is a padding position in rows {pad}: nothing is predicted there; give a real position "
            "in every row (default: Last(), the last real position)."
        )
    return q


@torch.no_grad()
def patch_dla(
    model: HookedMLLM,
    inputs: Any,
    target: int | Sequence[int] | Tensor,
    *,
    against: int | Sequence[int] | Tensor | None = None,
    query: Selector | int | None = None,
    image: int = 0,
    layers: int | Sequence[int] | None = None,
) -> PatchDLA:
    """Per-patch direct logit attribution (see the module docstring).

    ``target`` / ``against``: a token id, or one per row; with ``against`` the attributed value is
    ``logit(target) - logit(against)``. ``query``: the position read (default ``Last()``). ``image``: whose
    patches the grid views show (``per_source`` holds every source position). ``layers``: the attention layers
    (default all).

    Example::

        dla = patch_dla(model, inputs, target=answer_ids, query=Last())
        dla.image_total(row=0)          # [tile, rows, cols]
    """
    batch = model.prepare(inputs)
    layout = batch.layout
    rows = layout.shape[0]
    chosen = attribution_layers(model, layers)
    where = image_positions(layout, image)
    d_vocab = int(model.cfg.d_vocab)
    tgt = _per_row(check_token_ids(target, d_vocab, "target"), rows, "target")
    neg = None if against is None else _per_row(check_token_ids(against, d_vocab, "against"), rows, "against")
    if neg is not None and bool((neg == tgt).any()):
        raise ValueError("against equals target in some row: the logit difference would be 0; pick another token.")
    q = _query(layout, Last() if query is None else query)
    dev = model.cfg.device
    qd, ar = q.to(dev), torch.arange(rows, device=dev)
    kept: dict[str, Tensor] = {}

    def at_query(dim: int):  # noqa: ANN202
        def save(t: Tensor, hook: Any) -> None:
            kept[hook.name] = t[ar, :, qd] if dim == 2 else t[ar, qd]

        return save

    def whole(t: Tensor, hook: Any) -> None:
        kept[hook.name] = t.detach()

    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    hooks = [(last, at_query(1)), ("ln_final.hook_normalized", at_query(1))]
    for l in chosen:
        p = f"blocks.{l}."
        hooks += [(p + "attn.hook_pattern", at_query(2)), (p + "attn.hook_v", whole)]
        hooks += [(p + "attn.hook_z", at_query(1)), (p + "hook_attn_out", at_query(1))]
    model.run_with_hooks(batch, fwd_hooks=hooks, return_type=None)

    final = FrozenNorm.at(
        model.submodule(model.adapter.final_norm), kept[last], kept["ln_final.hook_normalized"], "final norm"
    )
    W_U, b_U = model.W_U.float(), model.b_U.float()
    u = W_U[:, tgt.to(W_U.device)].T - (W_U[:, neg.to(W_U.device)].T if neg is not None else 0)  # [batch, d_model]
    bu = b_U[tgt] - (b_U[neg] if neg is not None else 0)
    direction = final.transpose(u)
    logit = ((final.linear(kept[last]) + final.bias) * u).sum(-1) + bu
    per_source, attn_dla = [], []
    for l in chosen:
        src, ref = _layer(model, l, kept, direction)
        per_source.append(src)
        attn_dla.append(ref)
    per_source_t, attn_dla_t = torch.stack(per_source, 1), torch.stack(attn_dla, 1)
    err = (per_source_t.sum((2, 3)) - attn_dla_t).abs()
    bound = tolerance(model.cfg.dtype) * (1.0 + per_source_t.abs().sum((2, 3)) + attn_dla_t.abs())
    if bool((err > bound).any()):
        raise RuntimeError(
            f"the per-head OV contributions do not add up to hook_attn_out's attribution (worst {float(err.max()):.3g})"
            f" in {model.cfg.architecture}: this family's attention is not the per-head sum assumed; no result."
        )
    return PatchDLA(
        int(image),
        chosen,
        tgt,
        neg,
        q,
        per_source_t.cpu(),
        attn_dla_t.cpu(),
        logit.cpu(),
        direction.cpu(),
        where,
        layout,
    )


def _per_row(ids: Tensor, rows: int, what: str) -> Tensor:
    if len(ids) == 1:
        return ids.expand(rows)
    if len(ids) != rows:
        raise ValueError(f"{what} has {len(ids)} token ids for a batch of {rows} rows: give one id, or one per row.")
    return ids


def _layer(model: HookedMLLM, l: int, kept: dict[str, Tensor], d: Tensor) -> tuple[Tensor, Tensor]:
    """(per_source [batch, head, seq], attn_out attribution minus its bias [batch]) of layer ``l``."""
    p = f"blocks.{l}."
    pattern = kept[p + "attn.hook_pattern"].float()  # [batch, head, seq]
    v = kept[p + "attn.hook_v"].float()  # [batch, seq, kv_head, d_head]
    z = kept[p + "attn.hook_z"].float()  # [batch, head, d_head]
    n_heads, n_kv = pattern.shape[1], v.shape[2]
    o = model.attention(l).get_submodule(model.adapter.o)
    W_O = rearrange(o.weight.detach().float(), "m (h d) -> h d m", h=n_heads)
    bias_O = getattr(o, "bias", None)
    b_O = bias_O.detach().float() if bias_O is not None else W_O.new_zeros(W_O.shape[-1])
    a = model.adapter
    d_l, bias = d, (b_O * d).sum(-1)
    if a.attn_out != f"{a.attn}.{a.o}":  # a post-norm between o_proj and the residual
        o_q = einsum(z, W_O, "b h d, h d m -> b m") + b_O
        norm = model.decoder_layers[l].get_submodule(a.attn_out)
        post = FrozenNorm.at(norm, o_q, kept[p + "hook_attn_out"], f"blocks.{l} attention output norm")
        d_l = post.transpose(d)
        bias = ((post.linear(b_O.expand_as(o_q)) + post.bias) * d).sum(-1)
    ov = einsum(W_O, d_l, "h d m, b m -> b h d")  # each head's value read-out along d_l
    v = v.repeat_interleave(n_heads // n_kv, dim=2)  # grouped key / value heads, as the model repeats them
    per_source = pattern * einsum(v, ov, "b s h d, b h d -> b h s")
    ref = (kept[p + "hook_attn_out"].float() * d).sum(-1) - bias
    return per_source, ref
