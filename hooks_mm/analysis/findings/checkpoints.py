"""Findings over training checkpoints: the text-centric bias through the paired and the unimodal (monotune)
stage, and seed 001's claim that the implicit-alignment score goes with task accuracy, as a correlation
across checkpoints with its interval and a control for training time (both rise as training goes on).

Checkpoints come from ``python scripts/train_organism.py NAME --checkpoint-every 250 --out DIR``: each
``DIR-checkpoints/step-N/`` is a saved model with ``hooks_mm_training.json`` (organism ``name``, ``seed``,
``step``, weights ``sha256``).

Example::

    from hooks_mm.analysis.findings.checkpoints import alignment_vs_accuracy, bias_over_checkpoints, checkpoint_dirs

    dirs = checkpoint_dirs("out/toy-anygpt-large-checkpoints")
    dirs += checkpoint_dirs("out/toy-anygpt-large-monotune-checkpoints")   # the run that continues it
    bias_over_checkpoints(dirs, n=200)          # one row per checkpoint: log bias [95 % interval]
    table, summary = alignment_vs_accuracy(checkpoint_dirs("out/toy-llava-large-checkpoints"))
    print(summary)                              # correlations [95 % interval], the step control, the verdict
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from hooks_mm.analysis.alignment import pooled_embeddings
from hooks_mm.analysis.erasure import accuracy, choice_score, text_centric_bias
from hooks_mm.analysis.findings.anygpt import log_bias
from hooks_mm.analysis.findings.common import batches, check_sizes, image_questions
from hooks_mm.analysis.stats import Interval, bootstrap
from hooks_mm.model import HookedMLLM
from hooks_mm.processing import CodebookProcessor
from hooks_mm.tasks.evaluate import word_ids
from hooks_mm.tasks.shapes import ANSWERS, make_drawings, make_qa

TRAINING_LOG = "hooks_mm_training.json"
MAKE_THEM = "`python scripts/train_organism.py NAME --checkpoint-every 250 --out DIR` (they land in DIR-checkpoints/)"
_STEP_DIR = re.compile(r"step-(\d+)")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint directory as its training log describes it: the organism (``run``), its seed, the step
    within that run, and ``global_step`` (the step counted from the first run: a run that starts from the
    previous run's weights continues from that run's last listed step)."""

    path: str
    run: str
    seed: int
    step: int
    global_step: int
    kind: str
    sha256: str


