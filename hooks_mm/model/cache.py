"""The cache ``run_with_cache`` returns: TransformerLens's ActivationCache with its analyses on every family.

TransformerLens's signatures and semantics, on the family's own blocks and norms (nothing is folded: our
``W_U`` is the HF head's weight):

- ``apply_ln_to_stack(stack, layer)``: each component through the norm that reads the residual there (``layer``
  None / -1 / n_layers: the final norm; ``layer=l``: block ``l``'s first norm, ``mlp_input=True``: its second),
  as ``w * centre(c) / s``: ``s`` is that norm's scale on the REAL residual at that point (from the cache), ``w``
  the norm's weight (Gemma: ``1 + w``), ``centre`` subtracts each component's mean (LayerNorm only). The norm's
  bias (LayerNorm) is in no component: :meth:`MLLMCache.norm_bias`. So for a stack summing to the residual,
  ``apply_ln_to_stack(stack).sum(0) + cache.norm_bias() == ln_final.hook_normalized`` and
  ``... @ model.W_U + model.b_U`` are the logits before the head's post-processing (soft-capping, Granite's
  ``logits_scaling``).
- ``decompose_resid``: ``embed`` (= ``blocks.0.hook_resid_pre``: the token embeddings with media features
  written and anything the decoder adds before block 0), then ``hook_attn_out`` / ``hook_mlp_out`` per layer and
  Qwen3-VL's deepstack injections (``{l}_deepstack``): they sum to ``hook_resid_pre`` of ``layer`` (the final
  norm's input for the last layer).
- ``stack_head_results``: per-head outputs ``z_h @ W_O[h]`` through the branch's post-norm (scale frozen at its
  value on the real total) and multiplier (:mod:`hooks_mm.model.branches`); the ``o`` projection's bias is the
  ``bias`` row of ``get_full_resid_decomposition``, so heads + bias == ``hook_attn_out``.
- ``get_full_resid_decomposition``: heads, neurons (or MLP outputs), ``embed``, deepstack, ``bias``: they sum to
  the residual at ``layer`` (a layer without heads / neurons is one whole-layer row).
- ``logit_attrs``: ``apply_ln_to_stack(stack) @ W_U[:, token]`` (minus the incorrect token's): summed over a full
  decomposition, the logit minus ``b_U`` and the norm bias's part.

A ``pos=`` cache holds the kept positions only: every analysis is per position, so it works on them
(``pos_slice`` then indexes the kept positions).

Example::

    logits, cache = model.run_with_cache(batch)
    stack, labels = cache.get_full_resid_decomposition(expand_neurons=False, return_labels=True)
    dla = cache.logit_attrs(stack, tokens=answer_ids)          # [component, batch, pos]
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice, get_act_name

from hooks_mm.model.branches import attn_branch, has_heads, has_neurons, head_parts, mlp_branch, neuron_parts
from hooks_mm.model.directions import project
from hooks_mm.model.norms import NormForm, norm_form
from hooks_mm.model.readout import Readout

Stack = Float[Tensor, "component *batch_and_pos d_model"]


def _slice(s: Any) -> Slice:
    return s if isinstance(s, Slice) else Slice(s)


class MLLMCache(Readout, ActivationCache):
    """TransformerLens's ActivationCache whose analyses follow the wrapped family's blocks (module docstring)."""

    positions: Tensor | None = None  # pos= caches: [batch, n] kept positions (-1 in a ragged row's padding)
    position_mask: Tensor | None = None  # pos= caches: [batch, n] True where a slot holds a real position

    def __repr__(self) -> str:  # issue 20: names, shapes, dtypes (hooks_mm/vis/display.py)
        from hooks_mm.vis.display import cache_repr

        return cache_repr(self)

    def _repr_html_(self) -> str:
        from hooks_mm.vis.display import cache_html

        return cache_html(self)

    # ------------------------------------------------------------------ checks and residual points

    def _n(self) -> int:
        return self.model.cfg.n_layers

    def _layer(self, layer: Any, method: str) -> int:
        n = self._n()
        if layer is None or (layer == -1 and not isinstance(layer, bool)):
            return n
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"{method}: layer={layer!r}: give a layer index (int), -1 or None.")
        if not 0 <= layer <= n:
            raise IndexError(
                f"{method}: layer={layer} is out of range: give 0..{n} (n_layers={n}: the final residual), "
                "-1 or None (the final residual)."
            )
        return layer

    def _need(self, names: list[str], method: str) -> None:
        missing = [k for k in names if k not in self.cache_dict]
        if missing:
            suffixes = tuple(dict.fromkeys(k.split(".", 2)[2] if k.startswith("blocks.") else k for k in names))
            raise KeyError(
                f"{method} needs {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}, which this cache lacks "
                "(a names_filter or stop_at_layer left them out): run model.run_with_cache(inputs, "
                f"names_filter=lambda n: n.endswith({suffixes!r})) or with names_filter=None."
            )

    def _final_names(self) -> list[str]:
        n = self._n()
        inject = [f"blocks.{n - 1}.hook_deepstack"] if n - 1 in self.model.cfg.injection_layers else []
        return [f"blocks.{n - 1}.hook_resid_post", *inject]

    def _resid_names(self, layer: int, mlp_input: bool) -> list[str]:
        if layer == self._n():
            return self._final_names()
        return [f"blocks.{layer}.hook_resid_{'mid' if mlp_input else 'pre'}"]

    def _resid(self, layer: int, mlp_input: bool, method: str) -> Tensor:
        """The real residual read at ``layer`` (the final norm's input for ``layer == n_layers``)."""
        names = self._resid_names(layer, mlp_input)
        self._need(names, method)
        return sum(self.cache_dict[k] for k in names[1:]) + self.cache_dict[names[0]]

    def _check_mlp_input(self, layer: int, mlp_input: bool, method: str) -> None:
        if mlp_input and layer == self._n():
            raise ValueError(
                f"{method}: mlp_input=True needs a block: layer={layer} is the final residual (the unembedding "
                "reads it); pass a layer below n_layers or mlp_input=False."
            )

    def _norm(self, layer: int, mlp_input: bool, method: str) -> tuple[NormForm, Tensor]:
        """The norm that reads the residual at ``layer`` (its form checked on that residual) and the residual."""
        self._check_mlp_input(layer, mlp_input, method)
        x = self._resid(layer, mlp_input, method)
        a = self.model.adapter
        if layer == self._n():
            return norm_form(self.model.submodule(a.final_norm), x, "final"), x
        path = a.ln2 if mlp_input else a.ln1
        if path is None:
            what = "the MLP" if mlp_input else "attention"
            raise NotImplementedError(
                f"{method}: block {layer} of {self.model.cfg.architecture} has no norm before {what} "
                f"({a.backbone.name} row: {'a parallel block' if a.parallel else 'norms after each branch'}): there "
                "is no norm to apply there; use mlp_input=False / the final norm (layer=None) or apply_ln=False."
            )
        module = self.model.decoder_layers[layer].get_submodule(path)
        return norm_form(module, x, f"blocks.{layer} {'ln2' if mlp_input else 'ln1'}"), x

    # ------------------------------------------------------------------ norms

    def apply_ln_to_stack(  # type: ignore[override]
        self,
        residual_stack: Stack,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Stack:
        """Each component through the norm reading the residual at ``layer``, its scale frozen on the real
        residual there: ``w * centre(c) / s`` (module docstring; the bias is :meth:`norm_bias`).

        ``recompute_ln=True`` at the final layer runs the final norm on each component alone (the logit lens).

        Example::

            normed = cache.apply_ln_to_stack(cache.decompose_resid())   # .sum(0) + cache.norm_bias()
        """
        method = "apply_ln_to_stack"
        layer = self._layer(layer, method)
        pos_slice, batch_slice = _slice(pos_slice), _slice(batch_slice)
        if not torch.is_tensor(residual_stack) or residual_stack.dim() < 2:
            raise TypeError(f"{method} takes a stack [component, ..., d_model], not {type(residual_stack).__name__}.")
        if residual_stack.shape[-1] != self.model.cfg.d_model:
            raise ValueError(
                f"{method}: the stack's last axis is {residual_stack.shape[-1]}, not d_model={self.model.cfg.d_model}."
            )
        if has_batch_dim and self.has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        form, x = self._norm(layer, mlp_input, method)
        if recompute_ln and layer == self._n():
            dev = self.model.cfg.device  # the norm's device; the stack's may differ (run_with_cache(device=...))
            return torch.stack([self.model.apply_ln_final(c.to(dev)).to(c.device) for c in residual_stack])
        scale = pos_slice.apply(form.scale(x), dim=-2)
        if self.has_batch_dim:
            scale = batch_slice.apply(scale, dim=0)
        if tuple(residual_stack.shape[1:-1]) != tuple(scale.shape[:-1]):
            raise ValueError(
                f"{method}: the stack's [batch, pos] axes {tuple(residual_stack.shape[1:-1])} are not the cached "
                f"residual's {tuple(scale.shape[:-1])} after pos_slice / batch_slice: pass the pos_slice (and "
                "batch_slice) the stack was taken with."
            )
        return form.apply(residual_stack, scale)

    def norm_bias(self, layer: int | None = None, mlp_input: bool = False) -> Float[Tensor, " d_model"]:
        """The constant the norm at ``layer`` adds (LayerNorm's bias; zeros for RMSNorm), in no component.

        Example::

            logits = (cache.apply_ln_to_stack(stack).sum(0) + cache.norm_bias()) @ model.W_U + model.b_U
        """
        form, x = self._norm(self._layer(layer, "norm_bias"), mlp_input, "norm_bias")
        bias = form.bias_term
        return x.new_zeros(x.shape[-1]) if bias is None else bias.to(x.dtype)

    # ------------------------------------------------------------------ residual stacks

    def accumulated_resid(  # type: ignore[override]
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: Any = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Stack | tuple[Stack, list[str]]:
        """The residual at each layer's input up to ``layer`` (``final_post``: the final norm's input)."""
        method = "accumulated_resid"
        layer, pos_slice = self._layer(layer, method), _slice(pos_slice)
        self._check_mlp_input(layer, mlp_input, method)
        names, labels = [], []
        for l in range(layer + 1):
            if l == self._n():
                names.append(self._final_names())
                labels.append("final_post")
                continue
            names.append([f"blocks.{l}.hook_resid_pre"])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                names.append([f"blocks.{l}.hook_resid_mid"])
                labels.append(f"{l}_mid")
        self._need([k for group in names for k in group], method)
        parts = [pos_slice.apply(sum(self.cache_dict[k] for k in group), dim=-2) for group in names]
        stack = torch.stack(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(
                stack, layer, mlp_input, pos_slice=pos_slice, recompute_ln=layer == self._n()
            )
        return (stack, labels) if return_labels else stack

    def decompose_resid(  # type: ignore[override]
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: Any = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Stack | tuple[Stack, list[str]]:
        """What each block part added to the residual read at ``layer``: ``embed``, then per layer
        ``{l}_attn_out``, ``{l}_mlp_out`` (and ``{l}_deepstack``); mode "attn" / "mlp" keeps one kind."""
        method = "decompose_resid"
        layer, pos_slice = self._layer(layer, method), _slice(pos_slice)
        self._check_mlp_input(layer, mlp_input, method)
        if mode not in ("all", "mlp", "attn"):
            raise ValueError(f"{method}: mode={mode!r}: give 'all', 'mlp' or 'attn'.")
        entries: list[tuple[str, str]] = [("embed", "blocks.0.hook_resid_pre")] if incl_embeds else []
        for l in range(layer):
            entries += [(f"{l}_attn_out", f"blocks.{l}.hook_attn_out")] if mode != "mlp" else []
            entries += [(f"{l}_mlp_out", f"blocks.{l}.hook_mlp_out")] if mode != "attn" else []
            if mode == "all" and l in self.model.cfg.injection_layers:
                entries.append((f"{l}_deepstack", f"blocks.{l}.hook_deepstack"))
        if mlp_input and mode != "mlp":
            entries.append((f"{layer}_attn_out", f"blocks.{layer}.hook_attn_out"))
        self._need([k for _, k in entries] or ["blocks.0.hook_resid_pre"], method)
        parts = [pos_slice.apply(self.cache_dict[k], dim=-2) for _, k in entries]
        stack = torch.stack(parts) if parts else self._empty(pos_slice)
        if mode == "all" and incl_embeds:
            self._check_sum(stack, layer, mlp_input, pos_slice, method)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice)
        labels = [label for label, _ in entries]
        return (stack, labels) if return_labels else stack

    def _check_sum(self, stack: Tensor, layer: int, mlp_input: bool, pos_slice: Slice, method: str) -> None:
        """Raise when a whole decomposition does not sum to the cached residual it decomposes (a hook or
        intervention edited the residual stream itself, outside the branches: no component holds that edit)."""
        names = self._resid_names(layer, mlp_input)
        if not all(k in self.cache_dict for k in names):
            return
        want = pos_slice.apply(self._resid(layer, mlp_input, method), dim=-2)
        gap = (stack.sum(0) - want).abs().max().item()
        if gap > (1e-3 if want.dtype == torch.float32 else 5e-2) * max(1.0, want.abs().max().item()):
            raise ValueError(
                f"{method}: the components do not sum to {names[0]} (max gap {gap:.3g}): the run edited the "
                "residual stream outside the attention / MLP outputs (a hook or intervention at hook_resid_pre / "
                "hook_resid_mid / hook_resid_post, such as Steer there), which no component holds; decompose a "
                "run without that edit, or read the cached residuals (accumulated_resid)."
            )

    def _empty(self, pos_slice: Slice, width: int | None = None) -> Tensor:
        like = pos_slice.apply(self.cache_dict["blocks.0.hook_resid_pre"], dim=-2)
        return like.new_zeros(0, *like.shape[:-1], width or like.shape[-1])

    def _heads(self, l: int, pos_slice: Slice) -> tuple[Tensor, Tensor]:
        """Layer ``l``'s per-head results [..., head, d_model] and its bias part [..., d_model]."""
        z = pos_slice.apply(self.cache_dict[f"blocks.{l}.attn.hook_z"], dim=-3)
        return head_parts(self.model, l, z, self._out(l, "attn", pos_slice))

    def _neurons(self, l: int, pos_slice: Slice, keep: Slice | None = None) -> tuple[Tensor, Tensor]:
        """Layer ``l``'s per-neuron results [..., neuron, d_model] (the ``keep`` ones) and its bias part."""
        post = pos_slice.apply(self.cache_dict[f"blocks.{l}.mlp.hook_post"], dim=-2)
        return neuron_parts(self.model, l, post, keep, self._out(l, "mlp", pos_slice))

    def _out(self, l: int, kind: str, pos_slice: Slice) -> Tensor | None:
        """The cached branch output (``hook_attn_out`` / ``hook_mlp_out``) the parts are checked against."""
        out = self.cache_dict.get(f"blocks.{l}.hook_{kind}_out")
        return None if out is None else pos_slice.apply(out, dim=-2)

    def stack_head_results(  # type: ignore[override]
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: Any = None,
        apply_ln: bool = False,
    ) -> Stack | tuple[Stack, list[str]]:
        """Every head's result (``L{l}H{h}``) at layers below ``layer``: ``z_h @ W_O[h]`` through the branch's
        post-norm (frozen scale) and multiplier; the ``o`` bias is not a head (``get_full_resid_decomposition``'s
        ``bias`` row). ``incl_remainder``: the residual at ``layer`` minus the heads.

        Example::

            heads, labels = cache.stack_head_results(return_labels=True)   # [n_layers * n_heads, b, p, d_model]
        """
        method = "stack_head_results"
        layer, pos_slice = self._layer(layer, method), _slice(pos_slice)
        for l in range(layer):  # refuses cross-attention / linear-attention layers, before asking for hooks
            attn_branch(self.model, l)
        self._need([f"blocks.{l}.attn.hook_z" for l in range(layer)] or ["blocks.0.hook_resid_pre"], method)
        parts, labels = [], []
        for l in range(layer):
            heads, _ = self._heads(l, pos_slice)
            parts.append(rearrange(heads, "... h m -> h ... m"))
            labels += [f"L{l}H{h}" for h in range(heads.shape[-2])]
        stack = torch.cat(parts) if parts else self._empty(pos_slice)
        if incl_remainder:
            rest = pos_slice.apply(self._resid(layer, False, method), dim=-2) - stack.sum(0)
            stack, labels = torch.cat([stack, rest[None]]), [*labels, "remainder"]
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_activation(  # type: ignore[override]
        self, activation_name: str, layer: int = -1, sublayer_type: str | None = None
    ) -> Float[Tensor, "layers_covered ..."]:
        """``activation_name`` (``"attn.hook_z"``, or TransformerLens's short ``"z"``) of layers below ``layer``."""
        method = "stack_activation"
        layer = self._layer(layer, method)
        if "hook_" in activation_name:
            names = [f"blocks.{l}.{activation_name}" for l in range(layer)]
        else:
            names = [get_act_name(activation_name, l, sublayer_type) for l in range(layer)]
        self._need(names, method)
        return torch.stack([self.cache_dict[k] for k in names])

    # ------------------------------------------------------------------ neurons and the full decomposition

    def get_neuron_results(  # type: ignore[override]
        self, layer: int, neuron_slice: Any = None, pos_slice: Any = None, project_output_onto: Tensor | None = None
    ) -> Tensor:
        """Each neuron's result at block ``layer``: ``post[n] * W_out[n]`` through the MLP's post-norm (scale
        frozen on the whole MLP output) and multiplier: [..., neuron, d_model] (or projected)."""
        method = "get_neuron_results"
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self._n():
            raise IndexError(f"{method}: layer={layer!r}: give a block index 0..{self._n() - 1}.")
        mlp_branch(self.model, layer)
        self._need([f"blocks.{layer}.mlp.hook_post"], method)
        keep = _slice([neuron_slice] if isinstance(neuron_slice, int) else neuron_slice)
        parts, _ = self._neurons(layer, _slice(pos_slice), keep)
        return project(parts, project_output_onto)

    def stack_neuron_results(  # type: ignore[override]
        self,
        layer: int,
        pos_slice: Any = None,
        neuron_slice: Any = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
        project_output_onto: Tensor | None = None,
        mlp_input: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """Every neuron's result (``L{l}N{n}``) at layers below ``layer`` (:meth:`get_neuron_results`);
        ``incl_remainder``: the residual at ``layer`` minus them. ``project_output_onto`` is applied last."""
        method = "stack_neuron_results"
        layer, pos_slice = self._layer(layer, method), _slice(pos_slice)
        self._check_mlp_input(layer, mlp_input, method)
        for l in range(layer):  # refuses mixture-of-experts / residual-scaled MLPs, before asking for hooks
            mlp_branch(self.model, l)
        self._need([f"blocks.{l}.mlp.hook_post" for l in range(layer)] or ["blocks.0.hook_resid_pre"], method)
        parts, labels = [], []
        keep = _slice([neuron_slice] if isinstance(neuron_slice, int) else neuron_slice)
        for l in range(layer):
            n = self.cache_dict[f"blocks.{l}.mlp.hook_post"].shape[-1]
            ids = keep.apply(torch.arange(n)).tolist()
            parts.append(rearrange(self.get_neuron_results(l, keep, pos_slice), "... n m -> n ... m"))
            labels += [f"L{l}N{i}" for i in ids]
        stack = torch.cat(parts) if parts else self._empty(pos_slice)
        if incl_remainder:
            rest = pos_slice.apply(self._resid(layer, mlp_input, method), dim=-2) - stack.sum(0)
            stack, labels = torch.cat([stack, rest[None]]), [*labels, "remainder"]
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice)
        stack = project(stack, project_output_onto)
        return (stack, labels) if return_labels else stack

    def get_full_resid_decomposition(  # type: ignore[override]
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: Any = None,
        return_labels: bool = False,
        project_output_onto: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """The residual read at ``layer`` as rows that sum to it: per layer its heads (``L{l}H{h}``), then per layer
        its neurons (``L{l}N{n}``; ``expand_neurons=False``: ``{l}_mlp_out``), ``embed``, deepstack injections
        (``{l}_deepstack``) and ``bias`` (the ``o`` / ``down`` biases through their branches). A layer without
        heads (cross-attention, linear-attention / convolution) is one ``{l}_attn_out`` row, an MLP without
        neurons (mixture of experts, Gemma-4's scaled output) one ``{l}_mlp_out`` row.

        Example::

            stack, labels = cache.get_full_resid_decomposition(expand_neurons=False, return_labels=True)
            torch.testing.assert_close(stack.sum(0), cache["blocks.1.hook_resid_post"])   # a 2-layer model
        """
        method = "get_full_resid_decomposition"
        layer, pos_slice = self._layer(layer, method), _slice(pos_slice)
        self._check_mlp_input(layer, mlp_input, method)
        attn = [(l, has_heads(self.model, l)) for l in range(layer + (1 if mlp_input else 0))]
        mlp = [(l, expand_neurons and has_neurons(self.model, l)) for l in range(layer)]
        need = [f"blocks.{l}.{'attn.hook_z' if heads else 'hook_attn_out'}" for l, heads in attn]
        need += [f"blocks.{l}.{'mlp.hook_post' if neurons else 'hook_mlp_out'}" for l, neurons in mlp]
        need += [f"blocks.{l}.hook_deepstack" for l in self.model.cfg.injection_layers if l < layer]
        self._need(["blocks.0.hook_resid_pre", *need], method)
        embed = pos_slice.apply(self.cache_dict["blocks.0.hook_resid_pre"], dim=-2)
        parts, labels, bias = [], [], torch.zeros_like(embed)
        for (l, split), kind in [*((a, "attn") for a in attn), *((m, "mlp") for m in mlp)]:
            if not split:
                parts.append(pos_slice.apply(self.cache_dict[f"blocks.{l}.hook_{kind}_out"], dim=-2)[None])
                labels.append(f"{l}_{kind}_out")
                continue
            if kind == "attn":
                rows, b = self._heads(l, pos_slice)
            else:
                rows, b = self._neurons(l, pos_slice)
            parts.append(rearrange(rows, "... n m -> n ... m"))
            labels += [f"L{l}{'H' if kind == 'attn' else 'N'}{i}" for i in range(rows.shape[-2])]
            bias = bias + b
        parts.append(embed[None])
        labels.append("embed")
        for l in (l for l in self.model.cfg.injection_layers if l < layer):
            parts.append(pos_slice.apply(self.cache_dict[f"blocks.{l}.hook_deepstack"], dim=-2)[None])
            labels.append(f"{l}_deepstack")
        stack = torch.cat([*parts, bias[None]])
        self._check_sum(stack, layer, mlp_input, pos_slice, method)
        labels.append("bias")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice)
        stack = project(stack, project_output_onto)
        return (stack, labels) if return_labels else stack

    # ------------------------------------------------------------------ slicing keeps the class

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> MLLMCache:  # type: ignore[override]
        sliced = super().apply_slice_to_batch_dim(batch_slice)
        out = MLLMCache(sliced.cache_dict, self.model, has_batch_dim=sliced.has_batch_dim)
        for name in ("positions", "position_mask"):
            value = getattr(self, name)
            setattr(out, name, None if value is None else _slice(batch_slice).apply(value, dim=0))
        return out
