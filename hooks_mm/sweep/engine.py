"""``sweep``: run many intervention configs on one batch and reduce each to a metric.

The exact fast path serves single-layer neuron ablations on ``mlp.hook_post`` (zero,
mean, set, scale, resample): the clean pass runs once; at the ablated layer the MLP output
of every config is the clean one minus a low-rank update (``act[:, S] @ W_down[:, S]^T``
at the ablated positions); configs are packed into batch rows and only the layers above
run again (see :mod:`hooks_mm.sweep.replay`). Every other config runs as one plain
intervention forward. Both give the same numbers (tested).

Example::

    configs = single_neurons(model, layers=[0, 1], positions=Image())
    result = sweep(model, inputs, configs, answer_logprob(model, inputs))
    result.table.nsmallest(10, "delta")
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from hooks_mm.interventions import Intervention, NeuronAblation
from hooks_mm.sweep.kernels import lowrank_update
from hooks_mm.sweep.metrics import PositionMetric
from hooks_mm.sweep.replay import Replay

if TYPE_CHECKING:
    from hooks_mm.model import HookedMLLM

FAST_MODES = ("zero", "mean", "set", "scale", "resample")


@dataclass
class SweepResult:
    """``table``: one row per config; ``values`` [n_configs, *metric shape]; ``clean`` metric."""

    table: pd.DataFrame
    values: Tensor
    clean: Tensor
    meta: dict[str, Any] = field(default_factory=dict)


def _metric_value(metric: Callable[[Tensor], Tensor], logits: Tensor, shape: torch.Size | None) -> Tensor:
    v = metric(logits)
    v = torch.as_tensor(v).detach().float().cpu()
    if v.dim() > 1:
        raise ValueError(
            f"the metric returned shape {tuple(v.shape)}: it must return a scalar or a 1-D vector "
            "(e.g. one value per answer), reduced over the batch and positions."
        )
    if shape is not None and v.shape != shape:
        raise ValueError(f"the metric returned shape {tuple(v.shape)} for one config and {tuple(shape)} for the clean run.")
    return v


def config_key(spec: Intervention) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


def describe(spec: Intervention) -> dict[str, Any]:
    """Table columns for one config."""
    d: dict[str, Any] = {"type": type(spec).__name__}
    if isinstance(spec, NeuronAblation):
        layers = spec.layers
        d["layer"] = layers if isinstance(layers, int) else (layers[0] if layers and len(layers) == 1 else str(layers))
        n = spec.neurons
        d["neuron"] = n[0] if n is not None and len(n) == 1 else -1
        d["n_neurons"] = len(n) if n is not None else -1
        d["neurons"] = "all" if n is None else ",".join(map(str, n)) if len(n) <= 8 else f"{n[0]}..{n[-1]} ({len(n)})"
        d["positions"] = repr(spec.positions)
        d["mode"] = spec.mode
    else:
        d["spec"] = json.dumps(spec.to_dict())[:200]
    return d


def bytes_per_config(model: "HookedMLLM", batch: int, seq: int, all_logits: bool = True) -> int:
    """Rough peak bytes one packed config adds (suffix activations, attention, logits)."""
    c = model.cfg
    per_token = 8 * c.d_model + 4 * (c.d_mlp or 4 * c.d_model) + 2 * (c.n_heads or 1) * seq
    logits = 2 * (c.d_vocab or 0) * (seq if all_logits else 1)
    return 4 * batch * (seq * per_token + logits)


@torch.no_grad()
def sweep(
    model: "HookedMLLM",
    inputs: Any,
    configs: Sequence[Intervention],
    metric: Callable[[Tensor], Tensor],
    *,
    batch_size: int | None = None,
    max_memory: int = 2 << 30,
    method: str = "auto",
    checkpoint: str | None = None,
    progress: bool = True,
    sources: dict[str, Any] | None = None,
    backend: str = "hooks",
    remote: Any = True,
    **remote_kwargs: Any,
) -> SweepResult:
    """Run every config on ``inputs``; a table of ``metric`` per config.

    ``batch_size`` (configs packed per forward; default from ``max_memory`` bytes);
    ``method``: "auto" (fast path where it applies), "fast" (error where it does not),
    "naive" (one intervention forward per config, the TransformerLens way);
    ``checkpoint``: a file where finished configs are saved after every chunk, so an
    interrupted sweep resumes from there when called again with the same file.
    ``backend="nnsight"`` runs the same configs through nnsight, on an NDIF server with
    ``remote=True`` / a host URL (see :func:`hooks_mm.remote.remote_sweep` for its options).
    """
    if backend == "nnsight":
        from hooks_mm.remote import remote_sweep

        return remote_sweep(model, inputs, configs, metric, remote=remote, checkpoint=checkpoint, progress=progress, sources=sources, **remote_kwargs)
    if backend != "hooks":
        raise ValueError(f"backend {backend!r} is not one of 'hooks', 'nnsight'.")
    configs = list(configs)
    if not configs:
        raise ValueError("sweep got an empty config list: pass intervention specs, e.g. single_neurons(model, layers=0).")
    if method not in ("auto", "fast", "naive"):
        raise ValueError(f"method {method!r} is not one of 'auto', 'fast', 'naive'.")
    inputs = model._as_inputs(inputs)
    batch, seq = inputs["input_ids"].shape
    per = bytes_per_config(model, batch, seq, all_logits=not isinstance(metric, PositionMetric))
    if per > max_memory:
        raise MemoryError(
            f"max_memory={max_memory / 2**20:.1f} MiB is too small for one config on this batch "
            f"(~{per / 2**20:.1f} MiB each): raise max_memory or use a smaller batch."
        )
    chunk = batch_size or max(1, min(256, max_memory // per))
    t0 = time.perf_counter()
    replay = Replay(model, inputs) if method != "naive" else None
    clean_logits = replay.logits if replay is not None else model(inputs)
    clean = _metric_value(metric, clean_logits, None)

    keys = [config_key(c) for c in configs]
    fingerprint = _fingerprint(model, inputs, clean)
    done: dict[str, Tensor] = _load(checkpoint, fingerprint) if checkpoint else {}
    todo = [i for i, k in enumerate(keys) if k not in done]
    fast_groups, naive = _partition(model, replay, [configs[i] for i in todo], todo, method)
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), disable=not progress, desc="sweep", unit="cfg")
    counts = {"fast": 0, "naive": 0, "resumed": len(configs) - len(todo)}
    try:
        for group in fast_groups.values():
            fast = _FastGroup(model, replay, inputs, [configs[i] for i in group], sources)  # type: ignore[arg-type]
            at = metric.positions if isinstance(metric, PositionMetric) else None
            reduce = metric.at if at is not None else metric
            for s in range(0, len(group), chunk):
                ids = group[s : s + chunk]
                logits = fast.logits(range(s, s + len(ids)), at)
                for j, i in enumerate(ids):
                    done[keys[i]] = _metric_value(reduce, logits[j * batch : (j + 1) * batch], clean.shape)
                counts["fast"] += len(ids)
                bar.update(len(ids))
                _save(checkpoint, done, fingerprint)
        for i in naive:
            logits = model.run_with_interventions(inputs, configs[i], sources=sources)
            done[keys[i]] = _metric_value(metric, logits, clean.shape)
            counts["naive"] += 1
            bar.update(1)
            if counts["naive"] % chunk == 0:
                _save(checkpoint, done, fingerprint)
        _save(checkpoint, done, fingerprint)
    except KeyboardInterrupt:
        _save(checkpoint, done, fingerprint)
        n_done = sum(k in done for k in keys)
        where = f"; call sweep again with checkpoint={checkpoint!r} to resume" if checkpoint else "; pass checkpoint=PATH to make sweeps resumable"
        raise KeyboardInterrupt(f"sweep interrupted after {n_done}/{len(configs)} configs{where}") from None
    finally:
        bar.close()
    values = torch.stack([done[k] for k in keys])
    rows = []
    for c, v in zip(configs, values):
        row = describe(c)
        if v.dim() == 0:
            row["value"], row["delta"] = float(v), float(v - clean)
        else:
            row.update({f"value_{i}": float(x) for i, x in enumerate(v)})
        rows.append(row)
    meta = {"seconds": time.perf_counter() - t0, "configs": len(configs), "chunk": chunk, **counts}
    return SweepResult(pd.DataFrame(rows), values, clean, meta)


def _partition(model: "HookedMLLM", replay: Replay | None, configs: list[Intervention], index: list[int], method: str):  # noqa: ANN202
    """Group fast-path configs by what they share; the rest run naively."""
    groups: dict[str, list[int]] = {}
    naive: list[int] = []
    for spec, i in zip(configs, index):
        key = _fast_key(model, replay, spec)
        if key is None or method == "naive":
            if method == "fast":
                raise ValueError(f"method='fast' cannot run {json.dumps(spec.to_dict())[:160]}: use method='auto'.")
            naive.append(i)
        else:
            groups.setdefault(key, []).append(i)
    return groups, naive


def _fast_key(model: "HookedMLLM", replay: Replay | None, spec: Intervention) -> str | None:
    if replay is None or type(spec) is not NeuronAblation or spec.hook != "mlp.hook_post" or spec.mode not in FAST_MODES:
        return None
    layers = spec.layers
    layer = layers if isinstance(layers, int) else layers[0] if layers is not None and len(layers) == 1 else None
    if layer is None:
        return None
    layer %= model.cfg.n_layers
    if layer in model.cfg.cross_attn_layers or model.adapter.mlp_out is None:
        return None
    if layer not in replay.verified:
        replay.verified[layer] = replay.verify(layer)
    if not replay.verified[layer]:
        return None
    d = spec.to_dict()
    d.pop("neurons")
    return json.dumps(d, sort_keys=True) + f"|{layer}|{id(spec.means)}"


class _FastGroup:
    """Configs that differ only in their neuron sets: shared clean tensors, packed suffix."""

    def __init__(self, model: "HookedMLLM", replay: Replay, inputs: dict[str, Any], configs: list[NeuronAblation], sources: dict[str, Any] | None):
        from hooks_mm.interventions.base import Context

        first = configs[0]
        self.model, self.replay, self.configs = model, replay, configs
        ctx = Context(model, inputs, model._layout(inputs), dict(sources or {}))
        layer = ctx.layers(first.layers, "sweep")[0]
        self.layer = layer
        mask = ctx.mask(first.positions, "sweep")  # [b, s]
        name = f"blocks.{layer}.mlp.hook_post"
        a = model.adapter
        block = model._layers[layer]
        mlp = block.get_submodule(a.mlp)
        self.down = mlp.get_submodule(a.down)
        self.after_down = None if a.mlp_out == a.mlp else block.get_submodule(a.mlp_out)
        act = replay.cache[name]
        if first.mode == "zero":
            new = torch.zeros_like(act)
        elif first.mode == "set":
            new = torch.full_like(act, first.value)
        elif first.mode == "scale":
            new = act * first.value
        elif first.mode == "mean":
            new = first.means.for_positions(layer, ctx.layout.modality).to(act)  # type: ignore[union-attr]
        else:
            new = ctx.source_activation(first.source, name).to(act)
        self.diff = ((act - new) * mask[..., None]).flatten(0, 1)  # [rows, m]
        self.down_out = self.down(act).flatten(0, 1)  # [rows, d]
        self.mid = replay.cache[f"blocks.{layer}.hook_resid_mid"]
        self.width = act.shape[-1]
        for c in configs:
            if c.neurons is not None and (not c.neurons or max(c.neurons) >= self.width or min(c.neurons) < -self.width):
                raise IndexError(f"sweep: neurons {c.neurons} out of range 0..{self.width - 1}.")

    def logits(self, which: range, positions: Tensor | None = None) -> Tensor:
        cfgs = [self.configs[i] for i in which]
        sets = [list(range(self.width)) if c.neurons is None else [j % self.width for j in c.neurons] for c in cfgs]
        k = max(len(s) for s in sets)
        idx = torch.zeros(len(sets), k, dtype=torch.long)
        valid = torch.zeros(len(sets), k, dtype=torch.bool)
        for i, s in enumerate(sets):
            idx[i, : len(s)] = torch.tensor(s)
            valid[i, : len(s)] = True
        coef = self.diff[:, idx].permute(1, 0, 2) * valid[:, None, :]  # [n, rows, k]
        down = lowrank_update(self.down_out, coef, self.down.weight, idx.to(self.diff.device))
        b, s, d = self.mid.shape
        down = down.view(len(cfgs) * b, s, d)
        mlp_out = down if self.after_down is None else self.after_down(down)
        h = self.mid.repeat(len(cfgs), 1, 1) + mlp_out
        return self.replay.run(h, self.layer, positions)


def _fingerprint(model: "HookedMLLM", inputs: dict[str, Any], clean: Tensor) -> str:
    """What a checkpoint's values depend on besides the configs: model, inputs, metric."""
    h = hashlib.sha256()
    h.update(model.cfg.architecture.encode())
    h.update(str(sum(p.numel() for p in model.hf_model.parameters())).encode())
    for k in sorted(inputs):
        if torch.is_tensor(inputs[k]):
            h.update(k.encode() + inputs[k].detach().cpu().numpy().tobytes())
    h.update(f"{clean.tolist()!r}".encode())
    return h.hexdigest()


def _load(path: str, fingerprint: str) -> dict[str, Tensor]:
    if not os.path.exists(path):
        return {}
    data = torch.load(path, weights_only=True)
    if data.get("fingerprint") != fingerprint:
        raise ValueError(
            f"checkpoint {path} was written for another model, inputs or metric: delete it, "
            "or pass another checkpoint path."
        )
    return dict(zip(data["keys"], data["values"]))


def _save(path: str | None, done: dict[str, Tensor], fingerprint: str) -> None:
    if path is None:
        return
    tmp = f"{path}.tmp"
    torch.save({"fingerprint": fingerprint, "keys": list(done), "values": list(done.values())}, tmp)
    os.replace(tmp, path)
