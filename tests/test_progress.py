"""Issue 20: progress bars on long calls (hooks_mm/progress.py): the on / off rule, a bar on every long call when
asked for, none by default under pytest, the same results with and without, and a wrong ``progress=`` refused
before any hook."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import assert_clean, pair_for

import hooks_mm.progress as prog
from hooks_mm import After, Image
from hooks_mm.analysis.alignment import pooled_by_modality
from hooks_mm.analysis.erasure import accuracy, choice_score, erasure_cost, skip_tradeoff
from hooks_mm.analysis.neurons import activation_probabilities, neuron_masking_matrix
from hooks_mm.analysis.weights import input_norms
from hooks_mm.circuits.eap import eap_graph
from hooks_mm.circuits.faithfulness import faithfulness, faithfulness_curve
from hooks_mm.interventions import CentroidBank, NeuronMeans
from hooks_mm.sweep import answer_logprob, single_neurons, sweep


@pytest.fixture(autouse=True)
def _auto(monkeypatch):
    monkeypatch.setitem(prog._switch, "on", None)
    monkeypatch.delenv(prog.ENV, raising=False)


@pytest.fixture(scope="module")
def p():
    return pair_for("llava")


def test_the_rule(monkeypatch) -> None:
    assert prog.progress_enabled() is False  # under pytest: off
    assert prog.progress_enabled(True) is True and prog.progress_enabled(False) is False
    monkeypatch.setenv(prog.ENV, "1")
    assert prog.progress_enabled() is True and prog.progress_enabled(False) is False
    prog.set_progress(False)
    assert prog.progress_enabled() is False and prog.progress_enabled(True) is True
    prog.set_progress(None)
    monkeypatch.setenv(prog.ENV, "0")
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    assert prog.progress_enabled() is False
    monkeypatch.delenv(prog.ENV)
    monkeypatch.setattr(sys, "stderr", type("T", (), {"isatty": lambda self: True, "write": print})())
    assert prog.progress_enabled() is True  # a terminal, not under pytest
    monkeypatch.setattr(sys, "stderr", type("P", (), {"isatty": lambda self: False})())
    assert prog.progress_enabled() is False  # a pipe / a log file
    with pytest.raises(TypeError, match="pass True"):
        prog.set_progress("yes")


def _calls(p):
    """(name shown on the bar, a call taking progress=) for every long call."""
    model, inputs = p.model, p.inputs
    metric = answer_logprob(model, inputs) if "answer_ids" in str(inputs.keys()) else lambda lg: lg[:, -1, 0].mean()
    corr = {**inputs, "pixel_values": inputs["pixel_values"].roll(1, 0)}
    ans = [torch.zeros(inputs["input_ids"].shape[0], dtype=torch.long)]
    return [
        ("sweep", lambda pr: sweep(model, inputs, single_neurons(model, layers=0)[:3], metric, progress=pr).values),
        ("sweep", lambda pr: _remote(model, inputs, metric, pr)),
        ("NeuronMeans.fit", lambda pr: NeuronMeans.fit(model, [inputs], layers=0, progress=pr).means[0]["all"]),
        ("CentroidBank.fit", lambda pr: CentroidBank.fit(model, [inputs], 0, Image(), k=2, progress=pr).centroids),
        ("activation_probabilities", lambda pr: activation_probabilities(model, [inputs], progress=pr).probs),
        (
            "neuron_masking_matrix",
            lambda pr: torch.tensor(neuron_masking_matrix(model, [inputs], {}, progress=pr).values),
        ),
        ("input_norms", lambda pr: torch.cat(list(input_norms(model, [inputs], Image(), progress=pr).values()))),
        ("pooled_by_modality", lambda pr: pooled_by_modality(model, [inputs], progress=pr).means["image"]),
        ("accuracy", lambda pr: torch.tensor(accuracy(model, [inputs], ans, choice_score([1, 2]), progress=pr))),
        ("eap_graph", lambda pr: eap_graph(model, inputs, corr, metric, method="eap-ig", steps=2, progress=pr).scores),
        ("faithfulness_curve", lambda pr: torch.tensor(_curve(model, inputs, corr, metric, pr).values)),
        ("faithfulness controls", lambda pr: _faithfulness(model, inputs, corr, metric, pr)),
        ("accuracy", lambda pr: torch.tensor([r["accuracy"] for r in _skip(model, inputs, ans, pr)])),
        ("accuracy", lambda pr: torch.tensor(list(_erasure(model, inputs, ans, pr).values()))),
    ]


def _faithfulness(model, inputs, corr, metric, pr):
    g = eap_graph(model, inputs, corr, metric, progress=False)
    return torch.tensor(faithfulness(model, g, inputs, corr, metric, k=2, n_random=2, progress=pr).random)


def _skip(model, inputs, ans, pr):
    return skip_tradeoff(model, [inputs], ans, choice_score([1, 2]), intervals=(1,), progress=pr)


def _erasure(model, inputs, ans, pr):
    text = CentroidBank.fit(model, [inputs], 0, After(Image()), k=2, progress=False)
    visual = CentroidBank.fit(model, [inputs], 0, Image(), k=2, progress=False)
    return erasure_cost(model, [inputs], ans, choice_score([1, 2]), text, visual, progress=pr)


def _remote(model, inputs, metric, pr):
    from hooks_mm.remote import NNsightBackend, remote_sweep

    backend = NNsightBackend(model)  # nnsight's in-process run (remote="local"): the remote sweep's own bar
    return remote_sweep(backend, inputs, single_neurons(model, 0)[:2], metric, remote="local", progress=pr).values


def _curve(model, inputs, corr, metric, pr):
    g = eap_graph(model, inputs, corr, metric, progress=False)
    return faithfulness_curve(model, g, inputs, corr, metric, ks=[1, 2], n_random=2, progress=pr)


def test_every_long_call_shows_a_bar_only_when_asked(p, capsys) -> None:
    for name, call in _calls(p):
        off = call(None)
        assert capsys.readouterr().err == "", name  # the default under pytest: no bar, no noise
        on = call(True)
        err = capsys.readouterr().err
        assert f"{name}:" in err, (name, err[-300:])
        assert torch.equal(torch.as_tensor(on), torch.as_tensor(off)), name  # a bar changes nothing
        assert_clean(p.model)


def test_a_wrong_progress_is_refused_before_any_hook(p) -> None:
    for name, call in _calls(p):
        with pytest.raises(TypeError, match="progress='yes': pass True"):
            call("yes")
        assert_clean(p.model)


def test_in_a_notebook_the_bar_is_on_and_never_warns(monkeypatch, recwarn) -> None:
    from tqdm.std import tqdm as text_bar

    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.setattr(prog, "_in_notebook", lambda: True)
    assert prog.progress_enabled() is True
    bar = prog.progress_bar(range(3), desc="x", progress=False)
    try:
        import ipywidgets  # noqa: F401
    except ImportError:  # no widgets: the text bar, without tqdm.auto's "IProgress not found" warning
        assert type(bar) is text_bar
    assert list(bar) == [0, 1, 2] and not [w for w in recwarn if "IProgress" in str(w.message)]
