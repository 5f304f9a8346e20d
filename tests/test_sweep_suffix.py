"""Suffix reuse in exact sweeps: the fast path replays only the positions an ablation can change.

The reference is the naive loop (one plain intervention forward per config): on every family the
fast path takes, at ``Last()``, at media positions and at a middle text position; bidirectional
blocks (PaliGemma's prefix, Gemma 3's images) and the fallbacks each have a test that fails when
the rule is dropped."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_clean, pair_for

from hooks_mm import Audio, HookedMLLM, Image, Last, Positions, Video, zoo
from hooks_mm.interventions import NeuronAblation
from hooks_mm.layout import Modality
from hooks_mm.sweep import answer_logprob, modality_nll, single_neurons, sweep
from hooks_mm.sweep import replay as replay_module
from hooks_mm.sweep.suffix import Unsliceable, causal_allowed, slice_inputs, suffix_start

# families whose layers keep a state that is not keys / values (linear attention, short convolutions):
# suffix reuse off, with the reason in meta
NO_REUSE = {
    "qwen3_5": "get_conv_state",
    "qwen3_5_moe": "get_conv_state",
    "lfm2_vl": "conv",
    "lfm3_vl": "conv",
    "lfm3_vl_video": "conv",
    "minicpmv4_6": "conv",
    "minicpmv4_7": "conv",
    "minicpm_ocr": "conv",
}


def dense_layers(model) -> list[int]:  # noqa: ANN001
    cfg = model.cfg
    return [l for l in range(cfg.n_layers) if l not in cfg.moe_layers and l not in cfg.cross_attn_layers]


def middle_text(p) -> int:  # noqa: ANN001
    """A text position in the middle of the sequence, text in every row."""
    layout = p.model.layout(p.inputs)
    text = (layout.modality == Modality.TEXT).all(0).nonzero().flatten()
    return int(text[len(text) // 2])


def media(p):  # noqa: ANN001, ANN201
    layout = p.model.layout(p.inputs)
    return next((s for s in (Image(), Video(), Audio()) if bool(layout.select(s).any())), None)


def groups(meta: dict, positions: str) -> list[int]:
    return [g["replayed"] for g in meta["replayed"] if g["positions"] == positions]


def sweep_both(model, inputs, cfgs, metric, **kw):  # noqa: ANN001, ANN003, ANN201
    fast = sweep(model, inputs, cfgs, metric, progress=False, batch_size=4, method="fast", **kw)
    naive = sweep(model, inputs, cfgs, metric, method="naive", progress=False, **kw)
    return fast, naive


@pytest.mark.parametrize("family", sorted(zoo.BUILDERS))
def test_suffix_reuse_equals_the_naive_loop_on_every_family(family: str) -> None:
    p = pair_for(family)
    model = p.model
    dense = dense_layers(model)
    if not dense or not model.cfg.d_mlp:
        pytest.skip(f"{family}: no dense MLP layer (no fast-path config)")
    sels = [Last(), Positions([middle_text(p)])] + ([media(p)] if media(p) is not None else [])
    layers = sorted({dense[0], dense[-1] if len(dense) < 3 else dense[-2]})  # and one near the top
    cfgs = [
        c for s in sels for c in [*single_neurons(model, layers, s, neurons=[3]), NeuronAblation(layers[0], None, s)]
    ]
    metric = answer_logprob(model, p.inputs)
    fast = sweep(model, p.inputs, cfgs, metric, progress=False, batch_size=4)
    naive = sweep(model, p.inputs, cfgs, metric, method="naive", progress=False)
    assert (fast.values - naive.values).abs().max().item() <= 1e-5
    assert torch.equal(fast.clean, naive.clean)
    meta = fast.meta
    if meta["fast"] == 0:
        pytest.skip(f"{family}: no config takes the fast path (the replay does not verify)")
    if family in NO_REUSE:
        assert meta["suffix"].startswith("off: ") and NO_REUSE[family] in meta["suffix"], meta["suffix"]
        assert {g["replayed"] for g in meta["replayed"]} == {meta["seq_len"]}
    else:
        assert meta["suffix"] == "on", meta["suffix"]
        assert max(groups(meta, "Last()")) < meta["seq_len"]  # used: Last() replays a short suffix
    assert_clean(model)


def test_replayed_length_is_what_the_layout_says_on_a_causal_model() -> None:
    """LLaVA (causal, left-padded): Last() replays 1 position, the image its first position on, a text
    position from there on (hand-computed from the layout); a full-logits metric too."""
    p = pair_for("llava")
    layout = p.model.layout(p.inputs)
    seq = layout.shape[1]
    first_image = int(layout.select(Image()).any(0).nonzero()[0])
    mid = middle_text(p)
    cfgs = [NeuronAblation(0, [3], s) for s in (Last(), Image(), Positions([mid]))]
    fast, naive = sweep_both(p.model, p.inputs, cfgs, answer_logprob(p.model, p.inputs))
    assert (fast.values - naive.values).abs().max().item() <= 1e-6
    assert (naive.values - naive.clean).abs().min() > 1e-6  # every config changes the metric
    assert [g["replayed"] for g in fast.meta["replayed"]] == [1, seq - first_image, seq - mid]
    nll = modality_nll(p.model, p.inputs)  # every position's logits: the clean prefix's in front
    fast, naive = sweep_both(p.model, p.inputs, cfgs, nll)
    assert (fast.values - naive.values).abs().max().item() <= 1e-6
    assert [g["replayed"] for g in fast.meta["replayed"]] == [1, seq - first_image, seq - mid]
    assert_clean(p.model)


def test_a_metric_position_before_the_ablation_is_replayed_and_unchanged() -> None:
    p = pair_for("llava")
    mid = middle_text(p)
    metric = answer_logprob(p.model, p.inputs, positions=Positions([mid]))
    fast, naive = sweep_both(p.model, p.inputs, [NeuronAblation(0, None, Last())], metric)
    assert fast.meta["replayed"][0]["replayed"] == p.model.layout(p.inputs).shape[1] - mid
    assert float((fast.values - fast.clean).abs().max()) <= 1e-6  # causal: nothing before Last() changes
    assert (fast.values - naive.values).abs().max().item() <= 1e-6


def test_an_unpadded_batch_with_the_implicit_causal_mask() -> None:
    """No padding: HF passes no mask (SDPA's is_causal); the suffix gets an explicit causal one."""
    p = pair_for("llama")
    ids = torch.randint(3, 40, (2, 9), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    cfgs = [NeuronAblation(0, None, s) for s in (Last(), Positions([4]))] + [NeuronAblation(0, [1, 2], Last())]
    fast, naive = sweep_both(p.model, inputs, cfgs, answer_logprob(p.model, inputs))
    assert (fast.values - naive.values).abs().max().item() <= 1e-6
    assert [g["replayed"] for g in fast.meta["replayed"]] == [1, 5] and fast.meta["suffix"] == "on"
    assert_clean(p.model)


_DEEP: dict[str, tuple] = {}


def deeper(family: str, n_layers: int = 4):  # noqa: ANN201
    """The tiny family with ``n_layers`` decoder layers (the tiny ones have 2: a change inside a block must
    cross two layers above the ablated one to reach the last position), larger random weights; its inputs."""
    if family not in _DEEP:
        tiny = zoo.build(family)
        config = copy.deepcopy(tiny.model.config)
        text = config.text_config
        text.num_hidden_layers = n_layers
        text.initializer_range = 0.2  # strong enough mixing that a wrong suffix shows in the metric
        if getattr(text, "layer_types", None):
            text.layer_types = (text.layer_types * n_layers)[:n_layers]
        torch.manual_seed(0)
        _DEEP[family] = (HookedMLLM(type(tiny.model)(config).eval(), tiny.processor), tiny.inputs)
    return _DEEP[family]


def _bidirectional_case(family: str) -> tuple[int, int]:
    """A position inside a bidirectional block, after its start; the block's start."""
    model, inputs = deeper(family)
    layout = model.layout(inputs)
    if family == "paligemma":  # prefix-LM: image + prompt attend both ways, from position 0
        return int((layout.modality == Modality.TEXT).all(0).nonzero()[0]) + 1, 0
    img = layout.select(Image())  # Gemma 3: each image block attends both ways
    start = int(img.all(0).nonzero()[0])  # an image block that starts here in every row
    assert not bool(img[:, start - 1].any())
    return start + 3, start


@pytest.mark.parametrize("family", ["paligemma", "gemma3"])
def test_bidirectional_blocks_reuse_only_what_is_unchanged(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, inputs = deeper(family)
    pos, block_start = _bidirectional_case(family)
    seq = model.layout(inputs).shape[1]
    cfgs = [NeuronAblation(0, None, Positions([pos]))]
    metric = answer_logprob(model, inputs)
    fast, naive = sweep_both(model, inputs, cfgs, metric)
    assert fast.meta["replayed"][0]["replayed"] == seq - block_start  # the block's start, not the ablated position
    assert (fast.values - naive.values).abs().max().item() <= 1e-7
    # the rule matters: a replay from the ablated position (the block's earlier positions kept clean) is wrong
    monkeypatch.setattr(replay_module, "suffix_start", lambda allowed, first: first)
    wrong = sweep(model, inputs, cfgs, metric, progress=False, method="fast")
    assert wrong.meta["replayed"][0]["replayed"] == seq - pos
    assert (wrong.values - naive.values).abs().max().item() > 1e-4
    assert_clean(model)


def test_suffix_start_from_masks() -> None:
    causal = causal_allowed(8)
    assert [suffix_start(causal, f) for f in range(8)] == list(range(8))
    block = causal.clone()
    block[2:5, 2:5] = True  # a bidirectional block over 2..4
    assert [suffix_start(block, f) for f in range(8)] == [0, 1, 2, 2, 2, 5, 6, 7]
    chained = block.clone()
    chained[4:7, 4:7] = True  # overlapping blocks chain: a change at 5 reaches 4, which reaches 2
    assert suffix_start(chained, 5) == 2
    window = causal & ~causal_allowed(8).tril(-3)  # sliding window of 3: still causal
    assert [suffix_start(window, f) for f in range(8)] == list(range(8))
    assert suffix_start(torch.ones(8, 8, dtype=torch.bool), 6) == 0  # fully bidirectional


def test_slice_inputs_refuses_what_it_cannot_cut() -> None:
    seq = 6
    mask = torch.ones(2, 1, seq, seq, dtype=torch.bool)
    cos = torch.randn(1, seq, 4)
    args, kw = slice_inputs((), {"attention_mask": mask, "position_embeddings": (cos, cos)}, 4, seq, torch.float32)
    assert kw["attention_mask"].shape == (2, 1, 2, seq) and torch.equal(kw["position_embeddings"][0], cos[:, 4:])
    with pytest.raises(Unsliceable, match="linear-attention"):
        slice_inputs((), {"attention_mask": torch.ones(2, seq)}, 2, seq, torch.float32)
    with pytest.raises(Unsliceable, match="shared_kv_states"):
        slice_inputs((), {"shared_kv_states": {}}, 2, seq, torch.float32)
    with pytest.raises(Unsliceable, match="positional"):
        slice_inputs((torch.zeros(2, seq, 3),), {}, 2, seq, torch.float32)


def test_fallbacks_are_said_in_meta() -> None:
    p = pair_for("llava")
    cfgs = [NeuronAblation(0, [3], Last())]
    metric = answer_logprob(p.model, p.inputs)
    off = sweep(p.model, p.inputs, cfgs, metric, progress=False, suffix=False)
    on = sweep(p.model, p.inputs, cfgs, metric, progress=False)
    assert off.meta["suffix"] == "off: turned off (suffix=False)" and off.meta["replayed"][0]["replayed"] == 42
    assert on.meta["replayed"][0]["replayed"] == 1 and (on.values - off.values).abs().max() <= 1e-6
    with pytest.raises(TypeError, match="suffix='no': pass True"):
        sweep(p.model, p.inputs, cfgs, metric, suffix="no")  # type: ignore[arg-type]
    hybrid = pair_for("qwen3_5")  # linear-attention layers keep a state, not keys / values
    res = sweep(hybrid.model, hybrid.inputs, cfgs, answer_logprob(hybrid.model, hybrid.inputs), progress=False)
    assert res.meta["suffix"].startswith("off: ") and res.meta["replayed"][0]["replayed"] == res.meta["seq_len"]
    assert_clean(p.model)
    assert_clean(hybrid.model)
