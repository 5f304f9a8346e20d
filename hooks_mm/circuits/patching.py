"""Exact edge patching (path patching through the hook tree): run the model with chosen edges u -> v patched.

The residual stream at each reading point is a sum of what the graph's sources add (input nodes: the
embeddings at their positions, ``blocks.0.hook_resid_pre``; heads: per-head outputs through ``o_proj`` and the
family's post-norm, :func:`hooks_mm.model.branches.head_parts`; MLPs: ``hook_mlp_out``) plus constants. A reader
(the heads of layer ``l``: ``resid_pre``, shared by the layer's heads; the MLP of ``l``: ``resid_mid``; the logit:
the final residual) reads, in the patched run,

    in(v) = this run's residual + sum over PATCHED edges u -> v of (a_corr(u) - a_this(u)),

so v sees u's corrupted output on patched edges and u's output in this run (itself possibly affected upstream)
on the others. The edit is applied where v reads it and taken back after (``resid_pre`` +D_attn, ``resid_mid``
-D_attn +D_mlp, next ``resid_pre`` -D_mlp +D_attn, ..., the last ``resid_post`` -D_mlp +D_logit), so the stream
itself keeps each source's own contribution. Patching every edge gives the corrupted run, none the clean run.

Refused, naming the fix: parallel blocks (attention and MLP read one input), layers without per-head outputs
(cross-attention, linear attention, mixture-of-experts MLPs are fine as whole-MLP nodes), injections between
blocks (Qwen3-VL deepstack), branch bias parts that differ between the runs (a post-LayerNorm on the attention
output), and corrupted inputs that differ at positions no input node covers.

Example::

    sources = [Source("input", -1, mask=image_mask), Source("head", 0, 1), Source("mlp", 0)]
    readers = [Reader("attn", 1), Reader("logit", model.cfg.n_layers)]
    patched = torch.zeros(2, 3, dtype=torch.bool); patched[1, 2] = True    # patch L0.MLP -> logit only
    logits = edge_patched_logits(model, clean, corrupted, sources, readers, patched)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from hooks_mm.circuits.eap import check_corrupted
from hooks_mm.circuits.passes import ablate_inputs
from hooks_mm.model.branches import attn_branch, head_parts

if TYPE_CHECKING:
    from hooks_mm.model import Batch, HookedMLLM

KINDS = ("input", "head", "mlp")
READS = ("attn", "head", "mlp", "logit")


@dataclass(frozen=True, eq=False)
class Source:
    """What one node adds to the residual stream: ``kind`` "input" (the embeddings, ``layer`` -1), "head"
    (``layer``, ``head``) or "mlp" (``layer``); ``mask`` [batch, pos] (bool): only these positions (None: all)."""

    kind: str
    layer: int
    head: int | None = None
    mask: Bool[Tensor, "batch pos"] | None = None


@dataclass(frozen=True, eq=False)
class Reader:
    """Where a node reads the residual: "attn" (``resid_pre`` of ``layer``, shared by its heads), "mlp"
    (``resid_mid``), "logit" (the final residual, ``layer`` = n_layers); ``mask``: only these positions."""

    kind: str
    layer: int
    head: int | None = None
    mask: Bool[Tensor, "batch pos"] | None = None


def precedes(s: Source, r: Reader) -> bool:
    """Whether ``s``'s output is in the residual ``r`` reads (an edge s -> r can exist)."""
    if r.kind == "logit" or s.kind == "input":
        return True
    if r.kind in ("attn", "head"):
        return s.layer < r.layer
    return s.layer < r.layer or (s.layer == r.layer and s.kind == "head")


def check_model(model: HookedMLLM) -> None:
    """Raise when this family's blocks do not have the residual decomposition edge patching relies on."""
    cfg, a = model.cfg, model.adapter
    what = None
    if a.parallel:
        what = "parallel blocks (attention and MLP read the same input, so an MLP edge and a head edge cannot differ)"
    elif a.out_scale:
        what = f"blocks that scale their whole output, residual included, by {a.out_scale}"
    elif cfg.injection_layers:
        what = f"injections between blocks at layers {cfg.injection_layers} (Qwen3-VL deepstack), in no graph node"
    elif cfg.cross_attn_layers or cfg.mixer_layers:
        what = "cross-attention / linear-attention layers (no per-head outputs)"
    if what is not None:
        raise NotImplementedError(
            f"exact edge patching of a {cfg.architecture}: {what} are not supported; use node-level patching "
            "(hooks_mm.interventions.Patch on hook_attn_out / hook_mlp_out) for this family instead."
        )
    for l in range(cfg.n_layers):
        attn_branch(model, l)  # raises naming the layer when its heads have no separate outputs


