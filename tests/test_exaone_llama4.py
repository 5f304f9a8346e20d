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
