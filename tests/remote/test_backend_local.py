"""nnsight backend without a server: HookedMLLM == nnsight in process == nnsight remote="local"."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from hooks_mm import HookedMLLM, Image, NonPad
from hooks_mm.interventions import Context, Edit, Intervention, NeuronAblation, Steer
from hooks_mm.remote import NNsightBackend, remote_sweep
from hooks_mm.remote.errors import (
    AuthenticationError,
    RemoteExecutionError,
    ServerUnavailableError,
    VersionMismatchError,
    classify,
)
from hooks_mm.sweep import answer_logprob, single_neurons, sweep

from .cases import TOL, inputs_for, max_diff, specs_for

MODELS = ["tiny-llama", "tiny-llava"]
_CACHE: dict[str, tuple] = {}


def setup(name: str) -> tuple:
    if name not in _CACHE:
        model = HookedMLLM.from_pretrained(name)
        inputs, source = inputs_for(model)
        _CACHE[name] = (model, NNsightBackend(model), inputs, source)
    return _CACHE[name]


@pytest.mark.parametrize("name", MODELS)
def test_every_spec_matches_hooked_mllm_in_process_and_serialised(name: str) -> None:
    model, backend, inputs, source = setup(name)
    worst = {}
    for label, spec in specs_for(model, inputs).items():
        with torch.no_grad():
            ref = model.run_with_interventions(inputs, spec, sources={"clean": source})
            clean = model(inputs)
        assert max_diff(ref, clean, inputs) > 1e-4, f"{label} changes nothing: the comparison would prove nothing"
        for remote in (False, "local"):
            out = backend.run(inputs, spec, sources={"clean": source}, remote=remote)
            worst[label, remote] = d = max_diff(out, ref, inputs)
            assert d <= TOL, f"{name} {label} remote={remote!r}: max abs diff {d:.2e}"
    print(f"\n{name}: worst max-abs diff {max(worst.values()):.2e} over {len(worst)} (spec, mode) pairs")


@pytest.mark.parametrize("remote", [False, "local"])
def test_remote_sweep_table_equals_local_sweep(remote: str | bool) -> None:
    model, backend, inputs, _ = setup("tiny-llava")
    metric = answer_logprob(model, inputs)
    configs = single_neurons(model, layers=[0, 1], positions=Image(), neurons=range(0, 128, 8))
    configs += [Steer(1, vector=[0.05 * i] * model.cfg.d_model, positions=NonPad()) for i in range(1, 4)]
    ref = sweep(model, inputs, configs, metric, progress=False)
    out = remote_sweep(
        backend, inputs, configs, metric, remote=remote, max_configs_per_request=8, configs_per_trace=4, progress=False
    )
    assert out.table.drop(columns=["value", "delta"]).equals(ref.table.drop(columns=["value", "delta"]))
    assert (out.values - ref.values).abs().max() <= TOL and (out.clean - ref.clean).abs().max() <= TOL
    assert out.meta["requests"] == (0 if remote is False else -(-(len(configs) + 1) // 8))


def test_checkpoint_resumes_without_rerunning(tmp_path) -> None:
    model, backend, inputs, _ = setup("tiny-llama")
    metric = answer_logprob(model, inputs)
    configs = single_neurons(model, layers=0, neurons=range(10))
    ckpt = str(tmp_path / "sweep.pt")
    first = remote_sweep(
        backend, inputs, configs[:6], metric, remote="local", max_configs_per_request=4, checkpoint=ckpt, progress=False
    )
    before = backend.stats.requests
    second = remote_sweep(
        backend, inputs, configs, metric, remote="local", max_configs_per_request=4, checkpoint=ckpt, progress=False
    )
    assert second.meta["resumed"] == 6 and backend.stats.requests - before == 1  # only the 4 new configs ran
    assert torch.equal(second.values[:6], first.values)


def test_specs_nnsight_cannot_express_raise_before_running() -> None:
    model, backend, inputs, _ = setup("tiny-llama")
    with pytest.raises(NotImplementedError, match="resid_mid"):
        backend.run(inputs, Steer(0, vector=[0.0] * model.cfg.d_model, hook="hook_resid_mid"))
    with pytest.raises(IndexError, match="out of range"):
        backend.run(inputs, NeuronAblation(7, [0]))
    with pytest.raises(ValueError, match="select nothing"):
        backend.run(inputs, NeuronAblation(0, [0], positions=Image()))
    with pytest.raises(ValueError, match="no server identity"):
        backend.run(inputs, NeuronAblation(0, [0]), remote="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="blocking=False needs a server"):
        remote_sweep(
            backend,
            inputs,
            single_neurons(model, 0, neurons=[0]),
            answer_logprob(model, inputs),
            remote="local",
            blocking=False,
        )


def test_server_side_exception_arrives_as_remote_execution_error() -> None:
    model, backend, inputs, _ = setup("tiny-llama")

    def bad(logits):
        return logits[:, 10**6].mean()

    with pytest.raises(Exception, match="index"):
        remote_sweep(backend, inputs, single_neurons(model, 0, neurons=[0]), bad, remote="local", progress=False)


@pytest.mark.parametrize(
    "message, kind",
    [  # the exact details ndif 0.1.2's API answers with (auth.py, versioning.py)
        ("Failed to send request: Missing or invalid API key. Please visit https://login.ndif.us", AuthenticationError),
        ("Failed to send request: Invalid API key.", AuthenticationError),
        (
            "Failed to send request: Client nnsight version 0.4.0 is below the minimum supported 0.8.0. "
            "Please `pip install --upgrade nnsight`.",
            VersionMismatchError,
        ),
        ("Failed to send request: Auth backend unavailable.", ServerUnavailableError),
        ("Failed to send request: [Errno 111] Connection refused", ServerUnavailableError),
        ("IndexError: index 1000000 is out of bounds", RemoteExecutionError),
    ],
)
def test_errors_are_classified(message: str, kind: type) -> None:
    err = classify(RuntimeError(message), "http://127.0.0.1:8001", None)
    assert type(err) is kind and message.split(": ", 1)[-1][:20] in str(err)


@dataclass
class ClampResidual(Intervention):
    """A spec defined outside hooks_mm: one file's worth of code, no backend code."""

    layers: int | list[int] | None
    bound: float = 1.0
    hook: str = "hook_resid_post"

    def edits(self, ctx: Context) -> list[Edit]:
        mask = ctx.mask(NonPad(), "ClampResidual")
        return [
            Edit(ctx.hook_name(self.hook, l), ("ablate", mask, None, "scale", self.bound, None))
            for l in ctx.layers(self.layers, "ClampResidual")
        ]


