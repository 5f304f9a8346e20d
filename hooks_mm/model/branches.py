"""What each attention head and MLP neuron of a layer adds to the residual stream, per family.

A branch's output projection (``o_proj`` over heads, ``down_proj`` over neurons) gives ``sum_i part_i + b``;
what the block adds to the residual (``hook_attn_out`` / ``hook_mlp_out``) is that, then per family:

- nothing more (pre-norm blocks: Llama, Qwen, Idefics3, Persimmon, OPT, Cohere's parallel block);
- a post-norm (sandwich norms: Gemma-2/3/4, GLM-4V, EXAONE-4, LFM3): ``w * centre(.) / s + b`` with ``s`` frozen
  at its value on the real total, so every part goes through the same linear map and the parts (+ the bias
  part) sum exactly to the branch output;
- ``residual_multiplier`` (Granite; HyperCLOVAX after its inside post-norm): a constant factor.

Refused, naming the layers: cross-attention layers (gated; keys are vision tiles), linear-attention /
convolution layers (no heads), mixture-of-experts MLPs (no single neuron basis) and MLP outputs scaled with
the residual (Gemma-4's ``layer_scalar``). ``decompose_resid`` (hook_attn_out / hook_mlp_out per layer) works on
all of them.

Example::

    parts, bias = head_parts(model, 3, cache["blocks.3.attn.hook_z"])   # [b, p, head, d_model], [b, p, d_model]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.utilities import Slice

from hooks_mm.adapters.base import config_get
from hooks_mm.model.norms import NormForm, norm_form


@dataclass(frozen=True)
class Branch:
    """One branch: ``out = mult * post(sum_i part_i + bias)``; ``weight`` [n_parts, (d_head,) d_model]."""

    weight: Tensor
    bias: Tensor | None
    post: nn.Module | None
    mult: float
    where: str


def _mult(model: nn.Module, layer: int, part: str) -> float:
    scales = model.adapter.scales
    if "residual_multiplier" in scales:
        return float(config_get(model.hf_model.config, "residual_multiplier", default=1.0))
    raise NotImplementedError(
        f"layer {layer}'s {part} output is derived inside the block ({model.cfg.architecture}: "
        f"{model.adapter.backbone.name} row) in a way hooks_mm cannot split over its parts: use decompose_resid "
        f"(blocks.{layer}.hook_{'attn' if part == 'attention' else 'mlp'}_out per layer) instead."
    )


def attn_branch(model: nn.Module, layer: int) -> Branch:
    """The attention branch of ``layer`` (refused for cross-attention and linear-attention / conv layers)."""
    cfg, a = model.cfg, model.adapter
    if layer in cfg.cross_attn_layers:
        raise NotImplementedError(
            f"per-head results are not defined at cross-attention layers {cfg.cross_attn_layers} (their output is "
            f"gated by tanh(gate) and their keys are vision tiles): stop before them (layer=...) or use "
            "decompose_resid / get_full_resid_decomposition(expand_neurons=False) without heads."
        )
    if layer in cfg.mixer_layers:
        raise NotImplementedError(
            f"layers {sorted(cfg.mixer_layers)} hold a {cfg.mixer_layers[layer]} token mixer, not attention heads: "
            "per-head results exist only at attention layers; use decompose_resid (their hook_attn_out) instead."
        )
    layer_mod, attn = model.decoder_layers[layer], model.attention(layer)
    o = attn.get_submodule(a.o)
    post, mult = None, 1.0
    if a.attn_out is None:
        if len(a.inside) == 2:  # HyperCLOVAX: (post_norm1, post_norm2) end the two branches
            post = layer_mod.get_submodule(a.inside[0])
        mult = _mult(model, layer, "attention")
    elif a.attn_out != f"{a.attn}.{a.o}":  # a post-norm is the branch's last module
        post = layer_mod.get_submodule(a.attn_out)
    return Branch(o.weight.detach(), _bias(o), post, mult, f"blocks.{layer} attention")


def mlp_branch(model: nn.Module, layer: int) -> Branch:
    """The dense MLP branch of ``layer`` (refused for mixture-of-experts layers and residual-scaled outputs)."""
    cfg, a = model.cfg, model.adapter
    if layer in cfg.moe_layers:
        raise NotImplementedError(
            f"layers {cfg.moe_layers} are mixture-of-experts MLPs (no single neuron basis): per-neuron results are "
            "defined only at dense MLPs; use expand_neurons=False (hook_mlp_out per layer) or decompose_resid."
        )
    layer_mod = model.decoder_layers[layer]
    down_path = ".".join(filter(None, (a.mlp, a.down)))
    down = layer_mod.get_submodule(down_path)
    post, mult = None, 1.0
    if a.mlp_out is None:
        if a.out_scale:
            raise NotImplementedError(
                f"{cfg.architecture}'s block multiplies its whole output, residual included, by {a.out_scale}: "
                "hook_mlp_out (resid_post - resid_mid) is not a sum over neurons; use expand_neurons=False or "
                "decompose_resid."
            )
        if a.inside:
            post = layer_mod.get_submodule(a.inside[-1])
        mult = _mult(model, layer, "MLP")
    elif a.mlp_out not in (a.mlp, down_path):
        post = layer_mod.get_submodule(a.mlp_out)
    return Branch(down.weight.detach().T, _bias(down), post, mult, f"blocks.{layer} MLP")


def _bias(linear: nn.Module) -> Tensor | None:
    b = getattr(linear, "bias", None)
    return b.detach() if isinstance(b, Tensor) else None


def _finish(
    branch: Branch, parts: Tensor, total: Tensor, part_axis: int
) -> tuple[Tensor, Float[Tensor, "... d_model"]]:
    """Parts and the bias part through the branch's post-norm (scale frozen on ``total``) and multiplier."""
    bias = torch.zeros_like(total) if branch.bias is None else branch.bias.to(total.dtype).expand_as(total)
    if branch.post is not None:
        form: NormForm = norm_form(branch.post, total, f"{branch.where} post-norm")
        s = form.scale(total)
        parts = form.apply(parts, s.unsqueeze(part_axis))
        bias = form.apply(bias, s)
        if form.bias_term is not None:
            bias = bias + form.bias_term.to(bias.dtype)
    return parts * branch.mult, bias * branch.mult


