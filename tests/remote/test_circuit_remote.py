"""Remote EAP (eap_graph(..., remote=...)): the graph of one nnsight request equals the local eap_graph's, through
nnsight in process, its serialisation round trip (``remote="local"``), the weightless client, and the real NDIF
stack (``ndif``: the trusted path computes it; the sandboxed path, which serves no gradients, is a clear error).
Misuse is refused before any request (no server answers at DEAD: a request would be a ServerUnavailableError)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import assert_clean, pair_for

from hooks_mm import HookedMLLM
from hooks_mm.circuits import Graph, eap_graph
from hooks_mm.circuits.remote import (
    GradientsNotServedError,
    check_remote_family,
    compare_clean,
    eap_memory,
    result_bytes,
)
from hooks_mm.model.meta import WeightlessError
from hooks_mm.remote import ModelMismatchError, NNsightBackend, load_nnsight
from hooks_mm.remote.budget import peak_tensor_bytes
from hooks_mm.sweep import answer_logprob

from .cases import inputs_for
from .weightless_cases import big_llava

REL = 1e-5
DEAD = "http://127.0.0.1:9"  # nothing listens there
_CACHE: dict[str, tuple] = {}


def setup() -> tuple:
    """(tiny-llava, clean inputs, corrupted inputs: the same prompts with other images)."""
    if not _CACHE:
        model = HookedMLLM.from_pretrained("tiny-llava")
        _CACHE["tiny-llava"] = (model, *inputs_for(model))
    return _CACHE["tiny-llava"]


def assert_same_graph(g: Graph, ref: Graph) -> None:
    assert [n.to_dict() for n in g.nodes] == [n.to_dict() for n in ref.nodes]
    assert torch.equal(g.src, ref.src) and torch.equal(g.dst, ref.dst)
    for got, want in ((g.scores, ref.scores), (g.node_scores, ref.node_scores)):
        gap = float((got - want).abs().max()) / float(want.abs().max())
        assert gap <= REL, f"relative gap {gap:.2e}"
    for k in ("metric_clean", "metric_corrupted"):
        assert g.meta[k] == pytest.approx(ref.meta[k], rel=1e-6, abs=1e-6)
    assert {k: v for k, v in g.meta.items() if k != "remote"} == ref.meta


def last_token_logprob(model: HookedMLLM, inputs: dict) -> object:
    """A plain callable metric (not a hooks_mm metric): mean log-prob of token 5 at the last position."""
    return lambda logits: logits[:, -1].log_softmax(-1)[:, 5].mean()


@pytest.mark.parametrize("remote", [False, "local"])
@pytest.mark.parametrize(
    "method, corruption, inputs", [("eap", "batch", "cell"), ("eap-ig", "batch", "image"), ("eap", "mean", "cell")]
)
def test_remote_graph_equals_the_local_eap_graph(remote: object, method: str, corruption: str, inputs: str) -> None:
    model, clean, other = setup()
    corrupted = other if corruption == "batch" else corruption
    metric = answer_logprob(model, clean)
    ref = eap_graph(model, clean, corrupted, metric, inputs=inputs, method=method, steps=3)
    g = eap_graph(model, clean, corrupted, metric, inputs=inputs, method=method, steps=3, remote=remote)
    assert_same_graph(g, ref)
    assert g.meta["remote"] == str(remote) and float(g.scores.abs().max()) > 0
    assert_clean(model)


@pytest.mark.parametrize("family", ["molmo2", "qwen2_vl"])
def test_other_families_with_another_image_as_corruption(family: str) -> None:
    """Molmo2's inputs hold indices into the image features (image_token_pooling): corrupted and clean inputs in one
    forward would pool the corrupted features for the clean copies (every score wrong); Qwen2-VL: M-RoPE positions."""
    p = pair_for(family)
    g = torch.Generator().manual_seed(0)
    pv = p.inputs["pixel_values"]
    other = {**p.inputs, "pixel_values": pv + torch.randn(pv.shape, generator=g).to(pv)}
    metric = lambda logits: logits[:, -1].float().log_softmax(-1)[:, 5].mean()  # noqa: E731
    ref = eap_graph(p.model, p.inputs, other, metric, method="eap-ig", steps=2)
    assert_same_graph(eap_graph(p.model, p.inputs, other, metric, method="eap-ig", steps=2, remote=False), ref)
    assert_clean(p.model)


def test_a_plain_callable_metric_and_zero_ablation_through_the_serialisation_round_trip() -> None:
    model, clean, _ = setup()
    metric = last_token_logprob(model, clean)
    ref = eap_graph(model, clean, "zero", metric, inputs="cell", method="eap-ig", steps=2)
    assert_same_graph(
        eap_graph(model, clean, "zero", metric, inputs="cell", method="eap-ig", steps=2, remote="local"), ref
    )


def test_a_metric_that_is_not_one_scalar_of_the_logits_is_a_clear_error_from_the_server() -> None:
    model, clean, other = setup()
    for metric in (lambda logits: logits[:, -1, 5], lambda logits: logits[:, -1, 5].mean().detach()):
        with pytest.raises(ValueError, match="not one scalar tensor that depends on the logits.*e.g. .mean()"):
            eap_graph(model, clean, other, metric, remote="local")
    assert_clean(model)


def test_the_weightless_client_gets_the_same_graph() -> None:
    model, clean, other = setup()
    ref = eap_graph(model, clean, other, answer_logprob(model, clean), inputs="cell")
    client = HookedMLLM.from_config("tiny-llava")
    metric = answer_logprob(client, clean)  # its targets (the clean argmax) come from the server's clean run
    assert_same_graph(eap_graph(client, clean, other, metric, inputs="cell", remote="local"), ref)
    assert_clean(client)


def test_what_comes_back_is_the_scores_not_gradients() -> None:
    model, clean, other = setup()
    big = big_llava(model.hf_model.config._name_or_path)
    n_inputs = 576 + 3  # llava-1.5: a 24 x 24 grid of cells, instruction, text, special tokens
    back = result_bytes(big, n_inputs)
    head_grads = big.cfg.n_layers * big.cfg.n_heads * 600 * big.cfg.d_model * 4  # per-head input gradients
    assert back < 6 << 20 and head_grads > 1000 * back
    g = eap_graph(model, clean, other, answer_logprob(model, clean), inputs="cell", remote=False)
    assert result_bytes(model, sum(n.kind == "input" for n in g.nodes)) == 4 * (len(g.scores) + len(g.nodes) + 6 * 2)


def test_the_memory_estimate_bounds_the_measured_peak() -> None:
    """eap_memory (less the weights) against the live tensor bytes of the same trace run in process, with the
    parameters frozen as a server's are: an upper bound, within 2x."""
    model, clean, other = setup()
    metric, batch = answer_logprob(model, clean), model.prepare(clean)
    metric.reducer()  # its clean reference: not part of the trace
    weights = sum(t.numel() * t.element_size() for t in [*model.hf_model.parameters(), *model.hf_model.buffers()])
    model.hf_model.requires_grad_(False)
    try:
        for steps in (1, 4):
            run = lambda: eap_graph(model, clean, other, metric, method="eap-ig", steps=steps, remote=False)  # noqa: E731
            _, peak = peak_tensor_bytes(run)
            estimate = eap_memory(model, batch, steps) - weights
            assert peak <= estimate <= 2 * peak, (steps, peak, estimate)
    finally:
        model.hf_model.requires_grad_(True)


