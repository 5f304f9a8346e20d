"""Curves over training checkpoints (hooks_mm.analysis.findings.checkpoints) on short real training runs: the
checkpoints themselves (final weights unchanged, each holds its step and hash, the last is the final model),
each per-checkpoint number against the single-model finding or a bare HF forward, the correlations against
scipy / a regression by hand, the verdict's step control, and each misuse refused by name."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from hooks_mm import HookedMLLM
from hooks_mm.analysis.findings import alignment, bias
from hooks_mm.analysis.findings.checkpoints import (
    alignment_and_accuracy,
    alignment_vs_accuracy,
    bias_over_checkpoints,
    checkpoint_correlations,
    checkpoint_dirs,
    expand,
    read_checkpoints,
)
from hooks_mm.analysis.findings.curves import alignment_by_layer
from hooks_mm.tasks.evaluate import encode, word_ids
from hooks_mm.tasks.shapes import ANSWERS, make_qa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from train_organism import LOG_NAME, train, weights_hash  # noqa: E402

KW = dict(steps=20, n_scenes=50, with_eval=False, log_every=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("checkpoints")
    paired = train("toy-anygpt", seed=1, out=str(root / "paired"), checkpoint_every=10, **KW)
    plain = train("toy-anygpt", seed=1, out=str(root / "plain"), **KW)
    mono = train("toy-anygpt-monotune", seed=1, out=str(root / "mono"), base=paired.path, checkpoint_every=10, **KW)
    llava = train("toy-llava", seed=1, out=str(root / "llava"), checkpoint_every=10, **KW)
    return SimpleNamespace(
        root=root,
        paired=paired,
        plain=plain,
        mono=mono,
        llava=llava,
        paired_dirs=checkpoint_dirs(str(root / "paired-checkpoints")),
        mono_dirs=checkpoint_dirs(str(root / "mono-checkpoints")),
        llava_dirs=checkpoint_dirs(str(root / "llava-checkpoints")),
    )


def _log(path: str) -> dict:
    with open(os.path.join(path, LOG_NAME)) as f:
        return json.load(f)


# --- the checkpoints themselves -------------------------------------------------------------------------------


def test_saving_checkpoints_leaves_the_final_weights_unchanged(runs: SimpleNamespace) -> None:
    assert runs.paired.sha256 == runs.plain.sha256
    assert not (runs.root / "plain-checkpoints").exists()


def test_each_checkpoint_holds_its_step_and_the_hash_of_its_weights(runs: SimpleNamespace) -> None:
    for dirs, final, steps in (
        (runs.paired_dirs, runs.paired, [10, 20, 30, 40]),  # two stages of 20 steps, counted over both
        (runs.mono_dirs, runs.mono, [10, 20]),
        (runs.llava_dirs, runs.llava, [10, 20, 30, 40]),
    ):
        logs = [_log(d) for d in dirs]
        assert [g["step"] for g in logs] == steps == [int(os.path.basename(d)[5:]) for d in dirs]
        hashes = [weights_hash(HookedMLLM.from_pretrained(d).hf_model) for d in dirs]
        assert hashes == [g["sha256"] for g in logs]
        assert len(set(hashes)) == len(hashes)  # training moved the weights between checkpoints
        assert hashes[-1] == final.sha256 == weights_hash(HookedMLLM.from_pretrained(final.path).hf_model)


def test_checkpoint_dirs_orders_by_the_logged_step_not_the_name(tmp_path: Path, runs: SimpleNamespace) -> None:
    for step in (100, 20, 3):
        os.makedirs(tmp_path / f"step-{step}")
        with open(tmp_path / f"step-{step}" / LOG_NAME, "w") as f:
            json.dump({"name": "toy-anygpt", "seed": 0, "step": step, "sha256": "x"}, f)
    os.makedirs(tmp_path / "other")
    assert [os.path.basename(d) for d in checkpoint_dirs(str(tmp_path))] == ["step-3", "step-20", "step-100"]
    assert expand([runs.paired_dirs[1], str(runs.root / "mono-checkpoints")]) == [runs.paired_dirs[1], *runs.mono_dirs]


def test_the_monotune_run_continues_the_step_count_of_its_base(runs: SimpleNamespace) -> None:
    cps = read_checkpoints(runs.paired_dirs + runs.mono_dirs)
    assert [c.run for c in cps] == ["toy-anygpt"] * 4 + ["toy-anygpt-monotune"] * 2
    assert [c.step for c in cps] == [10, 20, 30, 40, 10, 20]
    assert [c.global_step for c in cps] == [10, 20, 30, 40, 50, 60]


# --- the numbers ----------------------------------------------------------------------------------------------


def test_bias_over_checkpoints_meets_the_bias_finding_on_those_directories(runs: SimpleNamespace) -> None:
    n = 12
    t = bias_over_checkpoints(runs.paired_dirs + runs.mono_dirs, n=n)
    assert list(t.global_step) == [10, 20, 30, 40, 50, 60] and list(t.run)[-1] == "toy-anygpt-monotune"
    assert ((t.log_bias_lo <= t.log_bias) & (t.log_bias <= t.log_bias_hi)).all()
    f = bias(HookedMLLM.from_pretrained(runs.paired_dirs[1]), HookedMLLM.from_pretrained(runs.mono_dirs[0]), n)
    assert t.log_bias[1] == pytest.approx(f.details["log_bias_paired"], abs=1e-9)
    assert t.log_bias[4] == pytest.approx(f.details["log_bias_monotune"], abs=1e-9)
    assert t.log_bias.nunique() == len(t)  # each row measured its own checkpoint
    assert (t.bias - t.image_gain / t.text_gain).abs().max() < 1e-9


@torch.no_grad()
def test_alignment_vs_accuracy_meets_the_alignment_finding_and_a_bare_forward(runs: SimpleNamespace) -> None:
    n = 12
    table, summary = alignment_vs_accuracy(runs.llava_dirs, n=n)
    assert list(table.step) == [10, 20, 30, 40]
    for name in ("alignment", "image_image", "alignment_adj", "accuracy"):
        assert ((table[f"{name}_lo"] <= table[name] + 1e-12) & (table[name] <= table[f"{name}_hi"] + 1e-12)).all()
    for i in (0, 3):
        model = HookedMLLM.from_pretrained(runs.llava_dirs[i])
        row = table.iloc[i]
        f = alignment(model, n=n)
        assert row.layer == f.details["layer"]
        assert row.alignment == pytest.approx(f.details["cos_image_text"], abs=1e-6)
        assert row.image_image == pytest.approx(f.details["cos_image_image"], abs=1e-6)
        gap = f.verdict.effect  # image-image - cross per example: the adjusted score with the other sign
        assert (row.alignment_adj, row.alignment_adj_lo, row.alignment_adj_hi) == pytest.approx(
            (-gap.value, -gap.hi, -gap.lo), abs=1e-6
        )
        qa = [e for e in make_qa(3 * n, "test", 0) if e.needs_image][:n]
        logits = model.hf_model(**encode(model, qa)).logits[:, -1, word_ids(model, ANSWERS)]
        truth = torch.tensor([ANSWERS.index(e.answer) for e in qa])
        assert row.accuracy == pytest.approx(float((logits.argmax(-1) == truth).double().mean()), abs=1e-12)
    assert set(summary.table.x) == {"alignment", "alignment_adj", "log step"}
    first = summary.table.iloc[0]
    assert (first.x, first.y, first.method) == ("alignment", "accuracy", "spearman")
    if not math.isnan(first.value):
        assert first.value == pytest.approx(sps.spearmanr(table.alignment, table.accuracy).statistic, abs=1e-9)


@torch.no_grad()
def test_accuracy_is_held_out_and_matches_a_bare_forward_on_a_trained_organism() -> None:
    model = HookedMLLM.from_pretrained("toy-llava")  # trained: accuracies differ between question sets
    n = 40
    row = alignment_and_accuracy(model, n=n, seed=3)
    qa = [e for e in make_qa(3 * n, "test", 3) if e.needs_image][:n]
    logits = model.hf_model(**encode(model, qa)).logits[:, -1, word_ids(model, ANSWERS)]
    correct = (logits.argmax(-1) == torch.tensor([ANSWERS.index(e.answer) for e in qa])).double()
    assert row["accuracy"] == pytest.approx(float(correct.mean()), abs=1e-12) and row["accuracy"] > 0.5
    assert row["accuracy_lo"] < row["accuracy"] <= row["accuracy_hi"]
    f = alignment(model, n=n, seed=3)
    assert row["layer"] == f.details["layer"]
    assert row["alignment"] == pytest.approx(f.details["cos_image_text"], abs=1e-6)


def test_a_fixed_layer_or_the_mean_over_layers_meets_the_alignment_curve() -> None:
    model = HookedMLLM.from_pretrained("toy-llava")
    curve = alignment_by_layer(model, n=12)
    for layer in range(model.cfg.n_layers):
        row = alignment_and_accuracy(model, n=12, layer=layer)
        assert row["layer"] == layer and row["alignment"] == pytest.approx(curve.cross[layer], abs=1e-6)
        assert row["image_image"] == pytest.approx(curve.image_image[layer], abs=1e-6)
    row = alignment_and_accuracy(model, n=12, layer="mean")
    assert row["layer"] == -1 and row["alignment"] == pytest.approx(curve.cross.mean(), abs=1e-6)
    for bad in (model.cfg.n_layers, -1, "max", True):
        with pytest.raises(ValueError, match="'chosen'.*'mean'"):
            alignment_and_accuracy(model, n=12, layer=bad)


def _partial_by_regression(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    design = np.stack([np.ones_like(z), z], 1)
    rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    ry = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    return float(np.corrcoef(rx, ry)[0, 1])


def _table(score: np.ndarray, acc: np.ndarray, steps: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"alignment": score, "accuracy": acc, "global_step": steps})


def test_correlations_match_scipy_and_a_regression_by_hand() -> None:
    rng = np.random.default_rng(0)
    steps = 250.0 * np.arange(1, 13)
    acc = np.round(np.log(steps) / 10 + rng.normal(0, 0.05, 12), 2)  # rounded: ties, as accuracies have
    score = acc + rng.normal(0, 0.05, 12)
    c = checkpoint_correlations(_table(score, acc, steps))
    t = c.table.set_index(["x", "y", "given", "method"])
    ls = np.log(steps)
    expect = {
        ("alignment", "accuracy", "", "spearman"): sps.spearmanr(score, acc).statistic,
        ("alignment", "accuracy", "", "pearson"): sps.pearsonr(score, acc).statistic,
        ("log step", "accuracy", "", "spearman"): sps.spearmanr(ls, acc).statistic,
        ("log step", "accuracy", "", "pearson"): sps.pearsonr(ls, acc).statistic,
        ("alignment", "log step", "", "pearson"): sps.pearsonr(score, ls).statistic,
        ("alignment", "accuracy", "log step", "partial pearson"): _partial_by_regression(score, acc, ls),
        ("alignment", "accuracy", "log step", "partial spearman"): _partial_by_regression(
            sps.rankdata(score), sps.rankdata(acc), sps.rankdata(ls)
        ),
    }
    for key, value in expect.items():
        assert t.loc[key, "value"] == pytest.approx(value, abs=1e-9), key
        assert t.loc[key, "lo"] <= t.loc[key, "value"] <= t.loc[key, "hi"], key
    assert (c.table.k == 12).all()


def test_the_verdict_needs_the_interval_above_zero_and_more_than_training_time() -> None:
    rng = np.random.default_rng(1)
    steps = 250.0 * np.arange(1, 13)
    ls = np.log(steps)
    acc = ls + rng.normal(0, 0.3, 12)
    beyond = checkpoint_correlations(_table(acc + rng.normal(0, 0.05, 12), acc, steps), n_boot=500)
    assert beyond.agrees and "both above 0" in beyond.reason
    through_step = checkpoint_correlations(_table(ls + rng.normal(0, 0.3, 12), acc, steps), n_boot=500)
    r = through_step.table.iloc[0]
    assert r.lo > 0 and not through_step.agrees and "training time" in through_step.reason
    against = checkpoint_correlations(_table(-acc, acc, steps), n_boot=500)
    assert not against.agrees and "not above 0" in against.reason
    flat = checkpoint_correlations(_table(acc, np.full(12, 0.5), steps), n_boot=500)  # constant accuracy: undefined
    assert not flat.agrees and math.isnan(flat.table.iloc[0].value)


def test_the_cli_prints_the_bias_curve_and_the_correlations(runs: SimpleNamespace, capsys) -> None:  # noqa: ANN001
    from hooks_mm.analysis.findings import main

    main(["--checkpoints", str(runs.root / "paired-checkpoints"), str(runs.root / "mono-checkpoints"), "--n", "10"])
    out = capsys.readouterr().out
    assert "6 checkpoints" in out and "text-centric bias per checkpoint" in out and "toy-anygpt-monotune" in out
    assert "partial spearman" in out and "verdict:" in out


# --- misuse ---------------------------------------------------------------------------------------------------


def test_missing_empty_or_malformed_checkpoint_directories_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory.*--checkpoint-every 250"):
        checkpoint_dirs(str(tmp_path / "none"))
    with pytest.raises(ValueError, match="no step-N checkpoint.*--checkpoint-every 250"):
        checkpoint_dirs(str(tmp_path))
    os.makedirs(tmp_path / "step-10")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        checkpoint_dirs(str(tmp_path))
    with open(tmp_path / "step-10" / LOG_NAME, "w") as f:
        json.dump({"name": "toy-anygpt", "seed": 0}, f)
    with pytest.raises(ValueError, match="no positive int 'step'"):
        checkpoint_dirs(str(tmp_path))
    with open(tmp_path / "step-10" / LOG_NAME, "w") as f:
        json.dump({"name": "toy-anygpt", "seed": 0, "step": 20}, f)
    with pytest.raises(ValueError, match="says step 20: the directory was renamed"):
        checkpoint_dirs(str(tmp_path))
    with pytest.raises(ValueError, match="no checkpoint directories given"):
        read_checkpoints([])
    with pytest.raises(TypeError, match="checkpoint_dirs"):
        read_checkpoints(str(tmp_path))


def test_mixed_repeated_or_unordered_checkpoints_are_refused(runs: SimpleNamespace, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mixing organisms of different kinds"):
        read_checkpoints(runs.paired_dirs + runs.llava_dirs)
    with pytest.raises(ValueError, match="does not start from 'toy-anygpt-monotune'"):
        read_checkpoints(runs.mono_dirs + runs.paired_dirs)
    with pytest.raises(ValueError, match="listed twice"):
        read_checkpoints(runs.paired_dirs + runs.paired_dirs[-1:])
    with pytest.raises(ValueError, match="in step order"):
        read_checkpoints(runs.paired_dirs[::-1])
    other = tmp_path / "step-50"  # another seed's run of the same organism
    shutil.copytree(runs.paired_dirs[0], other)
    with open(other / LOG_NAME, "w") as f:
        json.dump({**_log(runs.paired_dirs[0]), "seed": 2, "step": 50}, f)
    with pytest.raises(ValueError, match="seed 2"):
        read_checkpoints([*runs.paired_dirs, str(other)])
    with pytest.raises(ValueError, match="discrete-token organism.*alignment_vs_accuracy"):
        bias_over_checkpoints(runs.llava_dirs, n=10)


def test_too_few_checkpoints_or_examples_are_refused(runs: SimpleNamespace) -> None:
    with pytest.raises(ValueError, match=">= 3 checkpoints"):
        alignment_vs_accuracy(runs.llava_dirs[:2], n=10)
    with pytest.raises(ValueError, match=">= 3 checkpoints"):
        checkpoint_correlations(_table(np.ones(2), np.ones(2), np.array([1.0, 2.0])))
    with pytest.raises(ValueError, match="lacks"):
        checkpoint_correlations(pd.DataFrame({"alignment": [1.0, 2, 3]}))
    for f in (alignment_vs_accuracy, bias_over_checkpoints):
        with pytest.raises(ValueError, match="n=5"):
            f(runs.paired_dirs, n=5)
    with pytest.raises(ValueError, match="layer='max'"):
        alignment_vs_accuracy(runs.llava_dirs, n=10, layer="max")