def head_parts(
    model: nn.Module, layer: int, z: Float[Tensor, "... head d_head"]
) -> tuple[Float[Tensor, "... head d_model"], Float[Tensor, "... d_model"]]:
    """Each head's contribution to ``hook_attn_out`` from ``z`` (``attn.hook_z``), and the bias part.

    ``z_h @ W_O[h]`` (W_O split from the HF ``o`` projection's weight per head; grouped-query heads need
    nothing: ``z`` already has one row per query head), then the family's post-map (module docstring).
    """
    branch = attn_branch(model, layer)
    w = rearrange(branch.weight, "m (h d) -> h d m", d=z.shape[-1]).to(z.dtype)
    parts = torch.einsum("...hd,hdm->...hm", z, w)
    total = parts.sum(-2) + (0 if branch.bias is None else branch.bias.to(z.dtype))
    return _finish(branch, parts, total, -2)


def neuron_parts(
    model: nn.Module, layer: int, post: Float[Tensor, "... d_mlp"], keep: Slice | None = None
) -> tuple[Float[Tensor, "... n d_model"], Float[Tensor, "... d_model"]]:
    """Each neuron's contribution to ``hook_mlp_out`` from ``post`` (``mlp.hook_post``), the ``keep`` ones,
    and the bias part; a post-norm's scale is frozen on the whole MLP output."""
    branch = mlp_branch(model, layer)
    w = branch.weight.to(post.dtype)
    total = post @ w + (0 if branch.bias is None else branch.bias.to(post.dtype))
    keep = keep if keep is not None else Slice(None)
    parts = keep.apply(post, -1)[..., None] * keep.apply(w, 0)
    return _finish(branch, parts, total, -2)
