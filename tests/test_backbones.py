"""Backbone rows under one wrapper (LLaVA): each decoder block exact, or refused with its reason.

Real checkpoints put LLaVA over many decoder blocks: sandwich norms (Gemma-2/3), residual
multipliers (Granite), fused projections (Phi-3), parallel blocks (Cohere), QK-norm (Qwen3), mixtures of
experts (Qwen3-MoE, Mixtral, Qwen2-MoE; their expert hooks in tests/test_moe.py),
Gemma's scaled embedding. Every backbone in ``CASES`` is built with a tiny seeded config (weights
redrawn so norms and scales matter) and checked against an independent copy of the bare HF
model: logits, hidden states, eager attentions, what each branch adds, edits at resid_mid, the
projections and the neurons, one NeuronAblation and a sweep. Adding a backbone row: add its
config here and the suite picks it up.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import transformers
from torch import nn
from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

from hooks_mm import HookedMLLM
from hooks_mm.adapters import BACKBONES, Adapter, Backbone, adapter_for
from hooks_mm.interventions import NeuronAblation, Steer
from hooks_mm.selectors import NonPad
from hooks_mm.sweep import sweep

SMALL = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64,
)  # fmt: skip
TOL = 1e-5
MOE = {"moe_intermediate_size": 16, "num_experts": 4, "num_experts_per_tok": 2}
IMAGE_ID, PAD = 63, 0
QWEN3_5_LINEAR = dict(linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4)
# the module whose input is resid_mid, where it is not post_attention_layernorm (parallel Cohere: none)
LN2 = {
    "gemma2": "pre_feedforward_layernorm",
    "gemma3_text": "pre_feedforward_layernorm",
    "lfm2": "ffn_norm",
    "opt": "final_layer_norm",
    "lfm3": "ffn_norm",
}
LN2["exaone4"] = "mlp"  # no norm before the MLP: resid_mid is the MLP's input

# GLM's M-RoPE over half of each head (as GLM-4.1V: partial_rotary_factor 0.5, sections summing to dim / 4)
GLM_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [1, 1, 0]}

# text config class and extra fields of every backbone checked exact under LLaVA
CASES = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": 4}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 8}),
    "gemma": ("GemmaConfig", {"head_dim": 8}),
    "gemma2": (
        "Gemma2Config",
        {"head_dim": 8, "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0, "sliding_window": 4},
    ),
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 8, "sliding_window": 4, "final_logit_softcapping": 3.0}),
    "phi3": ("Phi3Config", {"pad_token_id": PAD}),
    "granite": (
        "GraniteConfig",
        {"residual_multiplier": 0.22, "embedding_multiplier": 12.0, "logits_scaling": 4.0, "attention_multiplier": 0.3},
    ),
    "cohere": ("CohereConfig", {"use_qk_norm": True}),
    "hyperclovax": (
        "HyperCLOVAXConfig",
        {"residual_multiplier": 0.4, "embedding_multiplier": 3.0, "logits_scaling": 0.7, "use_post_norm": True},
    ),
    "glm4v_text": ("Glm4vTextConfig", {"tie_word_embeddings": False, "rope_parameters": GLM_ROPE}),
    "glm_ocr_text": ("GlmOcrTextConfig", {"tie_word_embeddings": False, "rope_parameters": GLM_ROPE}),
    # layer 1 (the projection tests' layer) sliding, with RoPE: a shift of every key is a no-op without it
    "cohere2": ("Cohere2Config", {"sliding_window": 4, "layer_types": ["full_attention", "sliding_attention"]}),
    # mixtures of experts (hooks_mm.model.moe): dense block 0 (mlp_only_layers / decoder_sparse_step), MoE block 1
    "qwen3_moe": ("Qwen3MoeConfig", {"head_dim": 8, **MOE, "norm_topk_prob": True, "mlp_only_layers": [0]}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),  # every block MoE
    "qwen2_moe": ("Qwen2MoeConfig", {**MOE, "shared_expert_intermediate_size": 24, "decoder_sparse_step": 2}),
    # hybrid stacks: layer 0 a linear-attention / convolution layer, layer 1 an attention layer
    "qwen3_5_text": (
        "Qwen3_5TextConfig",
        {"head_dim": 8, "layer_types": ["linear_attention", "full_attention"], **QWEN3_5_LINEAR},
    ),
    "qwen3_5_moe_text": (  # the hybrid stack with a MoE (and shared expert) in every layer
        "Qwen3_5MoeTextConfig",
        {
            "head_dim": 8,
            "layer_types": ["linear_attention", "full_attention"],
            **QWEN3_5_LINEAR,
            **MOE,
            "shared_expert_intermediate_size": 24,
        },
    ),
    # GLM-4.5 routing: sigmoid scores, a choice bias, 2 of 4 groups of 2 experts, top-3, scaled weights, shared expert
    "glm4v_moe_text": (
        "Glm4vMoeTextConfig",
        {
            "tie_word_embeddings": False,
            "rope_parameters": GLM_ROPE,
            "moe_intermediate_size": 16,
            "n_routed_experts": 8,
            "num_experts_per_tok": 3,
            "n_group": 4,
            "topk_group": 2,
            "routed_scaling_factor": 2.5,
            "first_k_dense_replace": 1,
        },
    ),
    "lfm2": (
        "Lfm2Config",
        {"layer_types": ["conv", "full_attention"], "block_auto_adjust_ff_dim": False, "pad_token_id": PAD},
    ),
    "persimmon": ("PersimmonConfig", {"qk_layernorm": True}),
    "molmo2_text": ("Molmo2TextConfig", {"head_dim": 8, "qk_norm_type": "olmo", "additional_vocab_size": 0}),
    # post-norm block (no norm before attention or the MLP), QK-norm; layer 0 global (NoPE), layer 1 sliding (RoPE)
    "exaone4": ("Exaone4Config", {"sliding_window": 4, "layer_types": ["full_attention", "sliding_attention"]}),
    # Llama 4: dense block 0 (NoPE, temperature-tuned queries), MoE block 1 (RoPE, chunked attention, L2 qk-norm;
    # sigmoid top-k routing on the experts' input, shared expert; top-1 in the llama4 family's zoo model)
    "llama4_text": (
        "Llama4TextConfig",
        {
            "head_dim": 8,
            "intermediate_size_mlp": 64,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "moe_layers": [1],
            "no_rope_layers": [0, 1],
            "attention_chunk_size": 4,
            "floor_scale": 2,
            "attn_scale": 0.5,
        },
    ),  # fmt: skip
    # Aria: a MoE MLP in every layer (softmax over the top-k logits, transposed expert weights, shared experts)
    "aria_text": ("AriaTextConfig", {"moe_num_experts": 3, "moe_topk": 2, "moe_num_shared_experts": 1}),
    # OPT (pre-LN): fc1 / fc2 in the layer, run on [batch * pos, d]; learned positions added after hook_embed
    "opt": (
        "OPTConfig",
        {"ffn_dim": 64, "num_key_value_heads": 4, "word_embed_proj_dim": 32, "pad_token_id": PAD}
        | {"tie_word_embeddings": False},  # LLaVA's head is tied only where its text model's embed_tokens is
    ),
    "lfm3": ("Lfm3Config", {"head_dim": 8, "layer_types": ["conv", "full_attention"], "pad_token_id": PAD}),
}
PARALLEL = ("cohere", "cohere2")  # attention and MLP both read input_layernorm's output
FUSED_GATE_UP = ("phi3", "glm4v_text", "glm_ocr_text")  # one gate_up_proj: [gate; up]


def llava_over(config_class: str, **extra: object) -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    text = getattr(transformers, config_class)(**{**SMALL, **extra})
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=16
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_ID)
    model = LlavaForConditionalGeneration(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # large enough weights that norms, scales and every branch change the logits
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.2) + (1.0 if p.ndim == 1 else 0.0))
        for name, b in model.named_buffers():  # GLM-4.5 routing: a choice bias that changes which experts are chosen
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
    return model


class Case:
    """A hooked LLaVA over one backbone, an independent bare copy, and a left-padded batch with images."""

    def __init__(self, name: str):
        config_class, extra = CASES[name]
        self.name = name
        self.bare = llava_over(config_class, **extra)
        self.eager = copy.deepcopy(self.bare)
        self.eager.set_attn_implementation("eager")
        self.model = HookedMLLM(copy.deepcopy(self.bare))
        self.text = self.bare.config.text_config
        g = torch.Generator().manual_seed(2)
        words = lambda n: torch.randint(1, 60, (n,), generator=g).tolist()  # noqa: E731
        rows = [words(1) + [IMAGE_ID] * 4 + words(5), [PAD, PAD] + [IMAGE_ID] * 4 + words(4)]
        self.inputs = {
            "input_ids": torch.tensor(rows),
            "attention_mask": torch.tensor([[1] * 10, [0, 0] + [1] * 8]),
            "pixel_values": torch.randn(2, 3, 32, 32, generator=g),
        }
        self.real = self.inputs["attention_mask"].bool()
        lm = self.bare.model.language_model
        self.layers = getattr(lm, "decoder", lm).layers  # OPT: the layers sit in its decoder
        # MLP parts under the backbone's names (LFM2 / LFM3: feed_forward.w1 / w3 / w2; OPT: the layer's fc1 / fc2)
        self.mlp = {"gate": "w1", "up": "w3", "down": "w2"} if name in ("lfm2", "lfm3") else {}
        self.mlp |= {"up": "fc1", "down": "fc2"} if name == "opt" else {}

    def mlp_part(self, l: int, part: str) -> nn.Module:
        layer = self.layers[l]
        ff = self.name in ("lfm2", "lfm3", "llama4_text")
        mlp = layer.feed_forward if ff else layer if self.name == "opt" else layer.mlp
        return getattr(mlp, self.mlp.get(part, f"{part}_proj"))

    def ln2(self, l: int) -> nn.Module:
        return getattr(self.layers[l], LN2.get(self.name, "post_attention_layernorm"))

    def attention_layers(self) -> list[int]:
        """The layers with attention (a hybrid stack's linear-attention / conv layers have none)."""
        kinds = getattr(self.text, "layer_types", None) or ["full_attention"] * len(self.layers)
        return [l for l, kind in enumerate(kinds) if kind not in ("linear_attention", "conv")]

    @torch.no_grad()
    def bare_run(self, hooks: list[tuple[nn.Module, str, object]] = (), **kwargs: object):  # noqa: ANN201
        """The bare model's output with temporary PyTorch hooks ``(module, "pre" | "fwd", fn)``."""
        handles = [
            m.register_forward_pre_hook(fn) if kind == "pre" else m.register_forward_hook(fn) for m, kind, fn in hooks
        ]
        try:
            return self.bare(**self.inputs, **kwargs)
        finally:
            for h in handles:
                h.remove()

    def diff(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """Max abs difference over real positions, relative to the values' scale where it exceeds 1
        (a run that caches attention internals uses eager attention: rounding scales with the values).
        ``b`` may be [batch * pos, ...] (OPT's MLP half)."""
        b = b.reshape(a.shape)
        return (a - b)[self.real].abs().max().item() / max(1.0, b[self.real].abs().max().item())


_CASES: dict[str, Case] = {}


@pytest.fixture(params=sorted(CASES))
def case(request) -> Case:  # noqa: ANN001
    if request.param not in _CASES:
        _CASES[request.param] = Case(request.param)
    return _CASES[request.param]


def test_the_backbone_row_is_chosen_from_the_text_model_type(case: Case) -> None:
    assert case.model.adapter.backbone is BACKBONES[case.text.model_type]
    assert case.model.cfg.backbone == case.text.model_type
    assert adapter_for(case.bare).backbone is BACKBONES[case.text.model_type]


def test_no_hook_logits_equal_the_bare_model_bit_for_bit(case: Case) -> None:
    with torch.no_grad():
        assert torch.equal(case.model(case.inputs), case.bare_run().logits)


def test_resid_post_equals_hf_hidden_states(case: Case) -> None:
    _, cache = case.model.run_with_cache(case.inputs, names_filter=lambda n: "hook_resid_p" in n)
    hs = case.bare_run(output_hidden_states=True).hidden_states
    assert case.diff(cache["blocks.0.hook_resid_pre"], hs[0]) <= TOL
    for l in range(case.model.cfg.n_layers - 1):  # the last hidden state is after the final norm
        assert case.diff(cache[f"blocks.{l}.hook_resid_post"], hs[l + 1]) <= TOL


def test_residual_stream_decomposes_into_what_is_really_added(case: Case) -> None:
    """resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out, with resid_mid what the
    bare model holds between the branches: the input of its second norm, or (parallel block) the
    block input plus the attention output (scaled by Granite's residual_multiplier)."""
    _, c = case.model.run_with_cache(case.inputs)
    seen: dict[str, torch.Tensor] = {}
    keep = lambda key: lambda m, args, *out: seen.__setitem__(key, (out[0] if out else args[0]).detach())  # noqa: E731
    hooks = []
    for l, layer in enumerate(case.layers):
        hooks.append((layer, "pre", keep(f"pre{l}")))
        if case.name in PARALLEL:
            hooks.append((layer.self_attn.o_proj, "fwd", keep(f"attn{l}")))
        else:
            hooks.append((case.ln2(l), "pre", keep(f"mid{l}")))
    case.bare_run(hooks)
    for l in range(case.model.cfg.n_layers):
        p = f"blocks.{l}."
        assert case.diff(c[p + "hook_resid_mid"], c[p + "hook_resid_pre"] + c[p + "hook_attn_out"]) <= TOL
        assert case.diff(c[p + "hook_resid_post"], c[p + "hook_resid_mid"] + c[p + "hook_mlp_out"]) <= TOL
        mid = seen[f"pre{l}"] + seen[f"attn{l}"] if case.name in PARALLEL else seen[f"mid{l}"]
        assert case.diff(c[p + "hook_resid_mid"], mid) <= TOL
    if case.name == "granite":  # the scaled branch, not o_proj's output
        o = {}
        case.bare_run([(case.layers[0].self_attn.o_proj, "fwd", lambda m, i, out: o.__setitem__("o", out))])
        assert case.diff(c["blocks.0.hook_attn_out"], 0.22 * o["o"]) <= TOL


def test_hook_embed_and_resid_pre_0(case: Case) -> None:
    """hook_embed: the embedding module's output (Gemma: times sqrt(d_model), inside the module);
    resid_pre[0]: what the first block reads (Granite: times embedding_multiplier, applied after)."""
    _, c = case.model.run_with_cache(case.inputs, names_filter=["hook_embed", "blocks.0.hook_resid_pre"])
    ids = case.inputs["input_ids"]
    text = case.real & (ids != IMAGE_ID)
    gemma = case.text.model_type in ("gemma", "gemma2", "gemma3_text")
    weight = case.bare.get_input_embeddings().weight
    embed = weight[ids] * (math.sqrt(case.text.hidden_size) if gemma else 1.0)
    assert (c["hook_embed"] - embed)[text].abs().max().item() <= TOL * 10
    mult = getattr(case.text, "embedding_multiplier", 1.0)
    decoder = getattr(case.bare.model.language_model, "decoder", None)  # OPT: learned positions added after
    pos = decoder.embed_positions(case.inputs["attention_mask"], 0) if decoder is not None else 0.0
    assert (c["blocks.0.hook_resid_pre"] - c["hook_embed"] * mult - pos)[text].abs().max().item() <= TOL * 10


def test_pattern_equals_hf_eager_attentions(case: Case) -> None:
    _, cache = case.model.run_with_cache(case.inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    with torch.no_grad():
        attentions = case.eager(**case.inputs, output_attentions=True).attentions
    assert len(attentions) == len(case.attention_layers())  # HF returns the attention layers' weights only
    for l, ref in zip(case.attention_layers(), attentions):
        assert (cache[f"blocks.{l}.attn.hook_pattern"] - ref).transpose(1, 2)[case.real].abs().max().item() <= TOL


def _projections(case: Case, l: int) -> dict[str, tuple[nn.Module, slice | list[int]]]:
    """q / k / v / gate / up as (module, the columns of its output): Phi-3's fused modules as HF slices them,
    Qwen3.5's gated q_proj as HF chunks it ([query; gate] per head: the query half of each head)."""
    layer, t = case.layers[l], case.text
    if case.name == "phi3":
        q, kv = t.num_attention_heads * (t.hidden_size // t.num_attention_heads), t.num_key_value_heads * 8
        qkv, gate_up = layer.self_attn.qkv_proj, layer.mlp.gate_up_proj
        return {
            "attn.hook_q": (qkv, slice(0, q)),
            "attn.hook_k": (qkv, slice(q, q + kv)),
            "attn.hook_v": (qkv, slice(q + kv, None)),
            "mlp.hook_pre": (gate_up, slice(0, t.intermediate_size)),
            "mlp.hook_pre_linear": (gate_up, slice(t.intermediate_size, None)),
        }
    if case.name == "persimmon":  # query_key_value laid out [head, (q, k, v), d_head]; ungated MLP
        d = t.hidden_size // t.num_attention_heads
        per_head = lambda j: (torch.arange(t.num_attention_heads)[:, None] * 3 * d + j * d + torch.arange(d)).flatten()  # noqa: E731
        qkv = layer.self_attn.query_key_value
        return {
            "attn.hook_q": (qkv, per_head(0)),
            "attn.hook_k": (qkv, per_head(1)),
            "attn.hook_v": (qkv, per_head(2)),
            "mlp.hook_pre": (layer.mlp.dense_h_to_4h, slice(None)),
        }
    a, hd = layer.self_attn, t.head_dim if case.name.startswith("qwen3_5") else None
    query = [h * 2 * hd + j for h in range(t.num_attention_heads) for j in range(hd)] if hd else slice(None)
    attn = {
        "attn.hook_q": (a.q_proj, query),
        "attn.hook_k": (a.k_proj, slice(None)),
        "attn.hook_v": (a.v_proj, slice(None)),
    }
    if l in case.model.cfg.moe_layers:  # no dense MLP
        return attn
    if case.name in FUSED_GATE_UP:  # GLM chunks gate_up_proj's output as HF's Phi-3 does: gate first
        gu, d = layer.mlp.gate_up_proj, t.intermediate_size
        return {**attn, "mlp.hook_pre": (gu, slice(0, d)), "mlp.hook_pre_linear": (gu, slice(d, None))}
    if not case.model.adapter.gated:  # OPT: no gate, hook_pre is the up projection (fc1), no hook_pre_linear
        return {**attn, "mlp.hook_pre": (case.mlp_part(l, "up"), slice(None))}
    gate, up = case.mlp_part(l, "gate"), case.mlp_part(l, "up")
    return {**attn, "mlp.hook_pre": (gate, slice(None)), "mlp.hook_pre_linear": (up, slice(None))}


@pytest.mark.parametrize("hook", ["attn.hook_q", "attn.hook_k", "attn.hook_v", "mlp.hook_pre", "mlp.hook_pre_linear"])
def test_projection_hooks_are_the_projections_and_their_edits_take_effect(case: Case, hook: str) -> None:
    l = 1
    if hook.startswith("mlp.") and l in case.model.cfg.moe_layers:  # MoE blocks: per-expert neurons (test_moe.py)
        with pytest.raises(KeyError, match=rf"layer {l} is a mixture-of-experts block.*mlp.experts.{{e}}"):
            case.model.run_with_cache(case.inputs, names_filter=[f"blocks.{l}.{hook}"])
        if not _dense(case):
            return
        l = _dense(case)[-1]
    if hook not in _projections(case, l):  # a non-gated MLP has no hook_pre_linear
        assert f"blocks.{l}.{hook}" not in case.model.hook_dict
        return
    module, part = _projections(case, l)[hook]
    seen = {}
    case.bare_run([(module, "fwd", lambda m, i, out: seen.__setitem__("x", out[..., part]))])
    name = f"blocks.{l}.{hook}"
    _, cache = case.model.run_with_cache(case.inputs, names_filter=[name])
    got = cache[name].flatten(-2) if hook.startswith("attn") else cache[name]
    assert torch.equal(got, seen["x"].reshape(got.shape))  # OPT's MLP runs on [batch * pos, d]

    noise = torch.randn(seen["x"].shape[-1], generator=torch.Generator().manual_seed(4))  # not a scale: norms follow

    def add(m, i, out):  # noqa: ANN001, ANN202
        out = out.clone()
        out[..., part] += noise
        return out

    with torch.no_grad():
        ours = case.model.run_with_hooks(
            case.inputs,
            fwd_hooks=[
                (name, lambda x, hook: x + noise.view(x.shape[-1:]) if x.ndim == 3 else x + noise.view(x.shape[-2:]))
            ],
        )
    hand = case.bare_run([(module, "fwd", add)]).logits
    assert case.diff(ours, hand) <= TOL
    # without RoPE (OPT) one shift of every key adds a constant to each query's scores: softmax ignores it
    assert case.diff(ours, case.bare_run().logits) > 1e-3 or (hook == "attn.hook_k" and case.name == "opt")


def test_resid_mid_edit_equals_the_hand_edit_on_the_bare_model(case: Case) -> None:
    """An edit at resid_mid is read by the MLP (not in a parallel block) and added to the block's output."""
    l, delta = 0, torch.randn(case.text.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = case.model.run_with_hooks(
            case.inputs, fwd_hooks=[(f"blocks.{l}.hook_resid_mid", lambda x, hook: x + delta)]
        )
    hooks = [(case.layers[l], "fwd", lambda m, i, out: out + delta)]
    if case.name not in PARALLEL:
        hooks.append((case.ln2(l), "pre", lambda m, args: (args[0] + delta,)))
    assert case.diff(ours, case.bare_run(hooks).logits) <= TOL
    assert case.diff(ours, case.bare_run().logits) > 1e-3


def _dense(case: Case) -> list[int]:
    """The layers with a dense MLP (not a mixture of experts)."""
    return [l for l in range(case.model.cfg.n_layers) if l not in case.model.cfg.moe_layers]


def _zeroed(case: Case, neurons: dict[int, list[int]]) -> torch.Tensor:
    """Bare logits with ``neurons`` (layer -> indices) zeroed at the real positions of the down_proj input."""

    def zero(idx: list[int]):  # noqa: ANN202
        def fn(m, args):  # noqa: ANN001, ANN202
            x = args[0].clone()
            x[..., idx] = x[..., idx] * ~case.real.reshape(*x.shape[:-1], 1)  # OPT: [batch * pos, d_mlp]
            return (x,)

        return fn

    a = case.model.adapter
    downs = {l: case.layers[l].get_submodule(a.mlp).get_submodule(a.down) for l in neurons}
    return case.bare_run([(downs[l], "pre", zero(idx)) for l, idx in neurons.items()]).logits


def test_neuron_ablation_and_sweep_equal_hand_written_hooks(case: Case) -> None:
    metric = lambda logits: logits[:, -1].log_softmax(-1)[:, 7].sum()  # noqa: E731
    for l in case.model.cfg.moe_layers:  # no dense neurons there: refused with the reason, before any run
        with pytest.raises(KeyError, match=f"layer {l} is a mixture-of-experts block"):
            case.model.run_with_interventions(case.inputs, NeuronAblation(l, [1], NonPad()))
        with pytest.raises(KeyError, match=f"layer {l} is a mixture-of-experts block"):
            sweep(case.model, case.inputs, [NeuronAblation(l, [1], NonPad())], metric, progress=False)
    if not _dense(case):
        return
    hi, lo = _dense(case)[-1], _dense(case)[0]  # dense backbones: 1 and 0
    spec = NeuronAblation(layers=hi, neurons=[1, 5, 9], positions=NonPad())
    ours = case.model.run_with_interventions(case.inputs, spec)
    hand = _zeroed(case, {hi: [1, 5, 9]})
    assert case.diff(ours, hand) <= TOL and case.diff(ours, case.bare_run().logits) > 1e-4
    configs = [
        NeuronAblation(lo, [2, 3], NonPad()),
        NeuronAblation(hi, [4], NonPad()),
        NeuronAblation(hi, None, NonPad()),
    ]
    result = sweep(case.model, case.inputs, configs, metric, progress=False)
    width = case.text.intermediate_size
    expected = [metric(_zeroed(case, n)) for n in ({lo: [2, 3]}, {hi: [4]}, {hi: list(range(width))})]
    assert (result.values - torch.stack(expected)).abs().max().item() <= TOL
    assert result.meta["fast"] + result.meta["naive"] == len(configs)


def test_granite_fast_sweep_path_is_not_taken_for_scaled_branches() -> None:
    """Granite's MLP branch is scaled: the packed fast path (mid + mlp_out) does not apply; the naive loop runs."""
    case = _CASES.get("granite") or Case("granite")
    metric = lambda logits: logits[:, -1].log_softmax(-1)[:, 7].sum()  # noqa: E731
    result = sweep(case.model, case.inputs, [NeuronAblation(1, [4], NonPad())], metric, progress=False)
    assert result.meta["naive"] == 1


def test_cohere_parallel_block_has_no_ln2_hook() -> None:
    case = _CASES.get("cohere") or Case("cohere")
    assert "blocks.0.ln2.hook_normalized" not in case.model.hook_dict
    assert "blocks.0.hook_resid_mid" in case.model.hook_dict


@pytest.mark.parametrize(
    "config_class, extra, problem",
    [
        ("Olmo2Config", {}, r"backbone 'olmo2' \(no row .*\).*block 0 .*no module input_layernorm"),
        ("OlmoeConfig", {"num_experts": 4}, r"backbone 'olmoe' \(no row .*\).*block 0 .*no module mlp.gate_proj"),
        ("Qwen3NextConfig", {}, r"backbone 'qwen3_next' \(no row .*\).*no module self_attn"),
        # dense block 0, MoE block 1: every block is checked, not only the first
        (
            "PhimoeConfig",
            {"num_local_experts": 4, "num_experts_per_tok": 2},
            r"backbone 'phimoe' \(no row .*\).*block 0 .*no module mlp",
        ),
        ("GraniteConfig", {"residual_multiplier": 0.22}, None),
        ("Gemma2Config", {"head_dim": 8}, None),
    ],
)
def test_a_block_no_row_describes_is_refused_naming_its_model_type(config_class, extra, problem) -> None:
    hf_model = llava_over(config_class, **extra)
    if problem is not None:
        with pytest.raises(NotImplementedError, match=rf"llava wrapper is over {problem}.*add a row BACKBONES\["):
            HookedMLLM(hf_model)
        return
    # a row that does not fit its block (here: the Llama-like row forced on it) is refused too
    adapter = adapter_for(hf_model)
    wrong = Adapter(**{**adapter.__dict__, "backbone": BACKBONES["llama"]})
    with pytest.raises(NotImplementedError, match=r"\(row 'llama'\).*(sandwich norms|multipliers)"):
        HookedMLLM(hf_model, adapter=wrong)


def test_an_unknown_llama_like_backbone_works_as_llama() -> None:
    """A model_type with no row whose block is Llama-like (here: Llama under another name) is accepted, exact."""
    hf_model = llava_over("LlamaConfig")
    hf_model.config.text_config.model_type = "my_llama"
    model = HookedMLLM(copy.deepcopy(hf_model))
    assert model.adapter.backbone.name == "llama" and model.cfg.backbone == "my_llama"
    ids = torch.randint(1, 60, (2, 7))
    with torch.no_grad():
        assert torch.equal(model({"input_ids": ids}), hf_model(input_ids=ids).logits)


def test_adapter_block_fields_read_through_the_backbone() -> None:
    row = Backbone("x", ln2="pre_mlp_norm", mlp_out="post_mlp_norm")
    adapter = Adapter(name="x", architectures=("X",), layers="l", embed="e", final_norm="n", backbone=row)
    assert (adapter.ln2, adapter.mlp_out, adapter.q, adapter.gated) == ("pre_mlp_norm", "post_mlp_norm", "q_proj", True)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        adapter.nonsense  # noqa: B018


def test_llava_next_over_granite_is_exact() -> None:
    """granite-vision's layout (LLaVA-NeXT over Granite): the backbone row composes with another wrapper."""
    torch.manual_seed(0)
    text = transformers.GraniteConfig(**SMALL, residual_multiplier=0.22, embedding_multiplier=12.0, logits_scaling=4.0)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=16
    )
    config = transformers.LlavaNextConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_ID, image_grid_pinpoints=[[32, 32]]
    )
    bare = transformers.LlavaNextForConditionalGeneration(config).eval()
    model = HookedMLLM(copy.deepcopy(bare))
    assert model.adapter.name == "llava_next" and model.adapter.backbone is BACKBONES["granite"]
    ids = torch.randint(1, 60, (2, 7), generator=torch.Generator().manual_seed(5))
    logits, c = model.run_with_cache({"input_ids": ids})
    with torch.no_grad():
        out = bare(input_ids=ids, output_hidden_states=True)
    assert torch.equal(model({"input_ids": ids}), out.logits)
    for l in range(model.cfg.n_layers):
        p = f"blocks.{l}."
        torch.testing.assert_close(c[p + "hook_resid_mid"], c[p + "hook_resid_pre"] + c[p + "hook_attn_out"])
        torch.testing.assert_close(c[p + "hook_resid_post"], c[p + "hook_resid_mid"] + c[p + "hook_mlp_out"])
    torch.testing.assert_close(c["blocks.0.hook_resid_post"], out.hidden_states[1])
    torch.testing.assert_close(c["blocks.0.hook_resid_pre"], 12.0 * c["hook_embed"])


def test_wanda_overlap_reads_phi3_fused_linears() -> None:
    """Weight analyses walk the row's linears: Phi-3 has qkv_proj and gate_up_proj, no q_proj / gate_proj."""
    from hooks_mm.analysis import wanda_overlap

    case = _CASES.get("phi3") or Case("phi3")
    table = wanda_overlap(case.model, [case.inputs])
    assert set(table.linear) == {"qkv", "o", "gate_up", "down"} and table.iou.between(0, 1).all()


def test_nnsight_backend_equals_hooked_mllm_or_refuses_the_hook(case: Case) -> None:
    """The nnsight compiler places edits on the row's modules: the same logits, or a named refusal
    where no module returns the branch output (Granite's scaled branches are derived)."""
    from hooks_mm.remote import NNsightBackend
    from hooks_mm.zoo.llava import build_llava_processor

    model = HookedMLLM(case.model.hf_model, build_llava_processor())  # nnsight wraps the model in a pipeline
    backend = NNsightBackend(model)
    steer = Steer(0, [0.5 * (-1) ** i for i in range(case.text.hidden_size)], positions=NonPad(), hook="hook_attn_out")
    for l in model.cfg.moe_layers:  # no dense neurons: refused with the reason; routing hooks are not module outputs
        with pytest.raises(KeyError, match=f"layer {l} is a mixture-of-experts block"):
            backend.run(case.inputs, NeuronAblation(l, [1], NonPad()))
        with pytest.raises(NotImplementedError, match=f"cannot edit 'blocks.{l}.mlp.hook_router_logits'"):
            backend.run(case.inputs, Steer(l, [1.0] * model.cfg.n_experts, NonPad(), hook="mlp.hook_router_logits"))
    mlp_out = Steer(1, [0.5] * case.text.hidden_size, positions=NonPad(), hook="hook_mlp_out")
    neurons = [NeuronAblation(_dense(case)[-1], [1, 5], NonPad())] if _dense(case) else []
    for spec in (*neurons, steer, *([mlp_out] if model.cfg.moe_layers else [])):
        if spec is steer and case.model.adapter.attn_out is None:  # derived branch (Granite, HyperCLOVAX)
            with pytest.raises(NotImplementedError, match="cannot edit blocks.0.hook_attn_out.*no module returns"):
                backend.run(case.inputs, spec)
            continue
        if spec is mlp_out and case.name == "llama4_text":  # its MoE block returns [batch * pos, d_model]
            with pytest.raises(NotImplementedError, match="cannot edit blocks.1.hook_mlp_out.*flattened"):
                backend.run(case.inputs, spec)
            continue
        if spec in neurons and case.model.adapter.flat:  # OPT: fc2 reads [batch * pos, d_mlp] rows
            with pytest.raises(NotImplementedError, match=r"opt block runs the MLP on \[batch \* pos"):
                backend.run(case.inputs, spec)
            continue
        ref = model.run_with_interventions(case.inputs, spec)
        assert case.diff(backend.run(case.inputs, spec), ref) <= TOL
        assert case.diff(ref, case.bare_run().logits) > 1e-4


def test_every_hook_edit_changes_the_logits_and_leaves_the_model_clean(case: Case) -> None:
    """No inert hook point (an edit the model never reads would be a silent no-op), weights unchanged."""
    m = case.model
    weights = {k: v.clone() for k, v in m.hf_model.state_dict().items()}
    with torch.no_grad():
        clean = m(case.inputs)
        inert = []
        for i, name in enumerate(m.hook_dict):
            g = torch.Generator().manual_seed(i)
            noise = lambda x, hook: x + torch.randn(x.shape, generator=g) * (x.abs().mean() + 0.1)  # noqa: E731
            if name.endswith("hook_expert_indices"):  # MoE routing: send every token to other experts
                noise = lambda x, hook: (x + 1) % m.cfg.n_experts  # noqa: E731
            if case.diff(m.run_with_hooks(case.inputs, fwd_hooks=[(name, noise)]), clean) < 1e-6:
                inert.append(name)
        assert torch.equal(m(case.inputs), clean)
    assert not inert, f"editing these hook points did not change the logits: {inert}"
    assert all(torch.equal(v, weights[k]) for k, v in m.hf_model.state_dict().items())
    for name, mod in m.hf_model.named_modules():
        for fn in [*mod._forward_hooks.values(), *mod._forward_pre_hooks.values()]:
            assert not getattr(fn, "__module__", "").startswith("hooks_mm"), f"hook left on {name}"


def test_chameleon_with_swin_norm_is_refused() -> None:
    """Chameleon's swin_norm=True block has Llama's module names but its norms after each branch."""
    from hooks_mm import zoo

    config = zoo.build("chameleon").model.config
    config.swin_norm = True
    hf_model = transformers.ChameleonForConditionalGeneration(config).eval()
    assert type(hf_model.model.layers[0]).__name__ == "ChameleonSwinDecoderLayer"
    with pytest.raises(NotImplementedError, match=r"backbone 'chameleon' .*swin_norm=True"):
        HookedMLLM(hf_model)


def test_olmo_with_clip_qkv_is_refused() -> None:
    """OLMo-1 clamps q/k/v after the projections: hook_q would not be what attention reads."""
    with pytest.raises(NotImplementedError, match=r"backbone 'olmo' .*clip_qkv=8.0"):
        HookedMLLM(llava_over("OlmoConfig", clip_qkv=8.0, pad_token_id=0))
    HookedMLLM(llava_over("OlmoConfig", pad_token_id=0))  # without the clamp it is Llama-like


def test_a_block_with_a_module_its_row_does_not_place_is_refused() -> None:
    """Llama's names plus a module the row does not place (it may sit on the residual path): refused."""
    hf_model = llava_over("LlamaConfig")
    for layer in hf_model.model.language_model.layers:
        layer.post_mlp_norm = nn.LayerNorm(SMALL["hidden_size"])
    with pytest.raises(NotImplementedError, match=r"backbone 'llama' \(row 'llama'\).*does not name \(post_mlp_norm\)"):
        HookedMLLM(hf_model)