def _names(model: HookedMLLM) -> list[str]:
    n = model.cfg.n_layers
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.{h}" for l in range(n) for h in ("attn.hook_z", "hook_mlp_out")]


def _mask(m: Tensor | None, x: Tensor) -> Tensor:
    return x if m is None else x * m.to(x.device, x.dtype)[..., None]


class Outputs:
    """Each source's output [batch, pos, d_model] in one run, filled as the run goes (from its hooks or a cache)."""

    def __init__(self, model: HookedMLLM, sources: list[Source]):
        self.model, self.sources = model, sources
        self.values: dict[int, Tensor] = {}
        self.bias: dict[int, Tensor] = {}  # per layer: the attention branch's bias part (o_proj bias, post-norm)

    def record(self, name: str, x: Tensor) -> None:
        parts = name.split(".")
        if name == "blocks.0.hook_resid_pre":
            for i, s in enumerate(self.sources):
                if s.kind == "input":
                    self.values[i] = _mask(s.mask, x)
            return
        l = int(parts[1])
        if name.endswith("hook_z"):
            heads, self.bias[l] = head_parts(self.model, l, x)
            for i, s in enumerate(self.sources):
                if s.kind == "head" and s.layer == l:
                    self.values[i] = _mask(s.mask, heads[..., s.head, :])
        else:
            for i, s in enumerate(self.sources):
                if s.kind == "mlp" and s.layer == l:
                    self.values[i] = _mask(s.mask, x)

    @classmethod
    def of_run(
        cls, model: HookedMLLM, batch: Batch, sources: list[Source], ablate: str | None = None
    ) -> tuple[Outputs, Tensor, Tensor]:
        """The sources' outputs in a run of ``batch`` (its input sources ``ablate``d: "zero" / "mean"), with its
        logits and embeddings."""
        hooks = []
        if ablate is not None:
            masks = [torch.ones(batch.shape, dtype=torch.bool) if s.mask is None else s.mask for s in sources]
            inputs = [m for m, s in zip(masks, sources) if s.kind == "input"]
            hooks = [("blocks.0.hook_resid_pre", ablate_inputs(ablate, inputs))]
        with model.hooks(fwd_hooks=hooks):
            logits, cache = model.run_with_cache(batch, names_filter=_names(model))
        out = cls(model, sources)
        for name in _names(model):
            out.record(name, cache[name])
        return out, logits, cache["blocks.0.hook_resid_pre"]


@dataclass
class Prepared:
    """The corrupted run's outputs and the checks of one (model, clean, corrupted, sources) set."""

    clean: Batch
    corrupted: Batch | str  # or the ablation of the input sources: "zero" / "mean"
    sources: list[Source]
    corr: Outputs
    clean_logits: Tensor
    corrupted_logits: Tensor