def test_a_new_spec_runs_on_every_backend_with_no_backend_code() -> None:
    model, backend, inputs, _ = setup("tiny-llava")
    spec = ClampResidual(layers=[0, 1], bound=0.5)
    with torch.no_grad():
        clean, ref = model(inputs), model.run_with_interventions(inputs, spec)
        by_hand = model.run_with_hooks(  # the same edit written as TransformerLens hooks
            inputs, fwd_hooks=[(f"blocks.{l}.hook_resid_post", lambda x, hook: x * 0.5) for l in (0, 1)]
        )
    assert max_diff(ref, clean, inputs) > 1e-3 and max_diff(ref, by_hand, inputs) <= TOL
    for remote in (False, "local"):
        assert max_diff(backend.run(inputs, spec, remote=remote), ref, inputs) <= TOL
    metric = answer_logprob(model, inputs)
    local = sweep(model, inputs, [spec, ClampResidual(1, 2.0)], metric, progress=False)
    remote = remote_sweep(backend, inputs, [spec, ClampResidual(1, 2.0)], metric, remote="local", progress=False)
    assert (local.values - remote.values).abs().max() <= TOL
    assert Intervention.from_dict(spec.to_dict()) == spec
    with pytest.raises(NotImplementedError, match="hook_resid_mid"):  # a hook nnsight cannot reach: said when compiling
        backend.run(inputs, ClampResidual(0, hook="hook_resid_mid"))


def test_nnsight_versions_other_than_the_tested_ones_get_a_clear_error(monkeypatch) -> None:  # noqa: ANN001
    import nnsight

    from hooks_mm.remote import nnsight_compat

    monkeypatch.setattr(nnsight, "__version__", "0.9.0")
    nnsight_compat.require.cache_clear()
    try:
        with pytest.raises(
            ImportError, match=r"checked on nnsight 0\.7\.0, 0\.8\.0, 0\.8\.1, but nnsight 0\.9\.0 is installed"
        ):
            nnsight_compat.wrapped_module(setup("tiny-llama")[1].lm)
    finally:
        nnsight_compat.require.cache_clear()
