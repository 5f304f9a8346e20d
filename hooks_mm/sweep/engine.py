"""``sweep`` and its local backend: intervention configs on one batch through HookedMLLM's hooks.

The exact fast path serves single-layer neuron ablations on ``mlp.hook_post`` (every
ablation mode): the clean pass runs once; at the ablated layer the MLP output of every
config is the clean one minus a low-rank update (``act[:, S] @ W_down[:, S]^T``, where
``act - op(act)`` comes from the spec's own op, so every mode is the one the hooks run);
configs are packed into batch rows and only the layers above run again (see
:mod:`hooks_mm.sweep.replay`). Every other config runs as one plain intervention forward.
Both give the same numbers (tested).

Example::

    configs = single_neurons(model, layers=[0, 1], positions=Image())
    result = sweep(model, inputs, configs, answer_logprob(model, inputs))
    result.table.nsmallest(10, "delta")
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from hooks_mm.interventions import Context, Intervention, NeuronAblation
from hooks_mm.interventions.ops import apply
from hooks_mm.sweep.core import SAVE, Job, SweepBackend, SweepResult, check_edits, metric_value, run_sweep
from hooks_mm.sweep.identity import weights_digest
from hooks_mm.sweep.kernels import lowrank_update
from hooks_mm.sweep.metrics import PositionMetric, check_metric_batch
from hooks_mm.sweep.replay import Replay

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM


def bytes_per_config(model: HookedMLLM, batch: int, seq: int, all_logits: bool = True) -> int:
    """Rough peak bytes one packed config adds (suffix activations, attention, logits)."""
    c = model.cfg
    per_token = 8 * c.d_model + 4 * (c.d_mlp or 4 * c.d_model) + 2 * (c.n_heads or 1) * seq
    logits = 2 * (c.d_vocab or 0) * (seq if all_logits else 1)
    return 4 * batch * (seq * per_token + logits)


class HooksSweep:
    """The local backend: the exact fast path where it applies, one intervention forward elsewhere.

    ``batch_size``: configs packed per forward (default from ``max_memory`` bytes);
    ``method``: "auto" (fast path where it applies), "fast" (error where it does not),
    "naive" (one intervention forward per config, the TransformerLens way).
    """

    def __init__(self, batch_size: int | None = None, max_memory: int = 2 << 30, method: str = "auto"):
        if method not in ("auto", "fast", "naive"):
            raise ValueError(f"method {method!r} is not one of 'auto', 'fast', 'naive'.")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size={batch_size!r}: give a positive int (configs per forward), or None.")
        self.batch_size, self.max_memory, self.method = batch_size, max_memory, method

    def start(
        self, model: HookedMLLM, batch: Batch, metric: Callable[[Tensor], Tensor], sources: dict[str, Any] | None
    ) -> bytes:
        check_metric_batch(metric, batch)
        b, s = batch.shape
        per = bytes_per_config(model, b, s, all_logits=not isinstance(metric, PositionMetric))
        if per > self.max_memory:
            raise MemoryError(
                f"max_memory={self.max_memory / 2**20:.1f} MiB is too small for one config on this batch "
                f"(~{per / 2**20:.1f} MiB each): raise max_memory or use a smaller batch."
            )
        self.chunk = self.batch_size or max(1, min(256, self.max_memory // per))
        self.model, self.batch, self.metric, self.sources = model, batch, metric, sources
        self.replay = Replay(model, batch) if self.method != "naive" else None
        clean_logits = self.replay.logits if self.replay is not None else model(batch)
        if isinstance(metric, PositionMetric):
            metric.bind(batch, clean_logits, model)
        self.clean = metric_value(metric, clean_logits, None)
        self.counts = {"fast": 0, "naive": 0}
        return f"{model.cfg.architecture}|{weights_digest(model.hf_model)}".encode()

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, Tensor] | None]:
        configs = [(i, spec) for i, spec in jobs if spec is not None]
        groups, naive = self._partition(configs)
        if len(configs) < len(jobs):
            yield -1, self.clean
        metric, batch, chunk = self.metric, self.batch.shape[0], self.chunk
        positional = isinstance(metric, PositionMetric)
        for group in groups:
            fast = FastGroup(self.model, self.replay, self.batch, [spec for _, spec in group], self.sources)  # type: ignore[arg-type]
            for s in range(0, len(group), chunk):
                ids = group[s : s + chunk]
                logits = fast.logits(range(s, s + len(ids)), metric.positions if positional else None)
                for j, (i, _) in enumerate(ids):
                    part = logits[j * batch : (j + 1) * batch]
                    yield i, metric_value(metric.at if positional else metric, part, self.clean.shape)
                    self.counts["fast"] += 1
                yield SAVE
        for n, (i, spec) in enumerate(naive, 1):
            logits = self.model.run_with_interventions(self.batch, spec, sources=self.sources)
            yield i, metric_value(metric, logits, self.clean.shape)
            self.counts["naive"] += 1
            if n % chunk == 0:
                yield SAVE

    def meta(self) -> dict[str, Any]:
        return {"chunk": self.chunk, **self.counts}

    def _partition(
        self, configs: list[tuple[int, Intervention]]
    ) -> tuple[list[list[tuple[int, Intervention]]], list[tuple[int, Intervention]]]:
        """Fast-path configs grouped by what they share; the rest run one forward each."""
        groups: dict[str, list[tuple[int, Intervention]]] = {}
        naive = []
        ctx = Context(self.model, self.batch, self.sources)
        for i, spec in configs:
            check_edits(spec, spec.edits(ctx), i)  # every config is checked before anything runs
            key = self._fast_key(spec) if self.method != "naive" else None
            if key is None:
                if self.method == "fast":
                    raise ValueError(f"method='fast' cannot run {json.dumps(spec.to_dict())[:160]}: use method='auto'.")
                naive.append((i, spec))
            else:
                groups.setdefault(key, []).append((i, spec))
        return list(groups.values()), naive

    def _fast_key(self, spec: Intervention) -> str | None:
        model, replay = self.model, self.replay
        if replay is None or type(spec) is not NeuronAblation or spec.hook != "mlp.hook_post":
            return None
        layers = spec.layers
        layer = layers if isinstance(layers, int) else layers[0] if layers is not None and len(layers) == 1 else None
        if layer is None:
            return None
        layer %= model.cfg.n_layers  # in range: edits() checked it
        if layer in model.cfg.cross_attn_layers or model.adapter.mlp_out is None:
            return None
        if layer in model.cfg.moe_layers:  # no dense down_proj to update (edits() refuses these before)
            return None
        if layer not in replay.verified:
            replay.verified[layer] = replay.verify(layer)
        if not replay.verified[layer]:
            return None
        d = spec.to_dict()
        d.pop("neurons")
        return json.dumps(d, sort_keys=True) + f"|{layer}|{id(spec.means)}"


class FastGroup:
    """Configs that differ only in their neuron sets: shared clean tensors, packed suffix."""

    def __init__(
        self,
        model: HookedMLLM,
        replay: Replay,
        batch: Batch,
        configs: list[NeuronAblation],
        sources: dict[str, Any] | None,
    ):
        self.model, self.replay, self.configs = model, replay, configs
        # the spec's own op on every neuron: act - op(act) is each neuron's change at the ablated positions
        ctx = Context(model, batch, sources)
        [edit] = dataclasses.replace(configs[0], neurons=None).edits(ctx)
        store = ctx.read_sources({})
        act = replay.cache[edit.hook]
        self.layer = int(edit.hook.split(".")[1])
        self.width = act.shape[-1]
        a = model.adapter
        block = model.decoder_layers[self.layer]
        self.down = block.get_submodule(a.mlp).get_submodule(a.down)
        after = None if a.mlp_out == a.mlp else block.get_submodule(a.mlp_out)
        self.after_down = None if after is self.down else after  # OPT: mlp_out is fc2, the down linear itself
        self.diff = (act - apply(act, edit.op, store)).flatten(0, 1)  # [rows, m]
        self.down_out = self.down(act).flatten(0, 1)  # [rows, d]
        self.mid = replay.cache[f"blocks.{self.layer}.hook_resid_mid"]

    def logits(self, which: range, positions: Tensor | None = None) -> Tensor:
        cfgs = [self.configs[i] for i in which]
        sets = [list(range(self.width)) if c.neurons is None else [j % self.width for j in c.neurons] for c in cfgs]
        k = max(len(s) for s in sets)
        idx = torch.zeros(len(sets), k, dtype=torch.long)
        valid = torch.zeros(len(sets), k, dtype=torch.bool)
        for i, s in enumerate(sets):
            idx[i, : len(s)] = torch.tensor(s)
            valid[i, : len(s)] = True
        idx, valid = idx.to(self.diff.device), valid.to(self.diff.device)
        coef = self.diff[:, idx].permute(1, 0, 2) * valid[:, None, :]  # [n, rows, k]
        down = lowrank_update(self.down_out, coef, self.down.weight, idx)
        b, s, d = self.mid.shape
        down = down.view(len(cfgs) * b, s, d)
        mlp_out = down if self.after_down is None else self.after_down(down)
        h = self.mid.repeat(len(cfgs), 1, 1) + mlp_out
        return self.replay.run(h, self.layer, positions)


@torch.no_grad()
def sweep(
    model: HookedMLLM,
    inputs: Any,
    configs: Sequence[Intervention],
    metric: Callable[[Tensor], Tensor],
    *,
    batch_size: int | None = None,
    max_memory: int = 2 << 30,
    method: str = "auto",
    checkpoint: str | None = None,
    progress: bool | None = None,
    sources: dict[str, Any] | None = None,
    backend: SweepBackend | None = None,
) -> SweepResult:
    """Run every config on ``inputs``; a table of ``metric`` per config.

    ``batch_size``, ``max_memory``, ``method``: the local backend's options (see
    :class:`HooksSweep`); ``checkpoint``: a file where finished configs are saved after every
    chunk, so an interrupted sweep resumes from there when called again with the same file.
    ``backend``: another backend, e.g. ``hooks_mm.remote.NNsightSweep(remote=URL)`` to run
    the same configs through nnsight on an NDIF server. ``progress``: a bar over the configs (None:
    automatic: in a notebook or on a terminal, see :mod:`hooks_mm.progress`).
    """
    if backend is None:
        backend = HooksSweep(batch_size, max_memory, method)
    elif not hasattr(backend, "run") or not hasattr(backend, "start"):
        raise TypeError(
            f"backend={backend!r} is not a sweep backend: pass HooksSweep(...) or "
            "hooks_mm.remote.NNsightSweep(remote=...)."
        )
    return run_sweep(backend, model, inputs, configs, metric, checkpoint=checkpoint, progress=progress, sources=sources)
