"""Against a real NDIF stack on loopback (scripts/ndif-stack.sh up): equality, sweeps, faults.

Every test here is marked ``ndif`` and skips, saying why, when the stack does not answer.
"""

from __future__ import annotations

import math
import shutil
import warnings

import nnsight
import pytest
import torch

from hooks_mm import HookedMLLM, Image
from hooks_mm.remote import (
    DeployError,
    ModelMismatchError,
    ModelNotDeployedError,
    NNsightBackend,
    RemoteExecutionError,
    RequestTooLargeError,
    ServerUnavailableError,
    VersionMismatchError,
    load_nnsight,
    remote_sweep,
)
from hooks_mm.sweep import CheckpointError, answer_logprob, logit_diff, single_neurons, sweep

from .cases import TOL, inputs_for, max_diff, specs_for
from .conftest import stack

pytestmark = pytest.mark.ndif
_CACHE: dict[str, tuple] = {}


def setup(info: dict, name: str) -> tuple:
    """(HookedMLLM, backend on the deployed checkpoint, inputs, source run) for a stack model."""
    if name not in _CACHE:
        path = info["models"][name]["path"]
        model = HookedMLLM.from_pretrained(path)
        lm = load_nnsight(path, processor=model.processor, dispatch=True)  # weights here too: remote=False/"local"
        assert lm.to_model_key() == info["models"][name]["key"]
        inputs, source = inputs_for(model)
        _CACHE[name] = (model, NNsightBackend(model, lm), inputs, source)
    return _CACHE[name]


@pytest.mark.sandboxed
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llava"])
def test_hooked_mllm_equals_nnsight_local_serialised_and_real_ndif(ndif: dict, name: str) -> None:
    model, backend, inputs, source = setup(ndif, name)
    worst: dict[str, float] = {}
    for label, spec in specs_for(model, inputs).items():
        with torch.no_grad():
            ref = model.run_with_interventions(inputs, spec, sources={"clean": source})
        for remote in (False, "local", ndif["host"]):
            out = backend.run(inputs, spec, sources={"clean": source}, remote=remote)
            d = max_diff(out, ref, inputs)
            worst[str(remote)] = max(worst.get(str(remote), 0.0), d)
            assert d <= TOL, f"{name} {label} remote={remote!r}: max abs diff {d:.2e}"
    lat = backend.stats.latencies
    print(
        f"\n{name}: worst max-abs diff vs HookedMLLM {worst}; remote request latency median "
        f"{sorted(lat)[len(lat) // 2] * 1e3:.0f} ms over {len(lat)} requests"
    )


def _sweep_case(ndif: dict) -> tuple:
    model, backend, inputs, _ = setup(ndif, "tiny-llava")
    metric = answer_logprob(model, inputs)
    configs = single_neurons(model, layers=[0, 1], positions=Image())  # 2 x d_mlp = 256 configs
    assert len(configs) >= 200
    return model, backend, inputs, metric, configs, sweep(model, inputs, configs, metric, progress=False)


def _assert_same_table(out, ref) -> None:
    assert out.table.drop(columns=["value", "delta"]).equals(ref.table.drop(columns=["value", "delta"]))
    assert (out.values - ref.values).abs().max() <= TOL and (out.clean - ref.clean).abs().max() <= TOL
    assert (out.table["delta"] - ref.table["delta"]).abs().max() <= TOL


@pytest.mark.sandboxed
def test_remote_sweep_of_256_configs_in_few_requests_equals_local_sweep(ndif: dict) -> None:
    _model, backend, inputs, metric, configs, ref = _sweep_case(ndif)
    out = remote_sweep(
        backend,
        inputs,
        configs,
        metric,
        remote=ndif["host"],
        max_configs_per_request=64,
        configs_per_trace=32,
        progress=False,
    )
    m = out.meta
    print(
        f"\nremote sweep: {len(configs)} configs, {m['requests']} requests, {m['bytes_sent']:,} bytes sent, "
        f"{m['bytes_received']:,} bytes returned, {m['seconds']:.2f} s"
    )
    assert m["requests"] == math.ceil((len(configs) + 1) / 64)
    assert m["bytes_received"] < 1000 * m["requests"] + 16 * len(configs)  # metric values only, never activations
    _assert_same_table(out, ref)


def test_non_blocking_sweep_job(ndif: dict) -> None:
    _model, backend, inputs, metric, configs, ref = _sweep_case(ndif)
    job = remote_sweep(
        backend,
        inputs,
        configs,
        metric,
        remote=ndif["host"],
        max_configs_per_request=128,
        blocking=False,
        progress=False,
    )
    _assert_same_table(job.result(timeout=120), ref)


