"""HookedMLLM: TransformerLens hook points on any Hugging Face multimodal model.

The HF model is run as is; HookedMLLM only attaches PyTorch hooks to the modules an adapter
table names, and only for the hook points that have hook functions at the time of a
forward, so a run with no hooks is the bare HF forward.

Example::

    from hooks_mm import HookedMLLM, Image, Last

    model = HookedMLLM.from_pretrained("tiny-llava")
    batch = model.prepare(model.to_inputs("<image> What colour?", images=[pil_image], chat=True))
    logits, cache = model.run_with_cache(batch, names_filter=lambda n: "resid_post" in n, pos=Image())
    cache["blocks.0.hook_resid_post"].shape    # [batch, n_image_tokens, d_model]

    def zero(x, hook):
        x[:, :, 3] = 0
    model.run_with_hooks(batch, fwd_hooks=[("blocks.1.mlp.hook_post", zero)])
"""

from __future__ import annotations

import contextlib
import difflib
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformers import PreTrainedModel

from hooks_mm.adapters import Adapter, adapter_for, check_backbone
from hooks_mm.attention import install
from hooks_mm.hooks import MODEL_HOOKS, block_hooks
from hooks_mm.layout import ModalityLayout
from hooks_mm.model.batch import Batch, again, layout_of, take_positions
from hooks_mm.model.cache import MLLMCache
from hooks_mm.model.checks import (
    PIXEL_KEYS,
    check_hook_list,
    check_inputs,
    check_left_padded,
    check_return_type,
    same_inputs,
)
from hooks_mm.model.generation import check_unbound, generate_with
from hooks_mm.model.hybrid import absent_reason, mlp_width, token_mixers
from hooks_mm.model.inputs import as_inputs, to_inputs
from hooks_mm.model.loading import load, load_options
from hooks_mm.model.meta import check_forward, from_config, input_device
from hooks_mm.model.module import WrappedModule
from hooks_mm.model.moe import cache_positions, check_dense, moe_cfg, moe_sizes
from hooks_mm.model.saving import check_loaded
from hooks_mm.model.saving import save as save_model
from hooks_mm.model.tree import block_kinds, block_tree, put
from hooks_mm.model.weights import WeightViews
from hooks_mm.model.wiring import Stop, Wiring, check_idle, exclusive
from hooks_mm.selectors import Selector

RUN_OPTIONS = ("return_type", "stop_at_layer")  # keywords of a run that are not model inputs
HookList = Sequence[tuple[str | Callable[[str], bool], Callable]]


