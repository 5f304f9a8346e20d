"""How scripts/coverage.py shrinks a default transformers config to a tiny one (sizes only; vocab and ids kept)."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from typing import Any

HEAD_WIDTHS = ("head_dim", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
# every size field found in a config (or sub-config) is shrunk to at most this; uniform values keep
# tower-to-projector-to-LM widths consistent
SIZES = {
    **dict.fromkeys(("hidden_size", "embed_dim", "d_model", "out_hidden_size", "projection_dim"), 64),
    **dict.fromkeys(("text_hidden_size", "vision_hidden_size", "mm_hidden_size", "output_dim"), 64),
    **dict.fromkeys(("intermediate_size", "encoder_ffn_dim", "decoder_ffn_dim", "ffn_dim"), 128),
    **dict.fromkeys(("moe_intermediate_size", "shared_expert_intermediate_size"), 32),
    **dict.fromkeys(("num_attention_heads", "num_heads", "encoder_attention_heads", "decoder_attention_heads"), 4),
    **dict.fromkeys(("num_hidden_layers", "depth", "num_layers", "encoder_layers", "decoder_layers"), 4),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts"), 4),
    **dict.fromkeys(HEAD_WIDTHS, 16),
    **dict.fromkeys(("kv_lora_rank", "q_lora_rank"), 32),
    "num_key_value_heads": 2,
    "num_experts_per_tok": 2,
    "hidden_size_per_layer_input": 8,  # Gemma3n / Gemma4 per-layer embeddings: vocab x layers x this
}
LAYER_COUNTS = ("num_hidden_layers", "depth", "num_layers", "encoder_layers", "decoder_layers")


def sub_configs(config: Any) -> list[Any]:
    from transformers import PretrainedConfig

    return [v for v in vars(config).values() if isinstance(v, PretrainedConfig)]


def shrink(
    config: Any, mrope_default: list[int] | None = None, seen: set[int] | None = None, keep_head: bool = False
) -> None:
    """Shrink every size field of ``config`` and its sub-configs in place (vocab and token ids kept).

    ``mrope_default``: the M-RoPE sections the modeling code assumes when the config names none.
    A sub-config or rope dict shared by two configs is shrunk once. ``keep_head``: keep the per-head
    widths (``head_dim`` set explicitly, M-RoPE sections and MLA head widths unchanged).
    """
    seen = set() if seen is None else seen
    if id(config) in seen:
        return
    seen.add(id(config))
    old_n = {k: field(config, k) for k in LAYER_COUNTS if isinstance(field(config, k), int)}
    heads, hidden = field(config, "num_attention_heads"), field(config, "hidden_size")
    old_head = field(config, "head_dim") or (hidden // heads if isinstance(hidden, int) and heads else None)
    for key, small in SIZES.items():
        if keep_head and key in HEAD_WIDTHS:
            continue
        value = field(config, key)
        if isinstance(value, int) and not isinstance(value, bool) and value > small:
            try:
                setattr(config, key, small)
            except AttributeError:  # a derived property
                pass
    if keep_head and old_head and field(config, "num_attention_heads") and not field(config, "head_dim"):
        config.head_dim = old_head
    if isinstance(field(config, "qk_head_dim"), int) and not keep_head:  # MLA: derived at init, not on read
        config.qk_head_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
    for key in ("n_group", "topk_group"):  # expert groups of a MoE router: one group of the shrunk experts
        if isinstance(field(config, key), int) and field(config, key) > 1:
            setattr(config, key, 1)
    kv, heads = field(config, "num_key_value_heads"), field(config, "num_attention_heads")
    if isinstance(kv, int) and isinstance(heads, int) and (kv > heads or field(config, "kv_lora_rank")):
        config.num_key_value_heads = heads
    for key, n in old_n.items():  # per-layer lists and layer indices follow the new layer count
        new = field(config, key)
        for attr, value in list(vars(config).items()):
            if not isinstance(value, list) or "layer" not in attr or n == new:
                continue
            if len(value) == n:
                setattr(config, attr, value[:new])
            elif value and all(isinstance(v, int) and 0 <= v < n for v in value) and any(v >= new for v in value):
                mapped = sorted({min(v * new // n, new - 1) for v in value})
                setattr(config, attr, mapped[: max(1, len(value) * new // n)])
    heads = field(config, "num_attention_heads")
    new_head = field(config, "head_dim") or (field(config, "hidden_size") // heads if heads else None)
    for rope in (field(config, "rope_parameters"), field(config, "rope_scaling")):
        if not isinstance(rope, dict) or id(rope) in seen:
            continue
        seen.add(id(rope))
        section = rope.get("mrope_section", mrope_default)
        if section and old_head and new_head and old_head != new_head and not keep_head:
            # the sections split the rotary half-width, as the modeling code computes it
            rope["mrope_section"] = scale_section(section, int(new_head * rope.get("partial_rotary_factor", 1.0)) // 2)
    for sub in sub_configs(config):
        shrink(sub, mrope_default, seen, keep_head)


def field(config: Any, key: str) -> Any:
    """``config.key``, or None where it is absent or only defined per layer."""
    try:
        return getattr(config, key, None)
    except Exception:  # noqa: BLE001 - e.g. AmbiguousGlobalPerLayerAttributeError
        return None


def scale_section(section: list[int], total: int) -> list[int]:
    """``section`` rescaled to sum to ``total`` (M-RoPE sections follow the rotary half-width)."""
    out = [max(1, s * total // sum(section)) for s in section]
    out[0] += total - sum(out)
    return out


def mrope_default(cls: Any, config: Any) -> list[int] | None:
    """The M-RoPE sections a modeling file falls back to (``.get("mrope_section", [16, 24, 24])``), if any."""
    module = sys.modules[cls.__module__]
    # the modeling file, then the files it imports its classes from (Glm46V's text model is GLM-4V's)
    names = [module.__name__, *(getattr(v, "__module__", "") for v in vars(module).values())]
    text = type(config.get_text_config(decoder=True)).__module__.replace(".configuration_", ".modeling_")
    for name in dict.fromkeys(n for n in [*names, text] if n.startswith("transformers.models.")):
        try:
            source = inspect.getsource(importlib.import_module(name))
        except (ImportError, OSError, TypeError):
            continue
        m = re.search(r"get\(\s*\"mrope_section\",\s*\[([\d, ]+)\]", source)
        if m:
            return [int(x) for x in m.group(1).split(",")]
    return None