def _log(path: str) -> dict[str, Any]:
    file = os.path.join(path, TRAINING_LOG)
    try:
        with open(file) as f:
            log = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path} is not a training checkpoint ({TRAINING_LOG} missing or unreadable: {e}); make "
            f"checkpoints with {MAKE_THEM}."
        ) from e
    step = log.get("step") if isinstance(log, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 1 or not isinstance(log.get("name"), str):
        raise ValueError(
            f"{file} has no positive int 'step' and organism 'name' (a final model's log, not a checkpoint's?): "
            f"give the step-N directories that {MAKE_THEM} writes."
        )
    return log


def checkpoint_dirs(root: str) -> list[str]:
    """The ``step-N`` subdirectories of ``root`` in step order (the step read from each training log, which
    must match the directory's name).

    Example::

        checkpoint_dirs("out/toy-llava-large-checkpoints")   # [".../step-250", ".../step-500", ...]
    """
    if not isinstance(root, (str, os.PathLike)) or not os.path.isdir(root):
        raise ValueError(f"checkpoint_dirs: {root!r} is not a directory; make checkpoints with {MAKE_THEM}.")
    found = []
    for entry in os.listdir(root):
        m = _STEP_DIR.fullmatch(entry)
        if m and os.path.isdir(os.path.join(root, entry)):
            path = os.path.join(os.fspath(root), entry)
            step = _log(path)["step"]
            if step != int(m.group(1)):
                raise ValueError(
                    f"{path}: its {TRAINING_LOG} says step {step}: the directory was renamed or moved; "
                    f"give the directories as {MAKE_THEM} wrote them."
                )
            found.append((step, path))
    if not found:
        raise ValueError(f"checkpoint_dirs: no step-N checkpoint under {root}; make them with {MAKE_THEM}.")
    return [p for _, p in sorted(found)]


def read_checkpoints(dirs: Sequence[str]) -> list[Checkpoint]:
    """Check ``dirs`` form one training history and describe each: one run's checkpoints in step order,
    optionally followed by those of a run that starts from it (its organism's ``base``, e.g.
    ``toy-anygpt-large`` then ``toy-anygpt-large-monotune``). Mixing organisms, seeds or model kinds,
    repeating a directory or breaking the step order is refused by name.

    Example::

        [c.global_step for c in read_checkpoints(checkpoint_dirs(root))]
    """
    from hooks_mm.zoo.organisms import ORGANISMS

    if isinstance(dirs, (str, os.PathLike)):
        raise TypeError(f"give a list of checkpoint directories, not one path ({dirs!r}): checkpoint_dirs(root).")
    dirs = [os.fspath(d) for d in dirs]
    if not dirs:
        raise ValueError(
            f"no checkpoint directories given: list them with checkpoint_dirs(root); make them with {MAKE_THEM}."
        )
    if len({os.path.realpath(d) for d in dirs}) < len(dirs):
        raise ValueError("a checkpoint directory is listed twice: give each once.")
    out: list[Checkpoint] = []
    offset = 0
    for path in dirs:
        log = _log(path)
        try:
            with open(os.path.join(path, "config.json")) as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: no readable config.json (not a saved model): give a step-N directory.") from e
        kind = f"{config.get('model_type')}:{','.join(config.get('architectures') or [])}"
        prev = out[-1] if out else None
        if prev is not None and kind != prev.kind:
            raise ValueError(
                f"mixing organisms of different kinds: {prev.path} is {prev.kind}, {path} is {kind}; "
                "give the checkpoints of one organism's training (and the run that continues it)."
            )
        if prev is not None and log["name"] != prev.run:
            base = ORGANISMS[log["name"]].base if log["name"] in ORGANISMS else None
            if base != prev.run:
                raise ValueError(
                    f"mixing organisms: {path} is from {log['name']!r}, which does not start from {prev.run!r} "
                    f"(the checkpoints before it); give one organism's checkpoints, or a run followed by the run "
                    f"that starts from its weights (e.g. toy-anygpt-large then toy-anygpt-large-monotune)."
                )
            offset = prev.global_step
        elif prev is not None and (log.get("seed") != prev.seed or log["step"] <= prev.step):
            raise ValueError(
                f"{path} (seed {log.get('seed')}, step {log['step']}) does not follow {prev.path} (seed {prev.seed}, "
                f"step {prev.step}): give one run's checkpoints once each, in step order (checkpoint_dirs(root))."
            )
        out.append(
            Checkpoint(path, log["name"], log.get("seed"), log["step"], offset + log["step"], kind, log.get("sha256"))
        )
    return out


def discrete(path: str) -> bool:
    """Whether the model saved in ``path`` has a discrete image tokenizer (its image tokens are predicted, as in
    ``toy-anygpt``), read from the directory without loading the model."""
    return CodebookProcessor.is_saved_in(path)


def _cols(name: str, iv: Interval) -> dict[str, float]:
    return {name: iv.value, f"{name}_lo": iv.lo, f"{name}_hi": iv.hi}


def _where(c: Checkpoint) -> dict[str, Any]:
    return {"run": c.run, "step": c.step, "global_step": c.global_step}


@torch.no_grad()
def bias_over_checkpoints(dirs: Sequence[str], n: int = 200, seed: int = 0) -> pd.DataFrame:
    """The text-centric bias of each checkpoint of a discrete-token organism (toy-anygpt*) on ``n`` held-out
    captions and their images: ``log_bias`` = the mean over examples of
    :func:`hooks_mm.analysis.findings.log_bias` (log image gain - log text gain per example; > 0: the model
    leans on text to predict images more than the reverse) with its 95 % bootstrap interval over examples,
    and ``bias`` = :func:`hooks_mm.analysis.erasure.text_centric_bias`'s ratio of pooled perplexities (one
    number, no interval). Pass the paired run's checkpoints followed by the monotune run's to see the bias
    through both stages (``run`` names the stage, ``global_step`` counts across them).

    Example::

        dirs = checkpoint_dirs(paired_root) + checkpoint_dirs(monotune_root)
        bias_over_checkpoints(dirs, n=200)[["run", "global_step", "log_bias", "log_bias_lo", "log_bias_hi"]]
    """
    check_sizes(n)
    cps = read_checkpoints(dirs)
    drawings = make_drawings(n, "test", seed)
    texts, images = [d.scene.caption() for d in drawings], [d.image for d in drawings]
    rows = []
    for c in cps:
        if not discrete(c.path):
            raise ValueError(
                f"bias_over_checkpoints needs a discrete-token organism (toy-anygpt*, whose image tokens are "
                f"predicted); {c.path} is {c.kind}: use alignment_vs_accuracy for it."
            )
    for c in cps:
        model = HookedMLLM.from_pretrained(c.path)
        lb = torch.cat([log_bias(model, texts[i : i + 64], images[i : i + 64]) for i in range(0, n, 64)])
        pooled = text_centric_bias(model, texts, images)
        rows.append(
            {
                **_where(c),
                **_cols("log_bias", bootstrap(lb, seed=seed)),
                "bias": pooled["bias"],
                "image_gain": pooled["image_gain"],
                "text_gain": pooled["text_gain"],
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def alignment_cosines(
    model: HookedMLLM, n: int = 200, seed: int = 0, layer: int | str = "chosen"
) -> tuple[int, Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Per held-out example i (``n`` test-split prompts), at a layer: mean_j cos(image_i, text_j) (the implicit
    alignment score of pooled image and text states, over all pairs as the paper's default) and
    mean_{j != i} cos(image_i, image_j) (the image-image control); and the layer. ``layer="chosen"``: the layer
    where pooled image and text states are most alike on ``n`` training-split prompts (the pieces of
    :func:`hooks_mm.analysis.findings.alignment`); an int: that layer for every model (comparable across
    checkpoints); ``"mean"``: both cosines averaged over all layers (layer returned as -1).

    Example::

        layer, cross, image_image = alignment_cosines(model, n=200)
    """
    check_sizes(n)
    n_layers = model.cfg.n_layers
    fixed = not isinstance(layer, bool) and isinstance(layer, int)
    if not (layer in ("chosen", "mean") or (fixed and 0 <= layer < n_layers)):
        raise ValueError(
            f"layer={layer!r}: give 'chosen' (on calibration data), 'mean' (over layers) or an int "
            f"in 0..{n_layers - 1}."
        )
    if layer == "chosen":
        cal = pooled_embeddings(model, batches(model, make_qa(n, "train", seed)))
        layer = int(F.cosine_similarity(cal.image[:, None], cal.text[None], dim=-1).mean((0, 1)).argmax())
    held = pooled_embeddings(model, batches(model, make_qa(n, "test", seed)))
    img, txt = held.image, held.text  # [n, layer, d]
    cross = F.cosine_similarity(img[:, None], txt[None], dim=-1).double().mean(1)  # [n, layer]
    same = F.cosine_similarity(img[:, None], img[None], dim=-1).double()
    same = (same.sum(1) - same.diagonal(dim1=0, dim2=1).T) / (len(img) - 1)
    if layer == "mean":
        return -1, cross.mean(1), same.mean(1)
    return int(layer), cross[:, layer], same[:, layer]


def _ranks(x: Float[Tensor, " k"]) -> Float[Tensor, " k"]:
    """Ranks 1..k, ties given their average rank."""
    below, equal = (x[:, None] > x[None]).sum(1), (x[:, None] == x[None]).sum(1)
    return below.double() + (equal.double() + 1) / 2


def _pearson(x: Tensor, y: Tensor) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = float((x.square().sum() * y.square().sum()).sqrt())
    return float((x * y).sum()) / den if den > 0 else math.nan


def _partial(x: Tensor, y: Tensor, z: Tensor) -> float:
    rxy, rxz, ryz = _pearson(x, y), _pearson(x, z), _pearson(y, z)
    den = (1 - rxz**2) * (1 - ryz**2)
    return (rxy - rxz * ryz) / math.sqrt(den) if den > 1e-12 else math.nan


def _distinct(at_least: int, stat: Callable[[Tensor], float]) -> Callable[[Tensor], Tensor]:
    """``stat``, or NaN on a sample with fewer than ``at_least`` distinct checkpoints (where a correlation is
    +-1 whatever the data: 2 points for a correlation, 3 for a partial one)."""

    def f(v: Tensor) -> Tensor:  # a float64 tensor: stats.bootstrap reads a Python float as float32
        return torch.tensor(stat(v) if len(torch.unique(v, dim=0)) >= at_least else math.nan, dtype=torch.float64)

    return f


_STATS: dict[str, Callable[[Tensor], Tensor]] = {
    "pearson": _distinct(3, lambda v: _pearson(v[:, 0], v[:, 1])),
    "spearman": _distinct(3, lambda v: _pearson(_ranks(v[:, 0]), _ranks(v[:, 1]))),
    "partial pearson": _distinct(4, lambda v: _partial(v[:, 0], v[:, 1], v[:, 2])),
    "partial spearman": _distinct(4, lambda v: _partial(_ranks(v[:, 0]), _ranks(v[:, 1]), _ranks(v[:, 2]))),
}


def _interval(values: Tensor, stat: Callable[[Tensor], Tensor], seed: int, n_boot: int) -> Interval:
    """``stat`` on the checkpoints and its bootstrap interval over checkpoints; NaN bounds where the statistic
    is undefined (a constant column, or too few distinct checkpoints in most resamples)."""
    try:
        return bootstrap(values, statistic=stat, seed=seed, n_boot=n_boot)
    except ValueError:
        return Interval(float(stat(values)), math.nan, math.nan, 0.95, len(values), n_boot)


@dataclass(frozen=True)
class Correlations:
    """Correlations across checkpoints (``table``: one row per (x, y[, given], method) with its 95 % interval
    from resampling checkpoints) and the verdict on seed 001's claim (see :func:`checkpoint_correlations`)."""

    table: pd.DataFrame
    agrees: bool
    reason: str

    def __str__(self) -> str:
        t = self.table.to_string(index=False, float_format="{:.3g}".format)
        return f"{t}\nverdict: {'agrees' if self.agrees else 'does not agree'} ({self.reason})"


def checkpoint_correlations(
    table: pd.DataFrame, score: str = "alignment", seed: int = 0, n_boot: int = 2000
) -> Correlations:
    """Across the checkpoints of ``table`` (one row each: ``score``, ``accuracy``, ``global_step``): Spearman
    and Pearson correlation of ``score`` with accuracy; the same of log(step) with accuracy and of ``score``
    with log(step) (the confound: both rise with training); and the partial correlation of ``score`` with
    accuracy given log(step). Each has a 95 % percentile-bootstrap interval from resampling checkpoints
    (each checkpoint's values held fixed: their own intervals over examples are in ``table``); resamples with
    fewer than 3 distinct checkpoints (4 for a partial correlation), where a correlation is +-1 whatever the
    data, are dropped, and bounds are NaN where the statistic is undefined on most resamples (a constant
    column, too few checkpoints). A bootstrap over a dozen checkpoints is itself rough: read the intervals as
    indicative.

    Verdict: "agrees" with seed 001 (a higher alignment score goes with higher task accuracy) only when the
    Spearman correlation of ``score`` with accuracy has its interval above 0 AND the partial Spearman
    correlation given log(step) also has its interval above 0, i.e. the score predicts accuracy beyond what
    training time alone does. With few checkpoints the intervals are wide and the verdict is "does not
    agree" (not "disagrees").

    Example::

        checkpoint_correlations(table).table[["x", "y", "method", "value", "lo", "hi"]]
    """
    missing = [c for c in (score, "accuracy", "global_step") if c not in table.columns]
    if missing:
        raise ValueError(f"checkpoint_correlations: the table lacks {missing}: pass alignment_vs_accuracy's table.")
    if len(table) < 3:
        raise ValueError(
            f"a correlation across checkpoints needs >= 3 checkpoints (got {len(table)}): save more "
            "(a smaller --checkpoint-every) or give more directories."
        )
    if (table["global_step"] <= 0).any():
        raise ValueError("checkpoint_correlations: global_step must be > 0 (its log is the training-time control).")
    s, acc = torch.tensor(table[score].to_numpy(float)), torch.tensor(table["accuracy"].to_numpy(float))
    log_step = torch.tensor(table["global_step"].to_numpy(float)).log()
    rows = []
    for x, y, z, cols in (
        (score, "accuracy", None, (s, acc)),
        ("log step", "accuracy", None, (log_step, acc)),
        (score, "log step", None, (s, log_step)),
        (score, "accuracy", "log step", (s, acc, log_step)),
    ):
        for method in ("spearman", "pearson"):
            name = f"partial {method}" if z else method
            iv = _interval(torch.stack(cols, 1), _STATS[name], seed, n_boot)
            rows.append({"x": x, "y": y, "given": z or "", "method": name, **_cols("value", iv), "k": len(table)})
    out = pd.DataFrame(rows).rename(columns={"value_lo": "lo", "value_hi": "hi"})
    r, p = rows[0], rows[6]
    if not r["value_lo"] > 0:
        reason = (
            f"Spearman({score}, accuracy) = {r['value']:.3g} [{r['value_lo']:.3g}, {r['value_hi']:.3g}]: not above 0"
        )
    elif not p["value_lo"] > 0:
        reason = (
            f"Spearman({score}, accuracy) is above 0, but given log step it is {p['value']:.3g} "
            f"[{p['value_lo']:.3g}, {p['value_hi']:.3g}]: it says no more than training time"
        )
    else:
        reason = f"Spearman({score}, accuracy) and its partial given log step are both above 0"
    agrees = bool(r["value_lo"] > 0 and p["value_lo"] > 0)
    return Correlations(out, agrees, f"{reason}; k={len(table)} checkpoints, intervals over checkpoints")


@torch.no_grad()
def alignment_and_accuracy(
    model: HookedMLLM, n: int = 200, seed: int = 0, layer: int | str = "chosen"
) -> dict[str, float]:
    """One checkpoint's row of :func:`alignment_vs_accuracy`: the layer, the alignment score, the image-image
    control, their difference (``alignment_adj``) and the accuracy on ``n`` held-out image-dependent questions
    (argmax over the answer words), each a mean over examples with its 95 % interval (``_lo``, ``_hi``);
    ``layer`` as in :func:`alignment_cosines`.

    Example::

        alignment_and_accuracy(HookedMLLM.from_pretrained("toy-llava"), n=200)["accuracy"]
    """
    check_sizes(n)
    layer, cross, same = alignment_cosines(model, n, seed, layer)
    qa, answers = image_questions(model, n, "test", seed)
    correct = accuracy(model, qa, answers, choice_score(word_ids(model, ANSWERS).tolist()), per_example=True)
    return {
        "layer": layer,
        **_cols("alignment", bootstrap(cross, seed=seed)),
        **_cols("image_image", bootstrap(same, seed=seed)),
        **_cols("alignment_adj", bootstrap(cross - same, seed=seed)),
        **_cols("accuracy", bootstrap(correct, seed=seed)),
    }


@torch.no_grad()
def alignment_vs_accuracy(
    dirs: Sequence[str], n: int = 200, seed: int = 0, n_boot: int = 2000, layer: int | str = "chosen"
) -> tuple[pd.DataFrame, Correlations]:
    """Seed 001's claim across checkpoints (>= 3): per checkpoint, the implicit-alignment score (methods.md
    section 2: the cross-modal cosine, higher = more aligned) = per held-out example mean_j cos(image_i,
    text_j) at the layer chosen on each checkpoint's calibration data (``layer="chosen"``; an int fixes one
    layer for all, ``"mean"`` averages over layers: :func:`alignment_cosines`), the image-image control,
    ``alignment_adj`` = alignment - image_image (the finding's gap with the score's sign), and the accuracy
    on ``n`` held-out image-dependent questions (argmax over the answer words), each with a 95 % interval over
    examples; then :func:`checkpoint_correlations` on ``alignment`` (its verdict) and on ``alignment_adj``.

    Example::

        table, summary = alignment_vs_accuracy(checkpoint_dirs(root), n=200)
        summary.agrees, summary.table
    """
    check_sizes(n)
    if layer not in ("chosen", "mean") and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise ValueError(f"layer={layer!r}: give 'chosen' (on calibration data), 'mean' (over layers) or an int.")
    cps = read_checkpoints(dirs)
    if len(cps) < 3:
        raise ValueError(
            f"a correlation across checkpoints needs >= 3 checkpoints (got {len(cps)}): save more "
            "(a smaller --checkpoint-every) or give more directories."
        )
    rows = [{**_where(c), **alignment_and_accuracy(HookedMLLM.from_pretrained(c.path), n, seed, layer)} for c in cps]
    table = pd.DataFrame(rows)
    main = checkpoint_correlations(table, "alignment", seed, n_boot)
    adj = checkpoint_correlations(table, "alignment_adj", seed, n_boot)
    both = pd.concat([main.table, adj.table[adj.table["x"] == "alignment_adj"]], ignore_index=True)
    return table, Correlations(both, main.agrees, main.reason)


def expand(paths: Sequence[str]) -> list[str]:
    """Each of ``paths`` as checkpoint directories: a ``step-N`` checkpoint itself, or a root holding them
    (:func:`checkpoint_dirs`), in the order given.

    Example::

        expand(["out/toy-anygpt-large-checkpoints", "out/toy-anygpt-large-monotune-checkpoints"])
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[str] = []
    for p in paths:
        own = os.path.isfile(os.path.join(p, TRAINING_LOG)) and _STEP_DIR.fullmatch(
            os.path.basename(os.path.normpath(p))
        )
        out += [os.fspath(p)] if own else checkpoint_dirs(p)
    return out


def report(paths: Sequence[str], n: int = 200, seed: int = 0) -> str:
    """The curves over the checkpoints under ``paths`` (:func:`expand`) as text: the text-centric bias for a
    discrete-token organism, and alignment vs accuracy with its correlations (>= 3 checkpoints); what
    ``python -m hooks_mm.analysis.findings --checkpoints DIR [DIR ...]`` prints.

    Example::

        print(report(["out/toy-llava-large-checkpoints"], n=100))
    """
    import time

    check_sizes(n)
    dirs = expand(paths)
    cps = read_checkpoints(dirs)
    fmt = "{:.3g}".format
    out = [f"{len(cps)} checkpoints: {', '.join(f'{c.run}@{c.step}' for c in cps)}"]
    if discrete(dirs[0]):
        t = time.perf_counter()
        table = bias_over_checkpoints(dirs, n, seed)
        out += [
            f"\ntext-centric bias per checkpoint (n={n} held out; log_bias [95 % interval]; "
            f"{time.perf_counter() - t:.0f} s):",
            table.to_string(index=False, float_format=fmt),
        ]
    if len(cps) >= 3:
        t = time.perf_counter()
        table, summary = alignment_vs_accuracy(dirs, n, seed)
        out += [
            f"\nalignment vs accuracy per checkpoint (n={n} held out; [95 % interval]; "
            f"{time.perf_counter() - t:.0f} s):",
            table.to_string(index=False, float_format=fmt),
            "\ncorrelations across checkpoints (95 % interval: resampling checkpoints):",
            str(summary),
        ]
    else:
        out.append("\n(alignment vs accuracy needs >= 3 checkpoints: skipped)")
    return "\n".join(out)