def test_misuse_is_refused_before_any_request() -> None:
    model, clean, other = setup()
    metric = answer_logprob(model, clean)
    over = eap_memory(model, model.prepare(clean), 4)
    with pytest.raises(ValueError, match=r"steps=50 keeps the graph of 50 copies.*Pass steps<=\d"):
        eap_graph(model, clean, other, metric, method="eap-ig", steps=50, remote=DEAD, max_memory=over)
    with pytest.raises(ValueError, match="Even steps=1 does not fit"):
        eap_graph(model, clean, other, metric, method="eap-ig", steps=5, remote=DEAD, max_memory=1 << 20)
    with pytest.raises(TypeError, match=r"unknown options \['max_mem'\].*max_memory"):
        eap_graph(model, clean, other, metric, remote=DEAD, max_mem=1)
    with pytest.raises(ValueError, match="cannot be serialised.*Pass a hooks_mm metric"):
        eap_graph(model, clean, other, lambda logits: metric(logits), remote=DEAD)  # holds the HookedMLLM
    with pytest.raises(TypeError, match="backend= takes an NNsightBackend"):
        eap_graph(model, clean, other, metric, remote=DEAD, backend="http://127.0.0.1:8001")
    backend = NNsightBackend(model)
    with pytest.raises(ValueError, match=r"\['api_key'\] configure the backend.*set them on that NNsightBackend"):
        eap_graph(model, clean, other, metric, remote=DEAD, backend=backend, api_key="k")
    llama = HookedMLLM.from_pretrained("tiny-llama")
    with pytest.raises(ModelMismatchError, match="not the checkpoint the nnsight model addresses"):
        eap_graph(model, clean, other, metric, remote=DEAD, backend=NNsightBackend(llama))
    with pytest.raises(TypeError, match=r"options \['max_memory'\] apply to remote runs: pass remote="):
        eap_graph(model, clean, other, metric, max_memory=1 << 40)
    client = HookedMLLM.from_config("tiny-llava")
    with pytest.raises(WeightlessError, match="holds no weights.*remote=True or remote=URL"):
        eap_graph(client, clean, other, answer_logprob(client, clean))
    assert_clean(model)
    assert_clean(client)