def prepare(model: HookedMLLM, clean: Any, corrupted: Any, sources: list[Source]) -> Prepared:
    """Check the model, the batches and the sources, and run the clean and corrupted runs once. ``corrupted``: a
    batch of the clean one's layout, or "zero" / "mean": the clean batch with each input source's embeddings
    replaced by zeros / their mean over its positions (as :func:`~hooks_mm.circuits.eap_graph` does)."""
    check_model(model)
    clean = model.prepare(clean)
    corrupted = check_corrupted(model, clean, corrupted)  # a batch of the same layout, or "zero" / "mean"
    n, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for s in sources:
        if s.kind not in KINDS:
            raise ValueError(f"source kind {s.kind!r}: give one of {KINDS}.")
        if s.kind != "input" and not 0 <= s.layer < n:
            raise IndexError(f"source {s.kind} at layer {s.layer}: this model has layers 0..{n - 1}.")
        if s.kind == "head" and not (isinstance(s.head, int) and 0 <= s.head < n_heads):
            raise IndexError(f"source head {s.head} at layer {s.layer}: this model has heads 0..{n_heads - 1}.")
        if s.mask is not None and tuple(s.mask.shape) != clean.shape:
            raise ValueError(
                f"a {s.kind} source's position mask has shape {tuple(s.mask.shape)}, the batch {clean.shape}: the "
                "graph was built for another batch; build it for this one."
            )
    with torch.no_grad():
        ablate = corrupted if isinstance(corrupted, str) else None
        corr, corrupted_logits, corr_embed = Outputs.of_run(model, clean if ablate else corrupted, sources, ablate)
        this, clean_logits, clean_embed = Outputs.of_run(model, clean, sources)
    covered = torch.zeros(clean.shape, dtype=torch.bool, device=clean_embed.device)
    for s in sources:
        if s.kind == "input":
            covered |= torch.ones_like(covered) if s.mask is None else s.mask.to(covered.device)
    gap = ((corr_embed - clean_embed).abs().amax(-1) * ~covered).max().item()
    if gap > 0:
        raise ValueError(
            f"the corrupted embeddings differ from the clean ones (max {gap:.3g}) at positions no input node covers: "
            "their change would be in no edge; build the graph with input nodes over every position that differs."
        )
    for l in corr.bias:
        gap = (corr.bias[l] - this.bias[l]).abs().max().item()
        if gap > 1e-6 * max(1.0, this.bias[l].abs().max().item()):
            raise NotImplementedError(
                f"layer {l}'s attention bias part (o_proj bias through the post-norm) differs between the clean and "
                f"corrupted runs (max {gap:.3g}): it belongs to no head, so edge patching could not be exact; this "
                "family is not supported by exact edge patching (use node-level patching instead)."
            )
    return Prepared(clean, corrupted, sources, corr, clean_logits, corrupted_logits)


def _projection(model: HookedMLLM, layer: int, key: str) -> nn.Linear:
    a = model.adapter
    path = getattr(a, key)
    mod = None if path is None else model.attention(layer).get_submodule(path)
    if a.qkv is not None or a.q_gated or a.flat or not isinstance(mod, nn.Linear) or a.ln1 is None:
        raise NotImplementedError(
            f"per-head inputs (edges into single heads) need separate q / k / v linear projections after one norm; "
            f"{model.cfg.architecture} ({a.backbone.name} row) has fused, gated or missing ones: read the heads of a "
            "layer as one node (Reader('attn', layer)) instead."
        )
    return mod


