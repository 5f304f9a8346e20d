"""generate(): hooks fire at every step, and the KV cache changes nothing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_clean, pair_for
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList

from hooks_mm import Generated, Image, Last, Modality, Selector, Where
from hooks_mm.interventions import Intervention, NeuronAblation, Patch, Steer
from hooks_mm.interventions.ops import step
from hooks_mm.layout import generation_layout
from hooks_mm.model.generation import stepped


@pytest.mark.parametrize("family", ["llama", "llava", "qwen2_vl"])
def test_hooks_fire_at_every_step_with_kv_cache(family: str) -> None:
    p = pair_for(family)
    steps: list[tuple[int, list[int]]] = []
    record = lambda x, hook: steps.append((x.shape[1], p.model.positions.tolist()))  # noqa: E731
    n_new, seq = 4, p.inputs["input_ids"].shape[1]
    out = p.model.generate(
        p.inputs, max_new_tokens=n_new, min_new_tokens=n_new, fwd_hooks=[("blocks.1.hook_resid_post", record)]
    )
    assert out.shape[1] == seq + n_new
    assert [s for s, _ in steps] == [seq] + [1] * (n_new - 1)  # cached steps see one position
    assert steps[0][1] == list(range(seq)) and [pos for _, pos in steps[1:]] == [[seq + i] for i in range(n_new - 1)]
    assert_clean(p.model) and p.model.positions is None


@pytest.mark.parametrize("family", ["llama", "llava"])
def test_edit_during_generation_is_kv_cache_consistent(family: str) -> None:
    p = pair_for(family)
    steer = torch.randn(p.model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 4
    hooks = [("blocks.0.hook_resid_post", lambda x, hook: x + steer)]
    kw = dict(max_new_tokens=6, min_new_tokens=6)
    plain = p.model.generate(p.inputs, **kw)
    cached = p.model.generate(p.inputs, fwd_hooks=hooks, **kw)
    uncached = p.model.generate(p.inputs, fwd_hooks=hooks, use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain)
    assert torch.equal(p.model.generate(p.inputs, **kw), plain)
    assert_clean(p.model)


# ---------------------------------------------------------------- issue 16: raw hooks and misuse beside interventions=


def test_a_full_sequence_raw_hook_gets_a_clear_error_and_a_step_aware_one_works() -> None:
    """The README quickstart's ablation hook indexes a [batch, seq] mask: in a cached step it names itself, the
    step's positions and the fix; written with model.positions it equals the spec doing the same edit."""
    p = pair_for("llava")
    model, n = p.model, p.inputs["input_ids"].shape[1]
    img = model.layout(p.inputs).select(Image())

    def ablate(acts, hook):  # noqa: ANN001, ANN202
        acts[..., [3, 7]] = acts[..., [3, 7]].masked_fill(img[..., None], 0.0)

    with pytest.raises(ValueError, match=rf"'.*ablate'.*blocks\.0\.mlp\.hook_post.*position {n}\b.*interventions="):
        model.generate(p.inputs, max_new_tokens=3, fwd_hooks=[("blocks.0.mlp.hook_post", ablate)])
    assert_clean(model) and model.positions is None

    def step_aware(acts, hook):  # noqa: ANN001, ANN202
        m = torch.zeros(acts.shape[:2], dtype=torch.bool)
        inside = model.positions < img.shape[1]
        m[:, inside] = img[:, model.positions[inside]]
        acts[..., [3, 7]] = acts[..., [3, 7]].masked_fill(m[..., None], 0.0)

    kw = dict(max_new_tokens=4, min_new_tokens=4, output_logits=True, return_dict_in_generate=True)
    raw = model.generate(p.inputs, fwd_hooks=[("blocks.0.mlp.hook_post", step_aware)], **kw)
    spec = model.generate(p.inputs, interventions=NeuronAblation(0, [3, 7], Image()), **kw)
    plain = model.generate(p.inputs, **kw)
    assert torch.equal(raw.sequences, spec.sequences)
    for a, b, c in zip(raw.logits, spec.logits, plain.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert max(float((a - c).abs().max()) for a, c in zip(raw.logits, plain.logits)) > 1e-4
    # hooks compiled for a full forward, passed as raw hooks: the error points to interventions=
    hooks = Steer(0, [1.0] * model.cfg.d_model, Image()).compile(model, p.inputs)
    with pytest.raises(ValueError, match=r"generate\(inputs, interventions=spec\)") as info:
        model.generate(p.inputs, max_new_tokens=3, fwd_hooks=hooks)
    assert "not to KV-cached generation steps" not in str(info.value.__cause__)
    assert_clean(model) and model.positions is None


def test_logits_processor_reaches_hf_generate() -> None:
    p = pair_for("llava")

    class Force(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            out = torch.full_like(scores, -float("inf"))
            out[:, 9] = 0.0
            return out

    spec = Steer(0, [1.0] * p.model.cfg.d_model, Generated())
    out = p.model.generate(
        p.inputs, max_new_tokens=3, interventions=spec, logits_processor=LogitsProcessorList([Force()])
    )
    assert (out[:, -3:] == 9).all()
    assert_clean(p.model)


def _misuse(p):  # noqa: ANN001, ANN202
    d, n = p.model.cfg.d_model, p.inputs["input_ids"].shape[1]
    steer = Steer(0, [1.0] * d, Generated())
    right = dict(p.inputs, attention_mask=p.inputs["attention_mask"].flip(1), input_ids=p.inputs["input_ids"].flip(1))
    src = {"clean": p.inputs}
    return {
        "not a spec": (dict(interventions="steer"), TypeError, "takes an intervention spec"),
        "hook list as spec": (dict(interventions=[("blocks.0.hook_resid_post", abs)]), TypeError, "fwd_hooks="),
        "sources without spec": (dict(sources=src), ValueError, "sources= given without interventions="),
        "missing source": (dict(interventions=Patch(0, "clean", positions=Image())), KeyError, "sources="),
        "only padding": (
            dict(interventions=Steer(0, [1.0] * d, Where(lambda L: L.modality == Modality.PAD))),
            ValueError,
            "select nothing but padding",
        ),
        "patch same at generated": (
            dict(interventions=Patch(0, "clean", positions=Generated()), sources=src),
            ValueError,
            "select generated positions.*map='order'",
        ),
        "resample at the current step": (
            dict(interventions=NeuronAblation(0, [1], Last(), mode="resample", source="clean"), sources=src),
            ValueError,
            "select generated positions",
        ),
        "beams": (dict(interventions=steer, num_beams=2), ValueError, "num_beams=2.*one sequence per row"),
        "return sequences": (
            dict(interventions=steer, num_return_sequences=2, do_sample=True),
            ValueError,
            "num_return_sequences=2",
        ),
        "max_length": (dict(interventions=steer, max_length=n + 3), ValueError, "pass max_new_tokens"),
        "past_key_values": (dict(interventions=steer, past_key_values=DynamicCache()), ValueError, "cache computed"),
        "zero new tokens": (dict(interventions=steer, max_new_tokens=0), ValueError, "positive int"),
        "right padded": (dict(inputs=right, interventions=steer), ValueError, "right-padded"),
    }


@pytest.mark.parametrize(
    "name",
    [
        "not a spec",
        "hook list as spec",
        "sources without spec",
        "missing source",
        "only padding",
        "patch same at generated",
        "resample at the current step",
        "beams",
        "return sequences",
        "max_length",
        "past_key_values",
        "zero new tokens",
        "right padded",
    ],
)
def test_generate_misuse_is_refused_before_any_hook(name: str) -> None:
    p = pair_for("llava")
    kwargs, error, message = _misuse(p)[name]
    kwargs = dict(kwargs)
    inputs = kwargs.pop("inputs", p.inputs)
    kwargs.setdefault("max_new_tokens", 3)
    with pytest.raises(error, match=message):
        p.model.generate(inputs, **kwargs)
    assert_clean(p.model) and p.model.positions is None


def test_generate_inside_an_interventions_block_is_refused() -> None:
    p = pair_for("llava")
    spec = Steer(0, [1.0] * p.model.cfg.d_model, Image())
    other = dict(p.inputs, pixel_values=-p.inputs["pixel_values"])
    for batch in (p.inputs, other):  # the block's own batch too: its hooks are for full forwards
        with p.model.interventions(spec, p.inputs):
            with pytest.raises(ValueError, match=r"model.interventions\(spec, inputs\) block.*interventions=spec"):
                p.model.generate(batch, max_new_tokens=3)
        assert_clean(p.model)


def test_generated_selects_only_in_generation() -> None:
    p = pair_for("llava")
    assert Selector.from_dict(Generated().to_dict()) == Generated()
    spec = Steer(0, [1.0] * p.model.cfg.d_model, Generated() | Last())
    assert Intervention.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="select nothing"):
        p.model.run_with_interventions(p.inputs, Steer(0, [1.0] * p.model.cfg.d_model, Generated()))
    layout = p.model.layout(p.inputs)
    n = layout.shape[1]
    ext = generation_layout(layout, n + 3)
    assert ext.select(Generated()).sum(1).tolist() == [3, 3] and not layout.select(Generated()).any()
    assert (ext.modality[:, n:] == Modality.TEXT).all() and (ext.image_index[:, n:] == -1).all()
    last = ext.select(Last())  # the current step: the prompt's last position, then every generated one
    assert last[:, n - 1 :].all() and not last[:, : n - 1].any()
    assert torch.equal(generation_layout(ext, n).modality, layout.modality)
    assert torch.equal(layout.select(Last()), generation_layout(ext, n).select(Last()))
    assert_clean(p.model)


def test_step_slices_ops_to_the_step_and_refuses_positions_past_the_layout() -> None:
    mask = torch.tensor([[True, False, True, False, True]])
    v = torch.ones(3)
    assert torch.equal(step(("steer", mask, v, 1.0), torch.arange(2, 4))[1], mask[:, 2:4])
    copy = step(
        ("copy", "k", torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([0, 0]), torch.tensor([1, 4]), (1, 5)),
        torch.arange(4, 5),
    )
    assert copy[3].tolist() == [2] and copy[5].tolist() == [0]  # the source column of target 4, shifted to 0
    assert copy[6] == (1, 1)
    block = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    block[0, 0, 3, 1] = True
    assert step(("knock", block), torch.arange(3, 4))[1].shape == (1, 1, 1, 4)  # keys 0..3
    assert step(("knock", block), torch.arange(3, 4), n_keys=2)[1][0, 0, 0].tolist() == [False, False]  # keys 2, 3
    assert step(("knock", block), torch.arange(3, 4), n_keys=6)[1][0, 0, 0].tolist() == [False, True] + [False] * 4
    with pytest.raises(ValueError, match="past the 5 positions.*max_new_tokens"):
        step(("zero", mask), torch.arange(5, 6))
    with pytest.raises(ValueError, match="not contiguous"):
        step(("zero", mask), torch.tensor([0, 2]))


def test_a_stepped_edit_outside_a_tracked_forward_is_refused() -> None:
    fn = stepped(("zero", torch.ones(1, 3, dtype=torch.bool)), {}, SimpleNamespace(positions=None))
    with pytest.raises(RuntimeError, match="outside a tracked generation forward"):
        fn(torch.ones(1, 3, 2), SimpleNamespace(name="blocks.0.hook_resid_post"))
    fn = stepped(("zero", torch.tensor([[False, True, False]])), {}, SimpleNamespace(positions=torch.arange(1, 2)))
    assert torch.equal(fn(torch.ones(1, 1, 2), SimpleNamespace(name="x")), torch.zeros(1, 1, 2))
