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
from hooks_mm.sweep.kernels import lowrank_update, lowrank_update_torch
from hooks_mm.sweep.metrics import PositionMetric, check_metric_batch
from hooks_mm.sweep.precision import call_in, cast, check_replay_dtype, noise_floor
from hooks_mm.sweep.replay import Replay
from hooks_mm.sweep.suffix import first_changed

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

    ``batch_size``: configs packed per forward (default: as many as ``max_memory`` bytes hold beside the recorded
    clean run, ``meta["held_bytes"]``; a budget the record alone fills is refused);
    ``method``: "auto" (fast path where it applies), "fast" (error where it does not),
    "naive" (one intervention forward per config, the TransformerLens way);
    ``suffix``: replay only the positions an ablation can change (:mod:`hooks_mm.sweep.suffix`);
    ``replay_dtype``: run the replayed layers in this dtype (e.g. float32 for a bf16 model), deltas taken
    against the clean run replayed the same way (:mod:`hooks_mm.sweep.precision`).
    """

    def __init__(
        self,
        batch_size: int | None = None,
        max_memory: int = 2 << 30,
        method: str = "auto",
        suffix: bool = True,
        replay_dtype: torch.dtype | None = None,
    ):
        if method not in ("auto", "fast", "naive"):
            raise ValueError(f"method {method!r} is not one of 'auto', 'fast', 'naive'.")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size={batch_size!r}: give a positive int (configs per forward), or None.")
        if not isinstance(suffix, bool):
            raise TypeError(f"suffix={suffix!r}: pass True (replay only what can change) or False (every position).")
        self.batch_size, self.max_memory, self.method, self.suffix = batch_size, max_memory, method, suffix
        self.replay_dtype = replay_dtype

    def start(
        self, model: HookedMLLM, batch: Batch, metric: Callable[[Tensor], Tensor], sources: dict[str, Any] | None
    ) -> bytes:
        check_metric_batch(metric, batch)
        model_dtype = next(model.decoder_layers[0].parameters()).dtype
        self.upcast = check_replay_dtype(self.replay_dtype, model_dtype, self.method)  # None: the model's dtype
        self.noisy = self.upcast is not None or torch.finfo(model_dtype).eps > torch.finfo(torch.float32).eps
        b, s = batch.shape
        per = bytes_per_config(model, b, s, all_logits=not isinstance(metric, PositionMetric))
        if per > self.max_memory:
            raise MemoryError(
                f"max_memory={self.max_memory / 2**20:.1f} MiB is too small for one config on this batch "
                f"(~{per / 2**20:.1f} MiB each): raise max_memory or use a smaller batch."
            )
        self.model, self.batch, self.metric, self.sources = model, batch, metric, sources
        self.replay = Replay(model, batch, self.suffix) if self.method != "naive" else None
        self.held = self.replay.held_bytes() if self.replay is not None else 0  # kept for the whole sweep
        if self.batch_size is None and self.held + per > self.max_memory:
            raise MemoryError(
                f"max_memory={self.max_memory / 2**20:.1f} MiB cannot hold the recorded clean run "
                f"(~{self.held / 2**20:.1f} MiB: residuals, logits, keys / values) and one config (~{per / 2**20:.1f} "
                f"MiB): raise max_memory to at least {(self.held + per) / 2**20:.0f} MiB, use a smaller batch, "
                "or pass batch_size= to size the packing yourself."
            )
        self.chunk = self.batch_size or max(1, min(256, (self.max_memory - self.held) // per))
        clean_logits = self.replay.logits if self.replay is not None else model(batch)
        if isinstance(metric, PositionMetric):
            metric.bind(batch, clean_logits, model)
        self.clean = metric_value(metric, clean_logits, None)
        self.counts = {"fast": 0, "naive": 0}
        self.replayed: list[dict[str, Any]] = []  # per fast group: layer, positions replayed above it, configs
        self.noise: dict[str, Any] | str = (
            "not measured: method='naive' (no replay)"
            if self.method == "naive"
            else "not measured: no fast-path config"
            if self.noisy
            else "not measured: a float32 model (rounding ~1e-7) without replay_dtype"
        )
        replay = f"|replay {self.upcast}" if self.upcast is not None else ""  # other values: a checkpoint differs
        return f"{model.cfg.architecture}|{weights_digest(model.hf_model)}{replay}".encode()

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, Tensor] | None]:
        configs = [(i, spec) for i, spec in jobs if spec is not None]
        groups, naive = self._partition(configs)
        if len(configs) < len(jobs):
            yield -1, self.clean
        metric, batch, chunk = self.metric, self.batch.shape[0], self.chunk
        positional = isinstance(metric, PositionMetric)
        for group in groups:
            fast = FastGroup(
                self.model,
                self.replay,  # type: ignore[arg-type]
                self.batch,
                [spec for _, spec in group],
                self.sources,
                metric.positions if positional else None,
                self.upcast,
            )
            if not fast.verified:  # the replay does not reproduce the clean run here: plain forwards
                naive.extend(self._demote(group))
                continue
            at = metric.at if positional else metric
            pos = metric.positions if positional else None
            # in another dtype, deltas are taken against the clean run replayed the same way from this layer
            base = None if self.upcast is None else metric_value(at, fast.base(pos), self.clean.shape)
            if self.noisy and isinstance(self.noise, str):
                try:
                    self.noise = self._noise([spec for _, spec in group[:8]], pos)
                except (RuntimeError, NotImplementedError, TypeError) as e:  # e.g. an attention kernel without float64
                    self.noise = f"not measured: the float64 replay failed ({type(e).__name__}: {str(e)[:120]})"
            replayed = self.batch.shape[1] - fast.start
            where = repr(group[0][1].positions)
            self.replayed.append({"layer": fast.layer, "positions": where, "replayed": replayed, "configs": len(group)})
            for s in range(0, len(group), chunk):
                ids = group[s : s + chunk]
                logits = fast.logits(range(s, s + len(ids)), pos)
                for j, (i, _) in enumerate(ids):
                    value = metric_value(at, logits[j * batch : (j + 1) * batch], self.clean.shape)
                    yield i, value if base is None else self.clean + (value - base)
                    self.counts["fast"] += 1
                yield SAVE
        for n, (i, spec) in enumerate(naive, 1):
            logits = self.model.run_with_interventions(self.batch, spec, sources=self.sources)
            yield i, metric_value(metric, logits, self.clean.shape)
            self.counts["naive"] += 1
            if n % chunk == 0:
                yield SAVE

    def meta(self) -> dict[str, Any]:
        """Counts; ``seq_len``; ``replayed``: per group of fast-path configs (same layer and positions), the
        ``layer``, the ablated ``positions``, the positions ``replayed`` in the layers above it and the
        number of ``configs``; ``suffix``: "on" (suffix reuse works on this model and inputs), or "off: why";
        ``replay_dtype``; ``noise_floor``: the largest |delta - float64 delta| over a sample of configs (at
        least the metric's float32 resolution), measured for a model below float32 or with ``replay_dtype``
        (else None), with details in ``noise`` (median and max, as reported and in the model's dtype)."""
        replay = self.replay
        suffix = "off: method='naive'" if replay is None else replay.suffix_off or "on"
        noise = self.noise
        floor = noise["floor"] if isinstance(noise, dict) else None
        return {
            "chunk": self.chunk,
            "held_bytes": self.held,
            **self.counts,
            "seq_len": self.batch.shape[1],
            "replayed": self.replayed,
            "suffix": suffix,
            "replay_dtype": str(self.upcast or next(self.model.decoder_layers[0].parameters()).dtype),
            "noise_floor": floor,
            "noise": noise,
        }

    def _noise(self, specs: list[NeuronAblation], positions: Tensor | None) -> dict[str, Any]:
        """Deltas of ``specs`` (one fast group) as reported, in the model's dtype and in float64
        (:func:`~hooks_mm.sweep.precision.noise_floor`)."""
        at = self.metric.at if isinstance(self.metric, PositionMetric) else self.metric
        b, shape = self.batch.shape[0], self.clean.shape

        def deltas(dtype: torch.dtype | None) -> Tensor:
            fast = FastGroup(self.model, self.replay, self.batch, specs, self.sources, positions, dtype)  # type: ignore[arg-type]
            logits = fast.logits(range(len(specs)), positions)
            values = torch.stack([metric_value(at, logits[j * b : (j + 1) * b], shape) for j in range(len(specs))])
            return values - (self.clean if dtype is None else metric_value(at, fast.base(positions), shape))

        return {**noise_floor(deltas, self.upcast, self.clean), "layer": specs[0].layers}

    def _demote(self, group: list[tuple[int, Intervention]]) -> list[tuple[int, Intervention]]:
        """Configs whose replay does not verify, for plain forwards (an error where those are not wanted)."""
        i, spec = group[0]
        why = (
            f"config {i} ({json.dumps(spec.to_dict())[:120]}): the replay of its layer does not reproduce the clean run"
        )
        if self.upcast is not None:
            raise ValueError(f"replay_dtype={self.upcast} replays only fast-path configs; {why}: drop replay_dtype.")
        if self.method == "fast":
            raise ValueError(f"method='fast' cannot run {why}: use method='auto'.")
        return group

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
                if self.upcast is not None:
                    raise ValueError(
                        f"replay_dtype={self.upcast} replays only fast-path configs (single-layer neuron ablations on "
                        f"mlp.hook_post whose replay verifies), and config {i} ({json.dumps(spec.to_dict())[:120]}) "
                        "would run as a plain forward in the model's dtype: sweep it without replay_dtype."
                    )
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
        if replay.verified.get(layer) is False:  # the replay of this layer was checked and does not hold
            return None
        d = spec.to_dict()
        d.pop("neurons")
        return json.dumps(d, sort_keys=True) + f"|{layer}|{id(spec.means)}"


class FastGroup:
    """Configs that differ only in their neuron sets: shared clean tensors, packed suffix.

    ``dtype``: the replay's (default the model's; float32 for a bf16 model: see
    :mod:`hooks_mm.sweep.precision`)."""

    def __init__(
        self,
        model: HookedMLLM,
        replay: Replay,
        batch: Batch,
        configs: list[NeuronAblation],
        sources: dict[str, Any] | None,
        positions: Tensor | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.model, self.replay, self.configs = model, replay, configs
        self.dtype = dtype = dtype or replay.dtype
        own = dtype == replay.dtype
        # the spec's own op on every neuron: act - op(act) is each neuron's change at the ablated positions
        ctx = Context(model, batch, sources)
        [edit] = dataclasses.replace(configs[0], neurons=None).edits(ctx)
        store = ctx.read_sources({})
        act = cast(replay.cache[edit.hook], dtype)
        self.layer = int(edit.hook.split(".")[1])
        self.width = act.shape[-1]
        a = model.adapter
        block = model.decoder_layers[self.layer]
        self.down = block.get_submodule(a.mlp).get_submodule(a.down)
        after = None if a.mlp_out == a.mlp else block.get_submodule(a.mlp_out)
        self.after_down = None if after is self.down else after  # OPT: mlp_out is fc2, the down linear itself
        diff = act - apply(act, edit.op, store)
        # suffix reuse: positions before the first that can change are the clean run's in every layer above
        first = first_changed(diff)
        first = act.shape[1] - 1 if first is None else first
        if positions is not None:  # the metric reads these: they must be replayed
            first = min(first, int(positions.min()))
        start = replay.suffix_start(self.layer, first)
        # verified: the clean run replayed the way these configs are replayed gives the model's clean logits
        self.start = start if start and replay.verify_suffix(self.layer, start) else 0
        if self.start == 0 and self.layer not in replay.verified:
            replay.verified[self.layer] = replay.verify(self.layer)
        self.verified = self.start > 0 or replay.verified[self.layer]
        act = act[:, self.start :]
        self.diff = diff[:, self.start :].flatten(0, 1)  # [rows, m]
        self.down_out = (self.down(act) if own else call_in(self.down, dtype, act)).flatten(0, 1)  # [rows, d]
        self.mid = cast(replay.cache[f"blocks.{self.layer}.hook_resid_mid"][:, self.start :], dtype)

    def _mlp_out(self, down: Tensor) -> Tensor:
        if self.after_down is None:
            return down
        return self.after_down(down) if self.dtype == self.replay.dtype else call_in(self.after_down, self.dtype, down)

    def base(self, positions: Tensor | None = None) -> Tensor:
        """Logits of the clean run replayed the way the configs are (the baseline of their deltas)."""
        h = self.mid + self._mlp_out(self.down_out.view(self.mid.shape))
        return self.replay.run(h, self.layer, positions, self.start)

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
        update = lowrank_update_torch if self.dtype == torch.float64 else lowrank_update
        down = update(self.down_out, coef, self.down.weight, idx)
        b, s, d = self.mid.shape
        h = self.mid.repeat(len(cfgs), 1, 1) + self._mlp_out(down.view(len(cfgs) * b, s, d))
        return self.replay.run(h, self.layer, positions, self.start)


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
    suffix: bool = True,
    replay_dtype: torch.dtype | None = None,
    checkpoint: str | None = None,
    progress: bool | None = None,
    sources: dict[str, Any] | None = None,
    backend: SweepBackend | None = None,
) -> SweepResult:
    """Run every config on ``inputs``; a table of ``metric`` per config.

    ``batch_size``, ``max_memory``, ``method``, ``suffix``, ``replay_dtype``: the local backend's
    options (see :class:`HooksSweep`); ``checkpoint``: a file where finished configs are saved after every
    chunk, so an interrupted sweep resumes from there when called again with the same file.
    ``backend``: another backend, e.g. ``hooks_mm.remote.NNsightSweep(remote=URL)`` to run
    the same configs through nnsight on an NDIF server. ``progress``: a bar over the configs (None:
    automatic: in a notebook or on a terminal, see :mod:`hooks_mm.progress`).
    """
    if backend is None:
        backend = HooksSweep(batch_size, max_memory, method, suffix, replay_dtype)
    elif replay_dtype is not None:
        raise ValueError(
            f"replay_dtype={replay_dtype} is an option of the local backend: pass it as HooksSweep(replay_dtype=...), "
            f"not with backend={type(backend).__name__}(...)."
        )
    elif not hasattr(backend, "run") or not hasattr(backend, "start"):
        raise TypeError(
            f"backend={backend!r} is not a sweep backend: pass HooksSweep(...) or "
            "hooks_mm.remote.NNsightSweep(remote=...)."
        )
    return run_sweep(backend, model, inputs, configs, metric, checkpoint=checkpoint, progress=progress, sources=sources)
