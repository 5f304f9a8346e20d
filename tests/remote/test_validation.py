"""nnsight path misuse without a server: every error is raised here, before any request, and names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hooks_mm import HookedMLLM, NonPad
from hooks_mm.interventions import Compose, NeuronAblation, Steer
from hooks_mm.remote import (
    DeployError,
    ModelMismatchError,
    NNsightBackend,
    RemoteExecutionError,
    ServerUnavailableError,
    load_nnsight,
    remote_sweep,
)
from hooks_mm.remote.errors import classify
from hooks_mm.sweep import CheckpointError, answer_logprob, logit_diff, single_neurons

from .cases import inputs_for

_CACHE: dict[str, tuple] = {}


def setup(name: str) -> tuple:
    if name not in _CACHE:
        model = HookedMLLM.from_pretrained(name)
        _CACHE[name] = (model, NNsightBackend(model), inputs_for(model)[0])
    return _CACHE[name]


def test_a_checkpoint_of_another_metric_is_refused_on_the_nnsight_path(tmp_path: Path) -> None:
    model, backend, inputs = setup("tiny-llama")
    ckpt = str(tmp_path / "s.pt")
    configs = single_neurons(model, 0, neurons=range(4))
    remote_sweep(
        backend, inputs, configs, answer_logprob(model, inputs), remote="local", checkpoint=ckpt, progress=False
    )
    with pytest.raises(CheckpointError, match=r"another model, inputs or metric \(here the metric differs\)"):
        remote_sweep(
            backend, inputs, configs, logit_diff(model, inputs, [1, 2], [3, 4]), remote="local", checkpoint=ckpt
        )


def test_a_local_model_that_is_not_the_nnsight_model_is_refused_before_any_request() -> None:
    llama, _, _ = setup("tiny-llama")
    _, llava_backend, _ = setup("tiny-llava")
    with pytest.raises(
        ModelMismatchError, match=r"not the checkpoint the nnsight model addresses.*Load the HookedMLLM"
    ):
        NNsightBackend(llama, llava_backend.lm)


def test_a_steer_vector_of_the_wrong_width_is_refused_here(tmp_path: Path) -> None:
    model, backend, inputs = setup("tiny-llama")
    before = backend.stats.requests
    with pytest.raises(ValueError, match=rf"width {model.cfg.d_model}: give {model.cfg.d_model} numbers"):
        remote_sweep(backend, inputs, [Steer(0, [0.0] * 3)], answer_logprob(model, inputs), remote="local")
    assert backend.stats.requests == before


@pytest.mark.parametrize(
    "bad, match",
    [(lambda logits: None, "returned NoneType"), (lambda logits: logits[:, -1], r"returned shape \(2, \d+\)")],
)
def test_a_bad_metric_is_refused_before_any_request(bad, match: str) -> None:  # noqa: ANN001
    model, backend, inputs = setup("tiny-llama")
    before = backend.stats.requests
    with pytest.raises((TypeError, ValueError), match=match):
        remote_sweep(backend, inputs, single_neurons(model, 0, neurons=[0]), bad, remote="local", progress=False)
    assert backend.stats.requests == before


def test_a_config_that_edits_nothing_is_refused() -> None:
    model, backend, inputs = setup("tiny-llama")
    configs = [NeuronAblation(0, [1], NonPad()), Compose([])]
    with pytest.raises(ValueError, match=r"sweep config 1 .* edits nothing"):
        remote_sweep(backend, inputs, configs, answer_logprob(model, inputs), remote="local", progress=False)


@pytest.mark.parametrize("check_deployed", [True, False])
def test_an_unreachable_host_is_named_with_how_to_check_it(tmp_path: Path, check_deployed: bool) -> None:
    model, _, inputs = setup("tiny-llama")
    model.hf_model.save_pretrained(tmp_path)
    model.processor.save_pretrained(tmp_path)
    backend = NNsightBackend(model, load_nnsight(str(tmp_path), processor=model.processor))
    host = "http://127.0.0.1:9"  # the discard port: nothing listens
    with pytest.raises(ServerUnavailableError, match=rf"NDIF at {host} is unreachable .*curl {host}/ping"):
        remote_sweep(
            backend,
            inputs,
            single_neurons(model, 0, neurons=[0]),
            answer_logprob(model, inputs),
            remote=host,
            retries=0,
            check_deployed=check_deployed,
            progress=False,
        )


def test_a_deploy_failure_is_not_reported_as_a_trace_failure() -> None:
    # what ndif 0.1.2 answers when an on-demand deploy fails (evaluator.py), traceback shortened
    tb = "\n".join(f'  File "x.py", line {i}, in f' for i in range(40))
    msg = f"Could not deploy this model. Boom\nTraceback (most recent call last):\n{tb}\nTypeError: boom"
    err = classify(RuntimeError(msg), "http://127.0.0.1:8001", None)
    assert type(err) is DeployError and "could not deploy this model on demand: Could not deploy" in str(err)
    assert "TypeError: boom" in str(err) and "traceback lines left out" in str(err)
    assert len(str(err).splitlines()) < 20
    trace = classify(RuntimeError(f"IndexError: bad\n{tb}"), "http://127.0.0.1:8001", None)
    assert type(trace) is RemoteExecutionError and len(str(trace).splitlines()) < 16


def test_nnsight_path_resumes_the_same_metric_bit_exact(tmp_path: Path) -> None:
    model, backend, inputs = setup("tiny-llava")
    ckpt = str(tmp_path / "s.pt")
    configs = single_neurons(model, 0, neurons=range(6))
    first = remote_sweep(
        backend, inputs, configs[:3], answer_logprob(model, inputs), remote=False, checkpoint=ckpt, progress=False
    )
    again = remote_sweep(
        backend, inputs, configs, answer_logprob(model, inputs), remote=False, checkpoint=ckpt, progress=False
    )
    assert again.meta["resumed"] == 3 and torch.equal(again.values[:3], first.values)