def test_server_stopped_mid_sweep_keeps_finished_chunks_and_resumes(ndif: dict, tmp_path) -> None:
    _model, backend, inputs, metric, configs, ref = _sweep_case(ndif)
    ckpt = str(tmp_path / "remote.pt")
    stopped = []

    def stop_after_two(done: int, total: int) -> None:
        if done == 2 and not stopped:
            stack("api-stop")
            stopped.append(done)

    try:
        with pytest.raises(ServerUnavailableError, match="configs finished") as err:
            remote_sweep(
                backend,
                inputs,
                configs,
                metric,
                remote=ndif["host"],
                max_configs_per_request=40,
                retries=1,
                backoff=0.2,
                checkpoint=ckpt,
                check_deployed=False,
                callback=stop_after_two,
                progress=False,
            )
    finally:
        stack("api-start")
    partial = err.value.partial
    assert len(partial) == 2 * 40 - 1  # two finished requests (the first carried the clean run)
    out = remote_sweep(
        backend,
        inputs,
        configs,
        metric,
        remote=ndif["host"],
        max_configs_per_request=40,
        checkpoint=ckpt,
        progress=False,
    )
    assert out.meta["resumed"] == len(partial) and out.meta["requests"] == math.ceil((len(configs) - len(partial)) / 40)
    _assert_same_table(out, ref)


def test_model_not_deployed(ndif: dict, tmp_path) -> None:
    model, _, inputs, _ = setup(ndif, "tiny-llama")
    other = str(tmp_path / "not-deployed")
    shutil.copytree(ndif["models"]["tiny-llama"]["path"], other)
    backend = NNsightBackend(model, load_nnsight(other, processor=model.processor))
    with pytest.raises(ModelNotDeployedError, match="not-deployed") as err:
        remote_sweep(
            backend,
            inputs,
            single_neurons(model, 0, neurons=[0]),
            answer_logprob(model, inputs),
            remote=ndif["host"],
            progress=False,
        )
    assert "tiny-llama" in str(err.value)  # lists what is deployed


def test_request_over_the_limit_is_refused_before_sending(ndif: dict) -> None:
    model, _, inputs, _ = setup(ndif, "tiny-llava")
    backend = NNsightBackend(
        model, load_nnsight(ndif["models"]["tiny-llava"]["path"], processor=model.processor), max_request_bytes=4000
    )
    configs = single_neurons(model, 0, neurons=range(4))
    with pytest.raises(RequestTooLargeError, match="max_request_bytes=4,000"):
        remote_sweep(backend, inputs, configs, answer_logprob(model, inputs), remote=ndif["host"], progress=False)
    assert backend.stats.requests == 1 and backend.stats.bytes_sent == 0  # refused here, nothing sent
    backend.max_request_bytes = None
    assert (
        len(
            remote_sweep(
                backend, inputs, configs, answer_logprob(model, inputs), remote=ndif["host"], progress=False
            ).table
        )
        == 4
    )


@pytest.mark.sandboxed
def test_server_side_exception_is_a_clear_error_and_the_server_keeps_serving(ndif: dict) -> None:
    model, backend, inputs, _ = setup(ndif, "tiny-llama")

    def bad(logits):
        return logits[:, 10**6].mean()

    sent = backend.stats.bytes_sent
    with pytest.raises(IndexError, match="out of bounds"):  # the local clean run tries the metric first
        remote_sweep(backend, inputs, single_neurons(model, 0, neurons=[0]), bad, remote=ndif["host"], progress=False)
    assert backend.stats.bytes_sent == sent  # nothing sent
    with pytest.raises(RemoteExecutionError, match="IndexError") as err:  # without that check, the server's error
        remote_sweep(
            backend,
            inputs,
            single_neurons(model, 0, neurons=[0]),
            bad,
            remote=ndif["host"],
            progress=False,
            check_weights=False,
        )
    assert len(str(err.value).splitlines()) <= 16  # the server's traceback, cut to where the error is
    spec = specs_for(model, inputs)["ablate_zero"]
    with torch.no_grad():
        ref = model.run_with_interventions(inputs, spec)
    assert max_diff(backend.run(inputs, spec, remote=ndif["host"]), ref, inputs) <= TOL