def _check_readers(model: HookedMLLM, prep: Prepared, readers: list[Reader], patched: Tensor) -> None:
    sources, n, cfg = prep.sources, model.cfg.n_layers, model.cfg
    if tuple(patched.shape) != (len(readers), len(sources)) or patched.dtype != torch.bool:
        raise ValueError(
            f"patched must be a bool tensor [reader, source] = ({len(readers)}, {len(sources)}), got "
            f"{tuple(patched.shape)} {patched.dtype}."
        )
    groups: dict[tuple[int, int], list[int]] = {}
    per_group = cfg.n_heads // cfg.n_key_value_heads
    for r, rd in enumerate(readers):
        if rd.kind not in READS:
            raise ValueError(f"reader kind {rd.kind!r}: give one of {READS}.")
        top = n if rd.kind == "logit" else n - 1
        if not 0 <= rd.layer <= top or (rd.kind == "logit" and rd.layer != n):
            raise IndexError(f"reader {rd.kind} at layer {rd.layer}: give 0..{n - 1} (the logit: {n}).")
        if rd.mask is not None and tuple(rd.mask.shape) != prep.clean.shape:
            raise ValueError(
                f"a {rd.kind} reader's mask has shape {tuple(rd.mask.shape)}, the batch {prep.clean.shape}."
            )
        bad = [s for s in patched[r].nonzero().flatten().tolist() if not precedes(sources[s], rd)]
        if bad:
            s = sources[bad[0]]
            raise ValueError(
                f"edge {s.kind} L{s.layer} -> {rd.kind} L{rd.layer}: the source comes after the reader, so there is "
                "no such edge; patch only edges from earlier nodes."
            )
        if rd.kind == "head":
            if not (isinstance(rd.head, int) and 0 <= rd.head < cfg.n_heads):
                raise IndexError(f"reader head {rd.head} at layer {rd.layer}: give 0..{cfg.n_heads - 1}.")
            for key in ("q", "k", "v"):
                _projection(model, rd.layer, key)
            groups.setdefault((rd.layer, rd.head // per_group), []).append(r)
    for (layer, g), rs in groups.items():
        if per_group == 1 or not any(patched[r].any() for r in rs):
            continue
        first = readers[rs[0]]
        if len(rs) != per_group or not all(
            torch.equal(patched[r], patched[rs[0]]) and _same_mask(readers[r].mask, first.mask) for r in rs
        ):
            heads = list(range(g * per_group, (g + 1) * per_group))
            raise NotImplementedError(
                f"heads {heads} of layer {layer} share one key / value head (grouped-query attention) but do not have "
                "the same patched edges: their keys and values cannot see different inputs; patch their edges "
                "together (or read the layer's heads as one node, Reader('attn', layer))."
            )


def _same_mask(a: Tensor | None, b: Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def edge_patched_logits(
    model: HookedMLLM, prep: Prepared, readers: list[Reader], patched: Bool[Tensor, "reader source"]
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of the clean batch with every edge ``sources[s] -> readers[r]`` where ``patched[r, s]`` patched to
    its corrupted value (module docstring). ``prep``: :func:`prepare`'s value for these sources.

    Example::

        prep = prepare(model, clean, corrupted, sources)
        logits = edge_patched_logits(model, prep, readers, patched)
    """
    _check_readers(model, prep, readers, patched)
    n, a = model.cfg.n_layers, model.adapter
    at: dict[tuple[str, int], list[int]] = {}
    for r, rd in enumerate(readers):
        point = {"attn": "pre", "head": "head", "mlp": "mlp", "logit": "pre"}[rd.kind]
        at.setdefault((point, rd.layer), []).append(r)
    this = Outputs(model, prep.sources)
    carried: list[Tensor | float] = [0.0]
    heads_in: dict[int, Tensor] = {}  # per head of the current layer: its input, where it differs

    def delta(r: int, like: Tensor) -> Tensor | None:
        rows = patched[r].nonzero().flatten().tolist()
        if not rows:
            return None
        d = sum(prep.corr.values[s] - this.values[s] for s in rows)
        return _mask(readers[r].mask, d.to(like))

    def shared(point: tuple[str, int], like: Tensor) -> Tensor | float:
        total: Tensor | float = 0.0
        for r in at.get(point, []):
            d = delta(r, like)
            total = total if d is None else total + d
        return total

    def edit(point: tuple[str, int], first: bool = False) -> Any:
        def fn(x: Tensor, hook: Any) -> Tensor:
            if first:
                this.record(hook.name, x)
            d = shared(point, x)
            out = x - carried[0] + d
            carried[0] = d
            if point[0] == "pre" and point[1] < n:  # the heads of this layer that read their own input
                heads_in.clear()
                for r in at.get(("head", point[1]), []):
                    d = delta(r, x)
                    if d is not None:
                        heads_in[readers[r].head] = out + d  # type: ignore[index]
            return out

        return fn

    def project(layer: int, key: str) -> Any:
        lin = _projection(model, layer, key)
        norm = model.decoder_layers[layer].get_submodule(a.ln1)

        def fn(x: Tensor, hook: Any) -> Tensor:
            if not heads_in:
                return x
            x = x.clone()
            dh = x.shape[-1]
            for h, inp in heads_in.items():
                j = h if key == "q" else h // (model.cfg.n_heads // model.cfg.n_key_value_heads)
                w = lin.weight[j * dh : (j + 1) * dh]
                b = None if lin.bias is None else lin.bias[j * dh : (j + 1) * dh]
                x[..., j, :] = torch.nn.functional.linear(norm(inp), w, b).to(x.dtype)
            return x

        return fn

    def record(x: Tensor, hook: Any) -> None:
        this.record(hook.name, x)

    hooks: list[tuple[str, Any]] = [("blocks.0.hook_resid_pre", edit(("pre", 0), first=True))]
    for l in range(n):
        if l:
            hooks.append((f"blocks.{l}.hook_resid_pre", edit(("pre", l))))
        if ("head", l) in at:
            hooks += [(f"blocks.{l}.attn.hook_{key}", project(l, key)) for key in ("q", "k", "v")]
        hooks += [(f"blocks.{l}.attn.hook_z", record), (f"blocks.{l}.hook_resid_mid", edit(("mlp", l)))]
        hooks.append((f"blocks.{l}.hook_mlp_out", record))
    hooks.append((f"blocks.{n - 1}.hook_resid_post", edit(("pre", n))))
    with torch.no_grad():
        return model.run_with_hooks(prep.clean, fwd_hooks=hooks)
