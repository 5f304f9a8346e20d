"""Refuse a decoder block its backbone row does not describe (:func:`check_backbone`), by name.

``HookedMLLM`` checks every block of the stack against its row (hooks_mm.adapters.backbones) before
any hook point is named: missing paths, sandwich or post-norms, modules the row does not place,
residual multipliers, MoE layouts the hooked forward does not reproduce and config terms a row
refuses all raise a ``NotImplementedError`` naming the ``model_type``, the block and the problem.

Example::

    from hooks_mm.adapters import adapter_for, check_backbone

    check_backbone(adapter_for(hf_model), layers[0], hf_model.config.get_text_config(), index=0)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hooks_mm.adapters.backbones import BACKBONES, Backbone, Moe, backbone_for, has_module, model_type

# text-config fields that scale what a block adds to the residual, the embedding or the logits
# (Granite, MiniCPM): a row that does not account for them would put hook points off by that factor
MULTIPLIERS = ("residual_multiplier", "embedding_multiplier", "logits_scaling", "scale_depth", "scale_emb")


def check_backbone(adapter: Any, layer: Any, text_config: Any, index: int | None = None) -> None:
    """Refuse a decoder block its backbone row does not describe, before any hook point is named.

    A block with fused projections, post-norms, sandwich norms, a parallel layout or residual
    multipliers that its row does not name would give hook points that are missing or silently
    not what is added to the residual stream. ``index``: the layer's number, for the message
    (HookedMLLM checks every block: stacks can mix dense and MoE or attention and linear layers).
    """
    b: Backbone = adapter.backbone or backbone_for(text_config)
    kind = model_type(text_config)
    moe = b.is_moe(layer)
    paths = b.paths(moe, b.mixer(text_config, index or 0))
    missing = [p for p in paths if not has_module(layer, p)]
    problems = [f"no module {', '.join(missing)}"] if missing else []
    if b.moe is None and has_module(layer, f"{b.mlp}.experts"):  # say why the dense MLP parts are missing
        block = layer.get_submodule(b.mlp)
        problems.append(f"a mixture-of-experts MLP ({b.mlp}: {type(block).__name__}) but the row describes no MoE")
    if moe and not missing:
        problems += moe_problems(b.moe, layer.get_submodule(b.mlp))
    children = {name for name, _ in layer.named_children()}
    if "pre_feedforward_layernorm" in children and b.ln2 != "pre_feedforward_layernorm":
        problems.append("sandwich norms (pre_/post_feedforward_layernorm) the row does not name")
    elif "post_feedforward_layernorm" in children and "post_feedforward_layernorm" not in (b.mlp_out, *b.inside):
        problems.append("a norm after the MLP (post_feedforward_layernorm) the row does not name")
    named = {p.split(".")[0] for p in paths}
    unknown = sorted(
        name for name, child in layer.named_children() if name not in named and not isinstance(child, INERT)
    )
    if unknown and not problems:  # a module the row does not place may sit on the residual path
        problems.append(f"modules the row does not name ({', '.join(unknown)})")
    if b.out_scale is not None and not isinstance(getattr(layer, b.out_scale, None), torch.Tensor):
        problems.append(f"no output scale {b.out_scale!r} on the layer")
    problems += [reason for name, reason in b.refuse if getattr(text_config, name, None)]
    if getattr(text_config, "clip_qkv", None) is not None:  # OLMo-1: q/k/v clamped after the projections
        problems.append(f"clip_qkv={text_config.clip_qkv}: attention reads q/k/v clamped after the projections")
    if getattr(text_config, "swin_norm", False):  # same module names, norms moved after each branch
        problems.append("swin_norm=True: its norms normalise the attention and MLP outputs, not their inputs")
    if getattr(text_config, "do_layer_norm_before", True) is False:  # OPT-350m
        problems.append(
            "do_layer_norm_before=False (post-LN, as OPT-350m): each norm follows its residual add, so what a branch "
            "adds is normalised away and no hook point is what is added to the residual stream"
        )
    proj = getattr(text_config, "word_embed_proj_dim", None)
    if proj is not None and proj != getattr(text_config, "hidden_size", proj):
        problems.append(
            f"word_embed_proj_dim={proj} != hidden_size: project_in / project_out map the embeddings into and the "
            "final stream out of the blocks' width, which no hook point accounts for"
        )
    if getattr(text_config, "_remove_final_layer_norm", False):
        problems.append("_remove_final_layer_norm=True: the decoder has no final norm (ln_final)")
    if b.parallel and "post_attention_layernorm" in children:
        problems.append("a second norm (post_attention_layernorm) although the row describes a parallel block")
    scaled = {
        m: getattr(text_config, m)
        for m in MULTIPLIERS
        if getattr(text_config, m, None) not in (None, 1, 1.0) and m not in b.scales
    }
    if scaled:
        problems.append(f"residual / embedding / logit multipliers {scaled} the row does not account for")
    if not problems:
        return
    row = f"row {b.name!r}" if kind in BACKBONES else "no row in hooks_mm.adapters.BACKBONES, read as Llama-like"
    raise NotImplementedError(
        f"the {adapter.name} wrapper is over backbone {kind!r} ({row}), but its decoder block"
        f"{'' if index is None else f' {index}'} "
        f"({type(layer).__name__} with {', '.join(sorted(children))}) has {'; '.join(problems)}: its hook points "
        "would be missing or not what is added to the residual stream. Use a checkpoint over a supported backbone "
        f"({', '.join(sorted(BACKBONES))}), or add a row BACKBONES[{kind!r}] = Backbone(...) whose paths match this "
        "block and check it with the conformance tests (tests/test_backbones.py)."
    )


def moe_problems(row: Moe, block: nn.Module) -> list[str]:
    """What in a MoE block the hooked MoE forward (:mod:`hooks_mm.model.moe`) would not reproduce."""
    problems = []
    experts, router = block.get_submodule(row.experts), block.get_submodule(row.router)
    extra = sorted({n for n, _ in block.named_children()} - {p.split(".")[0] for p in row.paths()})
    if extra:
        problems.append(f"MoE block modules the row does not name ({', '.join(extra)})")
    layout = {"has_gate": True, "has_bias": False, "is_transposed": row.transposed, "is_concatenated": True}
    layout["has_post_expert_norm"] = False
    off = {k: getattr(experts, k, None) for k, v in layout.items() if getattr(experts, k, None) != v}
    if row.transposed and not hasattr(experts, "is_transposed"):  # no layout flags (Llama 4): the shapes say it
        gu, down = getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None)
        ok = gu is not None and down is not None and gu.ndim == down.ndim == 3 and gu.shape[2] == 2 * down.shape[1]
        off = {} if ok and gu.shape[1] == down.shape[2] else {"gate_up_proj / down_proj": "not [n, d, 2 e] / [n, e, d]"}
        if row.score == "sigmoid_input" and row.shared_gate is not None:
            problems.append("a shared expert gate with sigmoid_input scores (Llama 4's shared expert is ungated)")
    if off:
        problems.append(f"experts {type(experts).__name__} with {off} (expected fused [gate; up] 3-D weights {layout})")
    for name in ("gate_up_proj", "down_proj", "act_fn"):
        if not hasattr(experts, name):
            problems.append(f"experts {type(experts).__name__} without {name}")
    if not (hasattr(router, "weight") and hasattr(router, "top_k")) or getattr(router, "bias", None) is not None:
        problems.append(f"router {type(router).__name__} is not a bias-free linear with top_k")
    absent = [a for a in row.router_attrs() if not hasattr(router, a)]
    if absent:
        problems.append(f"router {type(router).__name__} has no {', '.join(absent)}")
    unread = [a for a in ROUTING if hasattr(router, a) and a not in row.router_attrs()]
    if unread:  # a routing rule the hooked forward would not apply (a reroute would differ from the router's)
        problems.append(f"router {type(router).__name__} with {', '.join(unread)} the row does not account for")
    return problems


# router attributes that change the routing (GLM-4.5 / DeepSeek-V3): a row must name each its router has
ROUTING = ("e_score_correction_bias", "routed_scaling_factor", "num_group", "topk_group", "n_group")

# children of a decoder layer that do not change a value in eval mode
INERT = (nn.Dropout, nn.Identity)