def test_client_version_below_the_server_minimum(ndif: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _model, backend, inputs, _ = setup(ndif, "tiny-llama")
    monkeypatch.setattr(nnsight.intervention.backends.remote, "_NNSIGHT_VERSION", "0.4.0")  # what an old client sends
    with pytest.raises(VersionMismatchError, match="0.4.0"):
        backend.run(inputs, None, remote=ndif["host"])


def test_a_local_model_other_than_the_deployed_one_is_refused_before_any_request(ndif: dict) -> None:
    llama, _, _, _ = setup(ndif, "tiny-llama")
    lm = load_nnsight(ndif["models"]["tiny-llava"]["path"])
    with pytest.raises(ModelMismatchError, match="tiny-llava.*Load the HookedMLLM from the same checkpoint"):
        NNsightBackend(llama, lm)


def test_local_weights_other_than_the_deployed_ones_warn(ndif: dict) -> None:
    model, _, inputs, _ = setup(ndif, "tiny-llama")
    path = ndif["models"]["tiny-llama"]["path"]
    configs, metric = single_neurons(model, 0, neurons=[0, 1]), answer_logprob(model, inputs, [1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same weights: no warning
        same = remote_sweep(
            NNsightBackend(model, load_nnsight(path, processor=model.processor)),
            inputs,
            configs,
            metric,
            remote=ndif["host"],
            progress=False,
        )
    changed = HookedMLLM.from_pretrained(path)
    with torch.no_grad():
        for p in changed.hf_model.parameters():
            p.mul_(1.5)
    backend = NNsightBackend(changed, load_nnsight(path, processor=changed.processor))
    with pytest.warns(UserWarning, match="the deployed model gives clean metric .* its weights differ"):
        out = remote_sweep(
            backend, inputs, configs, answer_logprob(changed, inputs, [1, 2]), remote=ndif["host"], progress=False
        )
    assert torch.equal(out.values, same.values)  # the values are the deployed model's


def test_an_on_demand_deploy_failure_is_a_deploy_error(ndif: dict, tmp_path) -> None:
    model, _, inputs, _ = setup(ndif, "tiny-llama")
    broken = tmp_path / "broken"
    shutil.copytree(ndif["models"]["tiny-llama"]["path"], broken)
    backend = NNsightBackend(model, load_nnsight(str(broken), processor=model.processor))
    for f in broken.glob("*.safetensors"):
        f.write_bytes(b"not weights")
    with pytest.raises(DeployError, match=r"(?s)could not deploy .*broken.* on demand: .*The trace never ran"):
        remote_sweep(
            backend,
            inputs,
            single_neurons(model, 0, neurons=[0]),
            answer_logprob(model, inputs),
            remote=ndif["host"],
            check_deployed=False,
            retries=0,
            progress=False,
        )


def test_a_server_checkpoint_is_keyed_to_the_deployed_model_and_the_metric(ndif: dict, tmp_path) -> None:
    model, backend, inputs, _ = setup(ndif, "tiny-llama")
    ckpt = str(tmp_path / "s.pt")
    configs = single_neurons(model, 0, neurons=range(3))
    first = remote_sweep(
        backend, inputs, configs, answer_logprob(model, inputs), remote=ndif["host"], checkpoint=ckpt, progress=False
    )
    again = remote_sweep(
        backend, inputs, configs, answer_logprob(model, inputs), remote=ndif["host"], checkpoint=ckpt, progress=False
    )
    assert again.meta["resumed"] == 3 and again.meta["requests"] == 0 and torch.equal(again.values, first.values)
    with pytest.raises(CheckpointError, match=r"\(here the metric differs\)"):
        remote_sweep(
            backend,
            inputs,
            configs,
            logit_diff(model, inputs, [1, 2], [3, 4]),
            remote=ndif["host"],
            checkpoint=ckpt,
            progress=False,
        )


def test_a_non_blocking_sweep_saves_its_checkpoint(ndif: dict, tmp_path) -> None:
    model, backend, inputs, _ = setup(ndif, "tiny-llama")
    ckpt = str(tmp_path / "s.pt")
    configs, metric = single_neurons(model, 0, neurons=range(5)), answer_logprob(model, inputs)
    job = remote_sweep(
        backend,
        inputs,
        configs,
        metric,
        remote=ndif["host"],
        blocking=False,
        checkpoint=ckpt,
        max_configs_per_request=2,
    )
    first = job.result(timeout=120)
    again = remote_sweep(backend, inputs, configs, metric, remote=ndif["host"], checkpoint=ckpt, progress=False)
    assert again.meta["resumed"] == 5 and again.meta["requests"] == 0 and torch.equal(again.values, first.values)
