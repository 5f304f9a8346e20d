"""The ways to run a neuron-ablation sweep, timed side by side (shared by sweep.py and scale.py).

Every way runs the same configs (``NeuronAblation``: one layer, one neuron, zeroed at a
position selector's positions) on the same inputs with the same metric, and returns the
metric values, so the ways are checked against each other as they are timed:

  loop             one ``run_with_hooks`` forward per config (the TransformerLens way)
  nnsight each     one nnsight trace per config
  nnsight batched  configs batched as invokes of one trace (``MultimodalNNsight``)
  fast             ``hooks_mm.sweep.sweep`` (the exact fast path)
  attribution      ``attribution_patching``: every neuron of every layer from one forward + backward

:func:`interleave` times the ways round-robin (the order rotated every round), so load on a
shared machine hits them alike; :func:`report` prints the median rate, its spread over the
rounds and the median of the per-round ratios to the loop.

Example::

    ways = Ways(model, nn_model, inputs, metric)
    cfgs = spread(model, per_layer=2, positions=Image())
    rates = interleave({"loop": (lambda: ways.loop(cfgs[:12]), 12), "fast": (lambda: ways.fast(cfgs), len(cfgs))}, 3)
    report(rates, base="loop")
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch import Tensor

from hooks_mm import HookedMLLM
from hooks_mm.interventions import NeuronAblation
from hooks_mm.selectors import Selector
from hooks_mm.sweep import attribution_patching, sweep


def spread(model: HookedMLLM, per_layer: int, positions: Selector, seed: int = 0) -> list[NeuronAblation]:
    """``per_layer`` random neurons of every layer, layer-interleaved: every prefix of
    ``n_layers`` configs covers each layer once (the whole model, not its best case)."""
    g = torch.Generator().manual_seed(seed)
    n, d = model.cfg.n_layers, model.cfg.d_mlp
    picks = [torch.randperm(d, generator=g)[:per_layer].tolist() for _ in range(n)]
    return [NeuronAblation(l, [picks[l][i]], positions) for i in range(per_layer) for l in range(n)]


def one_layer(model: HookedMLLM, layer: int, n: int, positions: Selector, seed: int = 0) -> list[NeuronAblation]:
    """``n`` random neurons of one layer (a late layer is the fast path's best case: little to replay)."""
    g = torch.Generator().manual_seed(seed)
    return [NeuronAblation(layer, [j], positions) for j in torch.randperm(model.cfg.d_mlp, generator=g)[:n].tolist()]


class Ways:
    """The compared ways on one model, inputs and metric (a ``PositionMetric``, bound here)."""

    def __init__(
        self, model: HookedMLLM, nn_model: Any, inputs: dict[str, Tensor], metric: Any, batch_size: int | None = None
    ):
        self.model, self.nn_model, self.inputs, self.metric = model, nn_model, inputs, metric
        self.batch = model.prepare(inputs)
        self.batch_size = batch_size
        self.layers = nn_model.model.language_model.layers if nn_model is not None else None
        self.clean = metric(model(self.batch))  # binds the metric's clean reference before anything is timed
        self.last_sweep: Any = None
        self.metas: dict[tuple[str, bool], dict] = {}  # the last fast sweep's meta per (positions, suffix)

    def where(self, positions: Selector) -> tuple[Tensor, Tensor]:
        """(rows, positions) index tensors of a selector on these inputs."""
        rows, cols = positions.mask(self.batch.layout).nonzero(as_tuple=True)
        return rows, cols

    def loop(self, configs: list[NeuronAblation]) -> Tensor:
        out = []
        for c in configs:
            rows, cols = self.where(c.positions)
            j = c.neurons[0]

            def zero(x: Tensor, hook: Any, rows: Tensor = rows, cols: Tensor = cols, j: int = j) -> None:
                x[rows, cols, j] = 0

            logits = self.model.run_with_hooks(self.inputs, fwd_hooks=[(f"blocks.{c.layers}.mlp.hook_post", zero)])
            out.append(self.metric(logits))
        return torch.stack(out)

    def nnsight_each(self, configs: list[NeuronAblation]) -> Tensor:
        out = []
        for c in configs:
            rows, cols = self.where(c.positions)
            with self.nn_model.trace(**self.inputs):
                self.layers[c.layers].mlp.down_proj.input[rows, cols, c.neurons[0]] = 0
                logits = self.nn_model.output.logits.save()
            out.append(self.metric(logits))
        return torch.stack(out)

    def nnsight_batched(self, configs: list[NeuronAblation], per_trace: int = 16) -> Tensor:
        out = []
        for s in range(0, len(configs), per_trace):
            saved = []
            with self.nn_model.trace() as tracer:
                for c in configs[s : s + per_trace]:
                    rows, cols = self.where(c.positions)
                    with tracer.invoke(**self.inputs):
                        self.layers[c.layers].mlp.down_proj.input[rows, cols, c.neurons[0]] = 0
                        saved.append(self.nn_model.output.logits.save())
            out += [self.metric(logits) for logits in saved]
        return torch.stack(out)

    def fast(self, configs: list[NeuronAblation], **kwargs: Any) -> Tensor:
        self.last_sweep = sweep(
            self.model, self.batch, configs, self.metric, progress=False, batch_size=self.batch_size, **kwargs
        )
        self.metas[(repr(configs[0].positions), kwargs.get("suffix", True))] = self.last_sweep.meta
        return self.last_sweep.values

    def attribution(self, positions: Selector) -> Any:
        return attribution_patching(self.model, self.batch, self.metric, positions=positions)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleave(ways: dict[str, tuple[Callable[[], Any], int]], rounds: int) -> tuple[dict[str, list[float]], dict]:
    """Each way ``(fn, n)`` timed ``rounds`` times round-robin (order rotated each round): its
    rates (n / seconds, one per round) and its last output."""
    names = list(ways)
    rates: dict[str, list[float]] = {k: [] for k in names}
    outs: dict[str, Any] = {}
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            fn, n = ways[k]
            t, outs[k] = timed(fn)
            rates[k].append(n / t)
    return rates, outs


def report(rates: dict[str, list[float]], base: str, unit: str = "configs/s") -> None:
    """Median rate, min-max over rounds, and the median per-round ratio to ``base``."""
    print(f"  {'way':<40} {unit:>12} {'min-max':>17} {'vs ' + base[:3]:>12}")
    for k, rs in rates.items():
        ratios = [r / b for r, b in zip(rs, rates[base])]
        print(
            f"  {k:<40} {statistics.median(rs):12.2f} {min(rs):8.2f}-{max(rs):<8.2f} {statistics.median(ratios):11.1f}x"
        )


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation (ties broken by order; fine for continuous values)."""
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
