"""EXAONE-4's post-norm block (no norm before attention or the MLP) and Llama 4's text stack."""

from __future__ import annotations

import pytest
import torch

from hooks_mm import HookedMLLM
from hooks_mm.adapters import BACKBONES
from tests.test_backbones import Case


@pytest.fixture(scope="module")
def exaone() -> Case:
    return Case("exaone4")


def test_exaone4_block_has_no_ln1_or_ln2_hooks_and_resid_mid_is_the_mlp_input(exaone: Case) -> None:
    model = exaone.model
    assert model.adapter.backbone is BACKBONES["exaone4"]
    names = set(model.hook_dict)
    for l in range(model.cfg.n_layers):
        assert f"blocks.{l}.ln1.hook_normalized" not in names and f"blocks.{l}.ln2.hook_normalized" not in names
        assert f"blocks.{l}.hook_resid_mid" in names
    with pytest.raises(KeyError):
        model.run_with_cache(exaone.inputs, names_filter=["blocks.0.ln1.hook_normalized"])
    seen = {}
    exaone.bare_run([(exaone.layers[1].mlp, "pre", lambda m, args: seen.__setitem__("mid", args[0]))])
    _, cache = model.run_with_cache(exaone.inputs, names_filter=["blocks.1.hook_resid_mid"])
    assert torch.equal(cache["blocks.1.hook_resid_mid"], seen["mid"])


def test_exaone4_block_under_a_pre_norm_row_is_refused(exaone: Case) -> None:
    """The Llama-like row forced on EXAONE-4's block: input_layernorm is missing, named before any hook."""
    from hooks_mm.adapters import Adapter, adapter_for

    adapter = adapter_for(exaone.bare)
    wrong = Adapter(**{**adapter.__dict__, "backbone": BACKBONES["llama"]})
    with pytest.raises(NotImplementedError, match=r"backbone 'exaone4' \(row 'llama'\).*no module input_layernorm"):
        HookedMLLM(exaone.bare, adapter=wrong)


def test_llama4_plan_cells_are_the_pixel_shuffle_cells() -> None:
    """Each image position's (tile, row, col) is the cell the pixel shuffle builds from patches
    (2 row .. 2 row + 1, 2 col .. 2 col + 1) of that tile: a change to one patch of the vision adapter's
    input moves exactly the projected row the plan puts at that cell."""
    from hooks_mm.zoo.llama4_aria import PATCH, TILE, build_llama4

    tiny = build_llama4()
    model = HookedMLLM(tiny.model)
    plans = model.adapter.image_plans(tiny.model.config, tiny.inputs)
    plan = torch.cat(plans)  # [n_cells, 3] in pixel_values order, as the features are scattered
    # tile index within the whole batch: tiles of image i follow those of images before it
    starts = torch.tensor([0, *[int(p[:, 0].max()) + 1 for p in plans]]).cumsum(0)[:-1]
    global_tile = torch.cat([p[:, 0] + s for p, s in zip(plans, starts)])
    side = TILE // PATCH
    adapter = tiny.model.vision_model.vision_adapter

    def projected(bump: tuple[int, int, int] | None) -> torch.Tensor:
        def pre(m, args):  # noqa: ANN001, ANN202
            x = args[0].clone()
            if bump is not None:
                t, r, c = bump
                x[t, r * side + c] += 3.0
            return (x,)

        h = adapter.register_forward_pre_hook(pre)
        try:
            _, cache = model.run_with_cache(tiny.inputs, names_filter=["hook_projector_out"])
        finally:
            h.remove()
        return cache["hook_projector_out"].reshape(-1, cache["hook_projector_out"].shape[-1])

    clean = projected(None)
    assert len(clean) == len(plan)
    for tile, pr, pc in [(0, 0, 1), (0, 5, 2), (2, 3, 0), (6, 4, 5)]:
        moved = ((projected((tile, pr, pc)) - clean).abs().amax(-1) > 0).nonzero().flatten().tolist()
        want = ((global_tile == tile) & (plan[:, 1] == pr // 2) & (plan[:, 2] == pc // 2)).nonzero().flatten()
        assert moved == want.tolist(), (tile, pr, pc, moved, want)