def test_a_family_the_remote_trace_cannot_split_is_refused_naming_the_local_alternative() -> None:
    p = pair_for("gemma3")  # post-norms after attention: heads are not z_h @ W_O[h] alone
    with pytest.raises(NotImplementedError, match="post-norm.*without remote="):
        check_remote_family(p.model)
    blank = {**p.inputs, "pixel_values": torch.zeros_like(p.inputs["pixel_values"])}
    with pytest.raises(NotImplementedError, match="post-norm"):
        eap_graph(p.model, p.inputs, blank, lambda logits: logits[:, -1, 5].mean(), remote=DEAD)
    assert_clean(p.model)
    assert len(check_remote_family(pair_for("llava").model)) == pair_for("llava").model.cfg.n_layers


def test_a_server_clean_metric_other_than_the_local_one_warns() -> None:
    model, clean, _ = setup()
    batch, metric = model.prepare(clean), answer_logprob(model, clean)
    with torch.no_grad():
        local = float(metric(model(clean)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare_clean(model, batch, metric, local)
    with pytest.warns(UserWarning, match="weights differ from the local ones"):
        compare_clean(model, batch, metric, local + 0.1)


def test_the_servers_bookkeeping_check_raises() -> None:
    from hooks_mm.circuits.remote import check_splits

    model = setup()[0]
    ok = torch.tensor([[1.0, 1.0, 1e-5, 2.0, 2.0, 0.0]] * 2)
    check_splits(model, ok)
    bad = ok.clone()
    bad[1, 5] = 0.1
    with pytest.raises(RuntimeError, match="at layer 1 the MLP branch's input gradient differs"):
        check_splits(model, bad)


# ---------------------------------------------------------------------------------------------- the NDIF stack


def ndif_setup(info: dict) -> tuple:
    path = info["models"]["tiny-llava"]["path"]
    model = HookedMLLM.from_pretrained(path)
    clean, other = inputs_for(model)
    return model, NNsightBackend(model, load_nnsight(path, processor=model.processor)), clean, other


@pytest.mark.ndif
@pytest.mark.sandboxed
def test_ndif_trusted_path_computes_the_local_graph_and_the_sandbox_refuses_clearly(ndif: dict) -> None:
    model, backend, clean, other = ndif_setup(ndif)
    metric = answer_logprob(model, clean)
    ref = eap_graph(model, clean, other, metric, inputs="cell", method="eap-ig", steps=2)
    call = lambda: eap_graph(  # noqa: E731
        model, clean, other, metric, inputs="cell", method="eap-ig", steps=2, remote=ndif["host"], backend=backend
    )
    if ndif["path"] == "sandboxed":
        with pytest.raises(GradientsNotServedError, match="sandboxed path.*trusted API key.*without remote="):
            call()
        return
    before = backend.stats.bytes_received
    assert_same_graph(call(), ref)
    received = backend.stats.bytes_received - before
    assert received < 64 << 10, received  # the scores (a few KB pickled), no activations or gradients
    print(f"\nremote EAP on NDIF: {received:,} bytes returned for {len(ref.scores)} edges")
    assert_clean(model)


@pytest.mark.ndif
def test_ndif_weightless_client(ndif: dict) -> None:
    model, _, clean, other = ndif_setup(ndif)
    ref = eap_graph(model, clean, other, answer_logprob(model, clean), inputs="image")
    client = HookedMLLM.from_config(ndif["models"]["tiny-llava"]["path"])
    g = eap_graph(client, clean, other, answer_logprob(client, clean), inputs="image", remote=ndif["host"])
    assert_same_graph(g, ref)
