"""hooks-mm sweep's flags on a real tiny model: each reaches the sweep (checked against a hand
computation or the library called directly), reruns into one --out, and the bad values that need a
model to be seen (one line each, exit status 2, before anything is written)."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest
import torch

from hooks_mm import HookedMLLM, Last
from hooks_mm.cli import main
from hooks_mm.cli import options as opts
from hooks_mm.cli.commands import example_inputs
from hooks_mm.cli.expressions import parse_metric
from hooks_mm.sweep import answer_logprob, kl_to_clean, logit_diff, modality_nll

MODEL = "tiny-llava"  # 2 layers, d_mlp 128, images in both rows of its example batch


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:  # noqa: ANN001
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture()
def env(cache, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HOOKS_MM_CACHE", cache)


@pytest.fixture(scope="module")
def model(cache) -> HookedMLLM:  # noqa: ANN001
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOOKS_MM_CACHE", cache)
        return HookedMLLM.from_pretrained(MODEL)


def sweep(run: Any, *flags: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    assert main(["sweep", MODEL, "--out", str(run), *flags]) == 0
    return pd.read_csv(run / "results.csv"), json.loads((run / "meta.json").read_text())


def test_layers_neurons_positions_and_metric_reach_the_sweep(env, tmp_path) -> None:  # noqa: ANN001
    """Each config's delta of a logit difference at the last token, after zeroing one neuron at the last
    position, by hand with a hook on a float64 model (the metric itself rounds to float32)."""
    table, meta = sweep(tmp_path / "run", "--layers", "1", "--neurons", "3,40-41", "--positions", "Last()")
    assert meta["metric"].startswith("log-prob of the clean answer") and meta["dtype"] == "torch.float32"
    flags = ("--layers", "0,1", "--neurons", "3,40-41", "--positions", "Last()", "--dtype", "float64")
    table, meta = sweep(tmp_path / "diff", *flags, "--metric", "logit_diff(correct=5, wrong=7)")
    assert table.layer.tolist() == [0, 0, 0, 1, 1, 1] and table.neuron.tolist() == [3, 40, 41] * 2
    assert set(table.positions) == {"Last()"} and meta["metric"] == "logit_diff(correct=5, wrong=7)"
    assert meta["dtype"] == "torch.float64"
    model = HookedMLLM.from_pretrained(MODEL, dtype="float64")
    inputs = example_inputs(model)
    last = model.layout(inputs).select(Last())
    with torch.no_grad():
        clean = model(inputs)[last]
        want = []
        for l, j in zip(table.layer, table.neuron):

            def zero(x: torch.Tensor, hook: Any, j: int = j) -> torch.Tensor:
                x = x.clone()
                x[..., j] = torch.where(last, 0.0, x[..., j])
                return x

            run = model.run_with_hooks(inputs, fwd_hooks=[(f"blocks.{l}.mlp.hook_post", zero)])[last]
            want.append(float((run[:, 5] - run[:, 7] - clean[:, 5] + clean[:, 7]).mean()))
    assert table.delta.tolist() == pytest.approx(want, abs=2e-6)
    assert max(map(abs, want)) > 1e-3  # effects well above the tolerance: a wrong layer / neuron / position shows


def test_layer_ranges_and_several_words(env, tmp_path) -> None:  # noqa: ANN001
    table, _ = sweep(tmp_path / "run", "--layers", "0-1", "--neurons", "2")
    assert table.layer.tolist() == [0, 0, 1, 1] and table.neuron.tolist() == [0, 1, 0, 1]
    table, _ = sweep(tmp_path / "words", "--layers", "1", "0", "--neurons", "1")  # the old form: --layers 1 0
    assert table.layer.tolist() == [1, 0]


@pytest.mark.parametrize(
    "expr, make",
    [
        ("answer_logprob", lambda m, i: answer_logprob(m, i)),
        ("answer_logprob(targets=[5, 9])", lambda m, i: answer_logprob(m, i, targets=[5, 9])),
        ("kl_to_clean(positions=LastN(1, of=text))", lambda m, i: kl_to_clean(m, i)),
        ("logit_diff(correct=5, wrong=7)", lambda m, i: logit_diff(m, i, 5, 7)),
        ("logit_diff(5, [7, 8])", lambda m, i: logit_diff(m, i, 5, [7, 8])),
        ("modality_nll(modality='text')", lambda m, i: modality_nll(m, i, "text")),
    ],
)
def test_metric_expressions_are_the_library_metrics(model, expr: str, make: Any) -> None:  # noqa: ANN001
    inputs = example_inputs(model)
    with torch.no_grad():
        logits = model(inputs)
        noise = logits + torch.randn_like(logits)  # not the clean logits: the clean-derived state shows
    metric, _ = parse_metric(expr, model, inputs)
    want = make(model, inputs)
    assert float(metric(noise)) == pytest.approx(float(want(noise)), abs=1e-6)


def test_answer_logprob_scores_the_organism_answers_unless_told(model) -> None:  # noqa: ANN001
    inputs = example_inputs(model)
    metric, _ = parse_metric("answer_logprob", model, inputs, targets=torch.tensor([3, 4]))
    own, _ = parse_metric("answer_logprob(targets=8)", model, inputs, targets=torch.tensor([3, 4]))
    logits = torch.randn(2, inputs["input_ids"].shape[1], model.cfg.d_vocab)
    assert float(metric(logits)) == pytest.approx(float(answer_logprob(model, inputs, [3, 4])(logits)))
    assert float(own(logits)) == pytest.approx(float(answer_logprob(model, inputs, 8)(logits)))


def test_force_overwrites_only_the_run_files_and_resume_keeps_the_finished_configs(env, tmp_path, capsys) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    first, _ = sweep(run, "--layers", "0", "--neurons", "2")
    (run / "notes.txt").write_text("mine")
    table, meta = sweep(run, "--layers", "0", "--neurons", "3", "--resume")
    assert meta["resumed"] == 2 and len(table) == 3 and table.value[:2].tolist() == first.value.tolist()
    assert meta["fast"] == 1 and "(1 on the fast path, 2 from the checkpoint)" in capsys.readouterr().out
    table, meta = sweep(run, "--layers", "1", "--neurons", "1", "--force")
    assert meta["resumed"] == 0 and table.layer.tolist() == [1] and (run / "notes.txt").read_text() == "mine"
    assert "--force: deleted checkpoint.pt, results.csv, meta.json, report.html" in capsys.readouterr().out


def test_threads_reach_torch_and_are_restored(env, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(opts, "usable_cpus", lambda: 8)
    before = torch.get_num_threads()
    want = 3 if before != 3 else 2
    _, meta = sweep(tmp_path / "run", "--layers", "0", "--neurons", "1", "--threads", str(want))
    assert meta["threads"] == want and torch.get_num_threads() == before
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # auto: $OMP_NUM_THREADS first
    _, meta = sweep(tmp_path / "auto", "--layers", "0", "--neurons", "1")
    assert meta["threads"] == 2 and torch.get_num_threads() == before


def test_dtype_and_device_reach_the_model(env, tmp_path) -> None:  # noqa: ANN001
    table, meta = sweep(tmp_path / "run", "--layers", "0", "--neurons", "2", "--dtype", "bfloat16", "--device", "cpu")
    assert meta["dtype"] == "torch.bfloat16" and "parameters on cpu" in meta["client_weights"]
    ref, ref_meta = sweep(tmp_path / "ref", "--layers", "0", "--neurons", "2")
    assert ref_meta["dtype"] == "torch.float32" and meta["clean_metric"] != ref_meta["clean_metric"]
    assert meta["clean_metric"] == pytest.approx(ref_meta["clean_metric"], abs=0.1)  # the same model, rounded more


LATE = [
    (["--layers", "0,2"], "--layers: 2 out of range: tiny-llava (LlavaForConditionalGeneration) has 2 (0-1)"),
    (["--layers", "1", "1"], "--layers names a layer more than once ([1, 1])"),
    (["--neurons", "129"], "--neurons 129: a layer has 128 MLP neurons: pass a count up to 128"),
    (["--neurons", "3,128"], "--neurons: 128 out of range: an MLP layer's width (d_mlp) has 128 (0-127)"),
    (["--positions", "Video()"], "--positions 'Video()' selects no position of this batch ("),
    (["--positions", "Image(2)"], "--positions 'Image(2)': Image(2) is out of range: rows hold at most 2 image(s)"),
    (["--positions", "Rows(5)"], "Rows([5]) is out of range: this batch has 2 rows"),
    (["--metric", "answer_logprob(positions=Image())"], "must pick one position per row"),
    (["--metric", "logit_diff"], "--metric 'logit_diff': logit_diff: "),
    (["--metric", "logit_diff(correct=5, wrong=100000)"], "has ids outside the vocabulary"),
    (["--metric", "modality_nll(modality='imag')"], "unknown name 'IMAG'"),
    (["--metric", "kl_to_clean(position=Last())"], "unexpected keyword argument 'position'"),
]


@pytest.mark.parametrize("flags, says", LATE, ids=[" ".join(f) for f, _ in LATE])
def test_bad_values_seen_with_the_model_are_one_line(env, flags, says, tmp_path, capsys) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["sweep", MODEL, "--out", str(run), *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("hooks-mm sweep: error: ") and says in err, err
    assert not run.exists()  # refused before anything is written


def test_an_unknown_model_is_one_line(env, tmp_path, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as e:
        main(["inspect", "tiny-lava"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: MODEL 'tiny-lava': no built-in model 'tiny-lava'. Did you mean" in err


def test_demo_takes_layers_and_positions(env, capsys) -> None:  # noqa: ANN001
    assert main(["demo", MODEL, "--layers", "1", "--positions", "text"]) == 0
    out = capsys.readouterr().out
    assert "zero-ablate all MLP neurons at Text(), one layer at a time" in out
    rows = out.split("KL(clean || ablated) at the last token\n")[1].strip().splitlines()
    assert [r.split()[0] for r in rows] == ["1"]


def test_progress_flags_show_or_hide_the_sweep_bar_for_this_command_only(env, tmp_path, capsys) -> None:  # noqa: ANN001
    import hooks_mm.progress as progress

    sweep(tmp_path / "on", "--layers", "1", "--neurons", "2", "--progress")
    assert "\rsweep:" in capsys.readouterr().err  # the sweep's bar, although stderr is not a terminal here
    sweep(tmp_path / "off", "--layers", "1", "--neurons", "2", "--no-progress")
    assert "\rsweep:" not in capsys.readouterr().err
    sweep(tmp_path / "auto", "--layers", "1", "--neurons", "2")  # the switch went back: automatic, off here
    assert "\rsweep:" not in capsys.readouterr().err and progress.progress_bar([1], desc="x").disable
