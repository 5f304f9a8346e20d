"""The weightless client (HookedMLLM.from_config) without a server: no weights, same layouts and plans,
forwards refused, sweeps through nnsight equal to the loaded model's."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import assert_clean

from hooks_mm import HookedMLLM, Image, Last, NonPad
from hooks_mm.interventions import NeuronAblation, Steer
from hooks_mm.model.meta import WeightlessError
from hooks_mm.remote import ModelMismatchError, NNsightBackend, load_nnsight, remote_sweep
from hooks_mm.remote.compile import compile_plan
from hooks_mm.sweep import answer_logprob, kl_to_clean, single_neurons, sweep
from hooks_mm.zoo import resolve

from .cases import inputs_for, specs_for
from .weightless_cases import all_meta, big_llava, rss_bytes, same

TOL = 1e-6
_CACHE: dict[str, tuple] = {}


def setup() -> tuple:
    """(loaded tiny-llava, weightless tiny-llava, inputs, source run)."""
    if not _CACHE:
        full, client = HookedMLLM.from_pretrained("tiny-llava"), HookedMLLM.from_config("tiny-llava")
        _CACHE["tiny-llava"] = (full, client, *inputs_for(full))
    return _CACHE["tiny-llava"]


def test_from_config_holds_no_weights_and_compiles_what_the_loaded_model_compiles() -> None:
    full, client, inputs, source = setup()
    assert all_meta(client) and not any(p.is_meta for p in full.parameters())
    assert client.cfg.device.type == "meta" and client.cfg.dtype == full.cfg.dtype
    for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "family"):
        assert getattr(client.cfg, k) == getattr(full.cfg, k), k
    assert list(client.hook_dict) == list(full.hook_dict)
    batch, ref = client.prepare(inputs), full.prepare(inputs)
    assert all(v.device.type == "cpu" for v in batch.model_inputs.values() if torch.is_tensor(v))
    assert same(batch.model_inputs, ref.model_inputs)
    for sel in (Image(), Last(), NonPad()):
        assert torch.equal(batch.layout.select(sel), ref.layout.select(sel))
    specs = list(specs_for(full, inputs).values())  # every kind nnsight compiles (means / bank fitted on `full`)
    mine = compile_plan(client, specs, inputs, {"clean": source})
    theirs = compile_plan(full, specs, inputs, {"clean": source})
    assert mine["copies"] == len(specs) and mine["sites"] and same(mine, theirs)


def test_a_forward_on_the_weightless_client_is_a_clear_error_and_adds_no_hook() -> None:
    full, client, inputs, _ = setup()
    hook = ("blocks.0.hook_resid_post", lambda x, hook: x)
    seq = client.prepare(inputs).shape[1]
    spec = NeuronAblation(0, [1], Image())
    calls = {
        "forward": lambda: client(inputs),
        "run_with_cache": lambda: client.run_with_cache(inputs, names_filter=lambda n: "resid" in n),
        "run_with_hooks": lambda: client.run_with_hooks(inputs, fwd_hooks=[hook]),
        "run_with_interventions": lambda: client.run_with_interventions(inputs, spec),
        "generate": lambda: client.generate(inputs, max_new_tokens=2),
        "local sweep": lambda: sweep(client, inputs, [spec], lambda logits: logits.mean(), progress=False),
        "answer_logprob w/o targets": lambda: answer_logprob(client, inputs)(torch.zeros(2, seq, client.cfg.d_vocab)),
        "kl_to_clean": lambda: kl_to_clean(client, inputs).reducer(),
    }
    for name, call in calls.items():
        with pytest.raises(WeightlessError, match="holds no weights.*run it remotely.*remote_sweep"):
            call()
        assert_clean(client)
    with pytest.raises(WeightlessError), client.interventions(spec, inputs):
        pass
    assert_clean(client)
    targets = torch.tensor([5, 7])  # given targets need no clean run: the metric works on given logits
    logits = torch.randn(2, seq, client.cfg.d_vocab)
    metric = answer_logprob(client, inputs, targets)
    assert torch.allclose(metric(logits), answer_logprob(full, inputs, targets)(logits))


@pytest.mark.parametrize("remote", [False, "local"])
def test_weightless_sweep_equals_the_loaded_sweep(remote: str | bool) -> None:
    full, client, inputs, _ = setup()
    configs = single_neurons(client, layers=[0, 1], positions=Image(), neurons=range(0, 128, 8))
    configs += [Steer(1, vector=[0.05 * i] * client.cfg.d_model, positions=NonPad()) for i in range(1, 3)]
    for make in (answer_logprob, kl_to_clean):  # both derive their reference from the clean run
        ref = sweep(full, inputs, configs, make(full, inputs), progress=False)
        out = remote_sweep(
            client, inputs, configs, make(client, inputs), remote=remote, max_configs_per_request=8, progress=False
        )
        assert (ref.values - out.values).abs().max() <= TOL and (ref.clean - out.clean).abs().max() <= TOL
        assert ref.values.std() > 1e-4, "configs that change nothing would prove nothing"
        assert out.meta["weights_check"].startswith("skipped: the client holds no weights")
        # one request for the clean reference at the metric's positions, then the sweep's own
        assert out.meta["requests"] == (0 if remote is False else 1 + -(-(len(configs) + 1) // 8))
    assert all_meta(client)  # nnsight ran its own copy of the checkpoint, never the client's parameters
    loaded = remote_sweep(full, inputs, configs[:2], answer_logprob(full, inputs), remote="local", progress=False)
    assert "weights_check" not in loaded.meta


def test_a_7b_size_config_costs_no_parameter_memory_and_compiles_on_cpu() -> None:
    path = resolve("tiny-llava")
    before, t0 = rss_bytes(), time.perf_counter()
    big = big_llava(path, dtype="float16")
    seconds, grown = time.perf_counter() - t0, rss_bytes() - before
    n_params = sum(p.numel() for p in big.parameters())
    assert n_params > 6.4e9 and all_meta(big) and big.cfg.dtype == torch.float16
    assert grown < 200e6, f"building the 7B-size client grew the process by {grown / 1e6:.0f} MB"
    assert big.cfg.n_layers == 32 and big.cfg.d_mlp == 11008 and big.cfg.d_model == 4096
    inputs, _ = inputs_for(big)
    batch = big.prepare(inputs)
    assert batch.model_inputs["pixel_values"].dtype == torch.float16  # cast to the dtype the server runs
    plan = compile_plan(big, [NeuronAblation(31, [11007], Image()), None], inputs)
    (path_, attr, edits) = plan["sites"][0]
    assert path_.endswith("layers.31.mlp.down_proj") and attr == "input" and len(edits) == 1
    print(f"\n7B-size weightless client: {n_params / 1e9:.2f} B parameters, {seconds:.2f} s, +{grown / 1e6:.0f} MB RSS")


def test_a_weightless_client_of_another_architecture_is_refused_from_the_config() -> None:
    path = resolve("tiny-llava")
    big = big_llava(path)  # addressed to tiny-llava's key, but 32 layers of d_model 4096
    lm = load_nnsight(path, processor=big.processor)  # meta too: the comparison reads no weights
    with pytest.raises(ModelMismatchError, match="32 layers.*2 layers|2 layers vs 32"):
        NNsightBackend(big, lm)
    inputs, _ = inputs_for(big)
    configs = single_neurons(big, layers=0, neurons=[0])
    with pytest.raises(ModelMismatchError, match="not the checkpoint"):  # before any request: no server here
        remote_sweep(big, inputs, configs, answer_logprob(big, inputs), remote="http://127.0.0.1:9", progress=False)


def test_from_config_misuse_says_what_to_pass() -> None:
    import transformers

    config = transformers.AutoConfig.from_pretrained(resolve("tiny-llava"))
    config._name_or_path = ""  # a config built in code: no directory to read a processor from
    with pytest.raises(ValueError, match="names no checkpoint directory.*pass processor="):
        HookedMLLM.from_config(config)
    assert HookedMLLM.from_config(config, processor=False).processor is None
    with pytest.raises(OSError, match="not a local directory with a config.json nor a built-in name"):
        HookedMLLM.from_config("/no/such/checkpoint")
    with pytest.raises(ValueError, match="not a floating torch dtype"):
        HookedMLLM.from_config("tiny-llava", dtype="int8")