class HookedMLLM(WeightViews, WrappedModule, HookedRootModule):
    """TransformerLens hook points on the language model (and vision side) of an HF MLLM.

    Hook names (``l`` = layer; the table with shapes is :mod:`hooks_mm.hooks`):
    ``hook_embed``, ``blocks.{l}.hook_resid_pre``, ``blocks.{l}.ln1.hook_normalized``,
    ``blocks.{l}.attn.hook_{q,k,v}`` [b, pos, head, d_head], ``blocks.{l}.attn.hook_rot_{q,k}``
    (after RoPE / q-k norms, as attention uses them), ``blocks.{l}.attn.hook_attn_scores`` /
    ``hook_pattern`` [b, head, q, k], ``blocks.{l}.attn.hook_z``, ``blocks.{l}.hook_attn_out``,
    ``blocks.{l}.hook_resid_mid``, ``blocks.{l}.ln2.hook_normalized``, ``blocks.{l}.mlp.hook_pre``
    (gate pre-activation), ``blocks.{l}.mlp.hook_pre_linear`` (up projection),
    ``blocks.{l}.mlp.hook_post`` (neuron activations = input of down_proj),
    ``blocks.{l}.hook_mlp_out``, ``blocks.{l}.hook_resid_post``, ``ln_final.hook_normalized``;
    on the vision side ``hook_vision_out`` (vision features entering the projector) and
    ``hook_projector_out`` (features written at the image positions); on the audio side
    (Qwen2-Audio, Voxtral, Qwen2.5-Omni) ``hook_audio_out`` / ``hook_audio_projector_out``.
    Cross-attention layers (Mllama) hold ``blocks.{l}.cross_attn.*`` instead of ``attn.*``,
    and their ``hook_attn_out`` / ``hook_mlp_out`` are the gated outputs; Qwen3-VL's deepstack
    injection after layer ``l`` is ``blocks.{l}.hook_deepstack``.

    It is an ``nn.Module`` around the HF model: ``to`` / ``cuda`` / ``half`` / ``bfloat16`` /
    ``float``, ``train`` / ``eval``, ``requires_grad_``, ``parameters`` / ``named_parameters``,
    ``state_dict`` / ``load_state_dict`` act on the wrapped model (the state dict has the HF
    model's own keys, as ``model.hf_model.state_dict()``), and ``model.cfg.device`` /
    ``model.cfg.dtype`` follow every change.

    Hooks are per-module state: a HookedMLLM is not thread-safe (run one forward at a time,
    and do not call the model from inside one of its hooks; that raises a clear error).
    """

    def __init__(self, hf_model: nn.Module, processor: Any | None = None, *, adapter: Adapter | None = None):
        super().__init__()
        # the wrapper row, over the backbone row of the text config's model_type (unless the adapter names one)
        adapter = (adapter or adapter_for(hf_model)).with_backbone(hf_model.config)
        # registered as a submodule only after setup(), which would otherwise name its modules as hook points
        self.__dict__["hf_model"] = hf_model
        self.__dict__["adapter"] = adapter
        self.processor = processor
        config = hf_model.config
        layers = list(hf_model.get_submodule(adapter.layers))
        self.__dict__["decoder_layers"] = layers
        n = len(layers)
        cross = set(adapter.cross_attn_layers(config)) if adapter.cross_attn_layers else set()
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        for l in sorted(set(range(n)) - cross):  # every block: mixed stacks (dense then MoE, hybrid) exist
            check_backbone(adapter, layers[l], text_config, index=l)
        inject = set(adapter.injection_layers(config)) if adapter.injection_layers else set()
        moe = {l: moe_sizes(adapter, layers[l]) for l in set(range(n)) - cross if adapter.backbone.is_moe(layers[l])}
        self.__dict__["_mixers"], self.__dict__["_attn"] = token_mixers(adapter, layers, text_config, cross)
        where = (
            {"model"}
            | ({"projector"} if adapter.projector else set())
            | ({"audio"} if adapter.audio_projector else set())
        )
        for spec in MODEL_HOOKS:
            if spec.where in where:
                put(self, spec.name)
            if spec.name == "hook_embed":  # the blocks come right after the embedding, as in TransformerLens
                kinds = [block_kinds(adapter, l, cross, inject, moe, self._mixers) for l in range(n)]
                self.blocks = nn.ModuleList(block_tree(block_hooks(**k)) for k in kinds)
        d_model = getattr(text_config, "hidden_size", None)
        n_heads = getattr(text_config, "num_attention_heads", None)
        out_emb = hf_model.get_output_embeddings()
        # heterogeneous config (Gemma-4): layer 0's head sizes (the wiring reads each attention module's own)
        shape = text_config.per_layer_config[0] if getattr(text_config, "is_heterogeneous", False) else text_config
        self.cfg = SimpleNamespace(
            architecture=type(hf_model).__name__,
            family=adapter.name,
            backbone=getattr(text_config, "model_type", None),
            n_layers=n,
            d_model=d_model,
            n_heads=n_heads,
            n_key_value_heads=getattr(shape, "num_key_value_heads", n_heads),
            d_head=getattr(shape, "head_dim", None) or (d_model // n_heads if d_model and n_heads else None),
            **moe_cfg(
                moe, mlp_width(adapter, layers, text_config), n - len(cross)
            ),  # d_mlp, moe_layers, ... (model/moe.py)
            d_vocab=out_emb.weight.shape[0] if out_emb is not None else getattr(text_config, "vocab_size", None),
            cross_attn_layers=sorted(cross),
            injection_layers=sorted(inject),
            mixer_layers={l: m.kind for l, m in sorted(self._mixers.items())},  # hybrid stacks (model/hybrid.py)
            device=self._device(),
            dtype=self._dtype(),
            attn_implementation=install(self._language_model()),
        )
        self.setup()
        del self.__dict__["hf_model"]
        self.add_module("hf_model", hf_model)  # to / half / train / parameters reach it
        self.training = hf_model.training  # the wrapper reports the HF model's mode (eval after from_pretrained)
        self.__dict__["_wiring"] = Wiring(self)
        self.__dict__["_last_batch"] = None
        self.__dict__["_bound"] = []  # batches the active model.interventions(...) blocks were compiled for
        self.positions: Int[Tensor, " seq"] | None = None

    # ------------------------------------------------------------------ loading and parts

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        processor: Any | bool = True,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        device_map: Any = None,
        **hf_kwargs: Any,
    ) -> HookedMLLM:
        """Load an HF model (hub id or local dir, or a built-in name such as ``tiny-llava``).

        ``device``: move the model there after loading; ``dtype``: ``torch.bfloat16`` or a
        string (``"bfloat16"``, ``"float16"``, ``"auto"``: the checkpoint's own, the default);
        ``device_map`` goes to HF (``"auto"`` spreads a large model over the devices), as do the
        other ``hf_kwargs``. The processor (or tokenizer) saved with the model is loaded too
        unless ``processor=False``; pass a processor object to use your own.

        Example::

            model = HookedMLLM.from_pretrained("toy-llava", device="cuda", dtype="bfloat16")
        """
        hf_kwargs.update(load_options(dtype, device, device_map))
        hf_model, processor, adapter = load(name_or_path, processor, **hf_kwargs)
        model = cls(hf_model, processor, adapter=adapter)
        check_loaded(model)  # a directory written by save_pretrained: the adapter and shape it was saved with
        return model.to(device) if device is not None else model

    from_config = classmethod(from_config)  # weightless: config + processor, meta parameters (model/meta.py)

    def save_pretrained(self, path: str, *, overwrite: bool = False, **hf_kwargs: Any) -> str:
        """Write the model into directory ``path`` (weights, config, processor, ``hooks_mm.json``); returns it.

        ``from_pretrained(path)`` gives the same logits and layout back (model/saving.py). A non-empty
        ``path`` is refused unless ``overwrite=True``; ``hf_kwargs`` go to the HF ``save_pretrained``.

        Example::

            model.save_pretrained("my-model")
            same = HookedMLLM.from_pretrained("my-model")
        """
        return save_model(self, path, overwrite=overwrite, **hf_kwargs)

    def submodule(self, path: str) -> nn.Module:
        """The HF module at an adapter path relative to the top-level model (``adapter.embed`` ...)."""
        return self.hf_model.get_submodule(path)

    def attention(self, layer: int) -> nn.Module:
        """The HF attention module of layer ``layer`` (Mllama: cross-attention; cfg.mixer_layers: the token mixer)."""
        return self._attn[layer]

    def _language_model(self) -> PreTrainedModel:
        """The innermost PreTrainedModel holding the decoder layers."""
        parts = self.adapter.layers.split(".")
        for k in range(len(parts) - 1, -1, -1):
            module = self.hf_model.get_submodule(".".join(parts[:k]))
            if isinstance(module, PreTrainedModel):
                return module
        return self.hf_model

    # ------------------------------------------------------------------ inputs and layout

    def to_inputs(self, text: str | Sequence[str], images: Any = None, **kwargs: Any) -> dict[str, Tensor]:
        """Model inputs from raw text (+ PIL images, videos, audio), through the model's processor.

        ``images``: one PIL image, a list (one per prompt) or a list of lists. ``videos=``: a
        list of videos, each a list of PIL frames (pass ``fps=`` for the frame rate);
        ``audio=``: a list of 1-D float waveforms at the feature extractor's sampling rate.
        ``chat``: by default (None) each prompt is a user turn rendered by the processor's chat
        template when the processor has one and the prompt does not already carry the
        template's turn markers (``USER:``, ``<|im_start|>user`` ...), as the model was trained;
        ``chat=True`` / ``chat=False`` force it on / off. In a chat turn ``"<image>"``,
        ``"<video>"``, ``"<audio>"`` mark where each input goes (any family); without the
        template the text must hold the processor's own placeholders.
        ``answer=`` appends answer tokens after each prompt (segment ``Answer()``; the prompt
        text is ``Instruction()``). Rows are left-padded. Other keywords go to the processor.

        Example::

            inputs = model.to_inputs("<image> What colour is the square?", images=img, chat=True)
            inputs = model.to_inputs("<audio> <video> What do you hear?", audio=[wave], videos=[frames],
                                     chat=True, fps=2.0)
        """
        return to_inputs(self.processor, text, images, **kwargs)

    def prepare(self, inputs: Any = None, **kwargs: Any) -> Batch:
        """A :class:`~hooks_mm.model.batch.Batch`: the inputs on the model's device and their layout, built once.

        Accepts what every call accepts: a Batch (returned as is when this model prepared it),
        a dict of model inputs, a tensor of input_ids, or text. Raises a clear error when image / video / audio
        positions do not match the media given. Preparing the very same, unmodified tensors
        again returns the same Batch.
        """
        target = (self.cfg.device, self.cfg.dtype)
        if isinstance(inputs, Batch) and not kwargs and inputs.prepared_by(self) and inputs.target == target:
            return inputs
        if isinstance(inputs, Batch):  # its inputs as given, before an earlier dtype cast of the pixels
            inputs = inputs.source
        raw = as_inputs(self.processor, inputs, input_device(self), **kwargs)  # CPU when weightless
        tensors = tuple(v for v in raw.values() if torch.is_tensor(v))
        key = (target, tuple(raw), tuple(id(t) for t in tensors), tuple(t._version for t in tensors))
        last = self._last_batch
        if last is not None and last[0] == key:
            return last[1]
        check_inputs(self.adapter, self.hf_model, raw)
        model_in = dict(raw)
        if raw.get("input_ids") is not None and raw["input_ids"].dtype != torch.long:
            model_in["input_ids"] = raw["input_ids"].long()  # int32 ids are valid; some HF forwards need int64
        for k in (k for k in PIXEL_KEYS if torch.is_tensor(raw.get(k))):
            model_in[k] = raw[k].to(self.cfg.dtype)  # as HF casts pixels to its vision tower's dtype
        batch = Batch(model_in, layout_of(self.adapter, self.hf_model, self.processor, raw), self.processor, self)
        batch.target, batch.source = target, raw
        self.__dict__["_last_batch"] = (key, batch, tensors)  # holds the tensors, so their ids cannot be reused
        return batch

    def _run_batch(self, inputs: Any, return_type: Any = "logits", **kwargs: Any) -> Batch:
        """The checked batch of a run: no run in progress, valid inputs and return_type, the bound batch if any."""
        check_forward(self)  # a weightless model (from_config): run it remotely
        check_idle(self.hf_model)
        batch = self.prepare(inputs, **kwargs)
        check_return_type(return_type, batch)
        for bound in self._bound:
            if not same_inputs(batch, bound):
                raise ValueError(
                    "this run's inputs are not the batch the active model.interventions(spec, inputs) block was "
                    "compiled for (token ids, layout or pixels differ, even if the shapes agree): compile the spec "
                    "for this batch: with model.interventions(spec, B): model(B). (A spec with sources compiled "
                    "inside the block is refused too: the block's hooks would edit its source runs; nest the blocks "
                    "the other way or compose the specs.)"
                )
        return batch

    def layout(self, inputs: Any) -> ModalityLayout:
        """The :class:`ModalityLayout` of a batch of model inputs."""
        return self.prepare(inputs).layout

    # ------------------------------------------------------------------ forward passes

    def forward(
        self, inputs: Any = None, *, return_type: str | None = "logits", stop_at_layer: int | None = None, **kwargs: Any
    ) -> Any:
        """Run the HF model with the hook points live.

        ``inputs``: a Batch, a dict of model inputs (from ``to_inputs`` or a processor), a
        tensor of input_ids, or text (tokenised as is, like TransformerLens: no chat template; use
        ``to_inputs`` for that). ``return_type``: "logits" (default), "loss" (pass
        ``labels``), "output" (the HF output object) or None. ``stop_at_layer=l`` stops before
        block ``l`` and returns the residual stream there.
        """
        batch = self._run_batch(inputs, return_type, **kwargs)
        n = self.cfg.n_layers
        if stop_at_layer is not None and (isinstance(stop_at_layer, bool) or not isinstance(stop_at_layer, int)):
            raise TypeError(f"stop_at_layer={stop_at_layer!r}: give a layer index (int) or None.")
        if stop_at_layer is not None and not -n <= stop_at_layer <= n:
            raise IndexError(f"stop_at_layer={stop_at_layer} is out of range for {n} layers.")
        with exclusive(self.hf_model), self._wiring.attached(stop_at_layer):
            try:
                out = self.hf_model(**batch.model_inputs)
            except Stop as stop:
                return stop.value
        if return_type == "logits":
            return out.logits
        if return_type == "loss":
            return out.loss
        if return_type == "output":
            return out
        return None

    def run_with_cache(  # type: ignore[override]
        self,
        inputs: Any = None,
        *,
        names_filter: str | Sequence[str] | Callable[[str], bool] | None = None,
        pos: Selector | Sequence[int] | int | None = None,
        stop_at_layer: int | None = None,
        device: str | torch.device | None = None,
        return_type: str | None = "logits",
        **kwargs: Any,
    ) -> tuple[Any, MLLMCache]:
        """Run once and cache activations, as TransformerLens does.

        ``pos`` keeps only the selected positions of every position-indexed activation
        (e.g. ``pos=Image()`` or ``pos=Last()``), so memory follows what is kept; the cache
        then has ``cache.positions`` [batch, n] with the kept indices and ``cache.position_mask``
        (bool, True where real). Rows selecting fewer positions than the most (ragged batches) are
        padded to ``n_max``: positions -1, mask False, activations NaN (reduce with the mask:
        :mod:`hooks_mm.ragged`, e.g. ``masked_mean(cache[name], cache.position_mask)``).
        """
        batch = self._run_batch(inputs, return_type, **kwargs)
        names = self._names(names_filter)
        if device is not None:
            device = torch.device(device)  # a bad device string fails here, before any hook
        index = cache_positions(batch.layout, pos, names)  # None without pos=; routed-token hooks refuse pos=
        store: dict[str, Tensor] = {}

        def save(t: Tensor, hook: HookPoint) -> None:
            t = t.detach()
            if index is not None:
                t = take_positions(t, hook.name, index)
            t = t if device is None else t.to(device)
            store[hook.name] = t if hook.name not in store else again(hook.name, store[hook.name], t)

        with self.hooks(fwd_hooks=[(n, save) for n in names]):
            out = self.forward(batch, return_type=return_type, stop_at_layer=stop_at_layer)
        cache = MLLMCache(store, self)  # TransformerLens's cache, its analyses on this family (model/cache.py)
        cache.positions, cache.position_mask = index, (None if index is None else index >= 0)
        return out, cache

    def run_with_hooks(  # type: ignore[override]
        self,
        inputs: Any = None,
        *,
        fwd_hooks: HookList = (),
        bwd_hooks: HookList = (),
        reset_hooks_end: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Run with temporary hooks ``[(hook_name or name filter, fn(tensor, hook))]``."""
        run = {k: kwargs.pop(k) for k in RUN_OPTIONS if k in kwargs}
        inputs = self._run_batch(inputs, run.get("return_type", "logits"), **kwargs)
        with self.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks), reset_hooks_end=reset_hooks_end):
            return self.forward(inputs, **run)

    def run_with_interventions(
        self, inputs: Any, spec: Any, *, sources: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        """Run with an intervention spec (see :mod:`hooks_mm.interventions`); weights untouched.

        ``sources`` names other runs a spec reads (``Patch(source="clean")``,
        ``NeuronAblation(mode="resample", source=...)``): ``{"clean": clean_inputs}``.
        """
        run = {k: kwargs.pop(k) for k in RUN_OPTIONS if k in kwargs}
        batch = self._run_batch(inputs, run.get("return_type", "logits"), **kwargs)
        return self.run_with_hooks(batch, fwd_hooks=spec.compile(self, batch, sources), **run)

    @contextlib.contextmanager
    def interventions(self, spec: Any, inputs: Any, *, sources: dict[str, Any] | None = None) -> Iterator[HookedMLLM]:
        """Context manager: ``spec`` compiled for ``inputs`` stays on until the block ends.

        Every run inside the block must be on that same batch (equal token ids, layout and
        pixels); another batch is a clear error, since the spec's positions belong to ``inputs``.

        Example::

            with model.interventions(NeuronAblation(1, [3]), inputs):
                logits, cache = model.run_with_cache(inputs)
        """
        batch = self._run_batch(inputs)
        hooks = spec.compile(self, batch, sources)
        self._bound.append(batch)
        try:
            with self.hooks(fwd_hooks=hooks):
                yield self
        finally:
            self._bound.remove(batch)

    @torch.no_grad()
    def generate(
        self,
        inputs: Any = None,
        *,
        max_new_tokens: int = 10,
        interventions: Any = None,
        sources: dict[str, Any] | None = None,
        fwd_hooks: HookList = (),
        do_sample: bool = False,
        logits_processor: Any = None,
        **gen_kwargs: Any,
    ) -> Any:
        """HF generation (KV cache on) under a spec and / or raw hooks, exactly as recomputing each step without the
        cache; ``sources`` names the runs the spec reads; ``Generated()`` selects the new positions, ``Last()`` is
        the current step; ``model.positions``: the positions a step computes (see :mod:`hooks_mm.model.generation`).

        Example::

            out = model.generate(inputs, max_new_tokens=8, interventions=Steer(1, v.tolist(), Generated()))
        """
        check_unbound(self)  # before _run_batch's error for another batch
        batch = self._run_batch(inputs)
        check_left_padded(batch)
        args = (max_new_tokens, interventions, sources, fwd_hooks, do_sample, logits_processor, gen_kwargs)
        return generate_with(self, batch, *args)

    # ------------------------------------------------------------------ hook names

    def hook_name(self, name: str) -> str:
        """``name`` when this model has that hook point; else a KeyError suggesting close names."""
        if name not in self.hook_dict:
            check_dense(name, self.cfg.moe_layers)  # a dense-MLP hook name on a MoE layer: the reason
            close = difflib.get_close_matches(name, list(self.hook_dict), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(
                absent_reason(self, name)  # an attention hook of a hybrid stack's linear-attention / conv layer
                or f"no hook point named {name!r} on this {self.cfg.architecture}.{hint} "
                f"See model.hook_dict for all {len(self.hook_dict)} names (layers 0..{self.cfg.n_layers - 1})."
            )
        return name

    def _names(self, names_filter: Any) -> list[str]:
        if names_filter is None:
            return list(self.hook_dict)
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if callable(names_filter):
            return [n for n in self.hook_dict if names_filter(n)]
        return [self.hook_name(n) for n in names_filter]

    def hooks(self, fwd_hooks: HookList = (), bwd_hooks: HookList = (), *args: Any, **kwargs: Any) -> Any:
        """TransformerLens's context manager of temporary hooks; each list is checked first."""
        fwd, bwd = check_hook_list(fwd_hooks, "fwd_hooks"), check_hook_list(bwd_hooks, "bwd_hooks")
        return super().hooks(fwd, bwd, *args, **kwargs)

    def add_hook(self, name: Any, hook: Callable, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if isinstance(name, str):
            self.hook_name(name)
        super().add_hook(name, hook, *args, **kwargs)

    def _enable_hook(self, name: Any, hook: Callable, dir: Any) -> None:  # type: ignore[override]
        if isinstance(name, str):
            self.hook_name(name)
        super()._enable_hook(name, hook, dir)

    def __repr__(self) -> str:
        return (
            f"HookedMLLM({self.cfg.architecture}, family={self.cfg.family}, n_layers={self.cfg.n_layers}, "
            f"d_model={self.cfg.d_model}, hook points={len(self.hook_dict)})"
        )


__all__ = ["Batch", "HookedMLLM", "take_positions"]
