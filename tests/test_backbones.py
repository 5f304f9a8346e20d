"""A wrapper over a decoder block its table does not describe is refused, not hooked wrongly.

LLaVA's table describes a Llama-like block; real checkpoints put LLaVA over Gemma-2
(sandwich norms), Granite (residual multipliers), Phi-3 (fused projections), OLMo-2
(post-norms) and Cohere (a parallel block). Each would give hook points that are missing or
not what is added to the residual stream.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

from hooks_mm import HookedMLLM

SMALL = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64,
)  # fmt: skip


def llava_over(config_class: str, **extra: object) -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    text = getattr(transformers, config_class)(**SMALL, **extra)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=16
    )
    return LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=63)).eval()


@pytest.mark.parametrize(
    "config_class, extra, problem",
    [
        ("Gemma2Config", {"head_dim": 8}, "sandwich norms"),
        ("GraniteConfig", {"residual_multiplier": 0.22, "embedding_multiplier": 12.0}, "multipliers"),
        ("Phi3Config", {"pad_token_id": 0}, "no module self_attn.q_proj"),
        ("Olmo2Config", {}, "no module input_layernorm"),
        ("CohereConfig", {}, "no module post_attention_layernorm"),
    ],
)
def test_llava_over_a_backbone_its_table_does_not_describe_is_refused(config_class, extra, problem) -> None:
    hf_model = llava_over(config_class, **extra)
    with pytest.raises(
        NotImplementedError,
        match=rf"llava adapter's table describes a Llama-like .*{problem}.*(Register|Use a checkpoint)",
    ):
        HookedMLLM(hf_model)


@pytest.mark.parametrize("config_class", ["LlamaConfig", "MistralConfig", "Qwen2Config"])
def test_llava_over_llama_like_backbones_is_hooked_exactly(config_class) -> None:
    hf_model = llava_over(config_class)
    model = HookedMLLM(hf_model)
    ids = torch.randint(0, 60, (2, 7))
    logits, cache = model.run_with_cache({"input_ids": ids}, names_filter=lambda n: n.endswith("hook_resid_post"))
    out = hf_model(input_ids=ids, output_hidden_states=True)
    assert torch.equal(logits, out.logits)
    for l in range(model.cfg.n_layers - 1):  # the last hidden state is after the final norm
        torch.testing.assert_close(cache[f"blocks.{l}.hook_resid_post"], out.hidden_states[l + 1])
