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
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformers import PreTrainedModel

from hooks_mm.adapters import Adapter, adapter_for
from hooks_mm.attention import install
from hooks_mm.hooks import MODEL_HOOKS, block_hooks, lookup
from hooks_mm.layout import ModalityLayout
from hooks_mm.model.batch import Batch, layout_of
from hooks_mm.model.inputs import as_inputs, to_inputs
from hooks_mm.model.loading import load
from hooks_mm.model.tree import block_tree, put
from hooks_mm.model.wiring import Stop, Wiring
from hooks_mm.selectors import Selector, as_selector

HookList = Sequence[tuple[str | Callable[[str], bool], Callable]]


class HookedMLLM(HookedRootModule):
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
    """

    def __init__(self, hf_model: nn.Module, processor: Any | None = None, *, adapter: Adapter | None = None):
        super().__init__()
        adapter = adapter or adapter_for(hf_model)
        # the HF model is deliberately not a submodule: setup() would rename its modules
        self.__dict__["hf_model"] = hf_model
        self.__dict__["adapter"] = adapter
        self.processor = processor
        config = hf_model.config
        layers = list(hf_model.get_submodule(adapter.layers))
        self.__dict__["decoder_layers"] = layers
        n = len(layers)
        cross = set(adapter.cross_attn_layers(config)) if adapter.cross_attn_layers else set()
        inject = set(adapter.injection_layers(config)) if adapter.injection_layers else set()
        self.__dict__["_attn"] = [
            layers[l].get_submodule(adapter.cross_attn if l in cross else adapter.attn) for l in range(n)
        ]
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        where = (
            {"model"}
            | ({"projector"} if adapter.projector else set())
            | ({"audio"} if adapter.audio_projector else set())
        )
        for spec in MODEL_HOOKS:
            if spec.where in where:
                put(self, spec.name)
            if spec.name == "hook_embed":  # the blocks come right after the embedding, as in TransformerLens
                gated = adapter.gate is not None
                self.blocks = nn.ModuleList(block_tree(block_hooks(l in cross, gated, l in inject)) for l in range(n))
        d_model = getattr(text_config, "hidden_size", None)
        n_heads = getattr(text_config, "num_attention_heads", None)
        out_emb = hf_model.get_output_embeddings()
        self.cfg = SimpleNamespace(
            architecture=type(hf_model).__name__,
            family=adapter.name,
            n_layers=n,
            d_model=d_model,
            n_heads=n_heads,
            n_key_value_heads=getattr(text_config, "num_key_value_heads", n_heads),
            d_head=getattr(text_config, "head_dim", None) or (d_model // n_heads if d_model and n_heads else None),
            d_mlp=getattr(text_config, "intermediate_size", None),
            d_vocab=out_emb.weight.shape[0] if out_emb is not None else getattr(text_config, "vocab_size", None),
            cross_attn_layers=sorted(cross),
            injection_layers=sorted(inject),
            device=self._device(),
            attn_implementation=install(self._language_model()),
        )
        self.setup()
        self.__dict__["_wiring"] = Wiring(self)
        self.__dict__["_last_batch"] = None
        self.positions: Int[Tensor, " seq"] | None = None

    # ------------------------------------------------------------------ loading and parts

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, processor: Any | bool = True, **hf_kwargs: Any) -> HookedMLLM:
        """Load an HF model (hub id or local dir, or a built-in name such as ``tiny-llava``).

        ``hf_kwargs`` go to the HF ``from_pretrained`` (``dtype``, ``device_map``...).
        The processor (or tokenizer) saved with the model is loaded too unless
        ``processor=False``; pass a processor object to use your own.
        """
        hf_model, processor, adapter = load(name_or_path, processor, **hf_kwargs)
        return cls(hf_model, processor, adapter=adapter)

    def submodule(self, path: str) -> nn.Module:
        """The HF module at an adapter path relative to the top-level model (``adapter.embed`` ...)."""
        return self.hf_model.get_submodule(path)

    def attention(self, layer: int) -> nn.Module:
        """The HF attention module of decoder layer ``layer`` (cross-attention in Mllama's cross layers)."""
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
        With ``chat=True`` each prompt is a user turn rendered by the processor's chat
        template, and ``"<image>"``, ``"<video>"``, ``"<audio>"`` in it mark where each input
        goes (any family); otherwise the text must hold the processor's own placeholders.
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
        if isinstance(inputs, Batch) and not kwargs and inputs.prepared_by(self) and self._on_device(inputs):
            return inputs
        raw = as_inputs(self.processor, inputs, self.cfg.device, **kwargs)
        tensors = tuple(v for v in raw.values() if torch.is_tensor(v))
        key = (tuple(raw), tuple(id(t) for t in tensors), tuple(t._version for t in tensors))
        last = self._last_batch
        if last is not None and last[0] == key:
            return last[1]
        batch = Batch(raw, layout_of(self.adapter, self.hf_model, self.processor, raw), self.processor, self)
        self.__dict__["_last_batch"] = (key, batch, tensors)  # holds the tensors, so their ids cannot be reused
        return batch

    def _on_device(self, batch: Batch) -> bool:
        return all(v.device == self.cfg.device for v in batch.inputs.values() if torch.is_tensor(v))

    def layout(self, inputs: Any) -> ModalityLayout:
        """The :class:`ModalityLayout` of a batch of model inputs."""
        return self.prepare(inputs).layout

    # ------------------------------------------------------------------ forward passes

    def forward(
        self, inputs: Any = None, *, return_type: str | None = "logits", stop_at_layer: int | None = None, **kwargs: Any
    ) -> Any:
        """Run the HF model with the hook points live.

        ``inputs``: a Batch, a dict of model inputs (from ``to_inputs`` or a processor), a
        tensor of input_ids, or text. ``return_type``: "logits" (default), "loss" (pass
        ``labels``), "output" (the HF output object) or None. ``stop_at_layer=l`` stops before
        block ``l`` and returns the residual stream there.
        """
        batch = self.prepare(inputs, **kwargs)
        n = self.cfg.n_layers
        if stop_at_layer is not None and not -n <= stop_at_layer <= n:
            raise IndexError(f"stop_at_layer={stop_at_layer} is out of range for {n} layers.")
        with self._wiring.attached(stop_at_layer):
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
    ) -> tuple[Any, ActivationCache]:
        """Run once and cache activations, as TransformerLens does.

        ``pos`` keeps only the selected positions of every position-indexed activation
        (e.g. ``pos=Image()`` or ``pos=Last()``), so memory follows what is kept; the cache
        then has ``cache.positions`` [batch, n] with the kept indices.
        """
        batch = self.prepare(inputs, **kwargs)
        names = self._names(names_filter)
        index = batch.layout.indices(as_selector(pos)) if pos is not None else None
        store: dict[str, Tensor] = {}

        def save(t: Tensor, hook: HookPoint) -> None:
            t = t.detach()
            if index is not None:
                t = take_positions(t, hook.name, index)
            store[hook.name] = t if device is None else t.to(device)

        with self.hooks(fwd_hooks=[(n, save) for n in names]):
            out = self.forward(batch, return_type=return_type, stop_at_layer=stop_at_layer)
        cache = ActivationCache(store, self)
        cache.positions = index
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
        with self.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks), reset_hooks_end=reset_hooks_end):
            return self.forward(inputs, **kwargs)

    def run_with_interventions(
        self, inputs: Any, spec: Any, *, sources: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        """Run with an intervention spec (see :mod:`hooks_mm.interventions`); weights untouched.

        ``sources`` names other runs a spec reads (``Patch(source="clean")``,
        ``NeuronAblation(mode="resample", source=...)``): ``{"clean": clean_inputs}``.
        """
        batch = self.prepare(inputs)
        return self.run_with_hooks(batch, fwd_hooks=spec.compile(self, batch, sources), **kwargs)

    @contextlib.contextmanager
    def interventions(self, spec: Any, inputs: Any, *, sources: dict[str, Any] | None = None) -> Iterator[HookedMLLM]:
        """Context manager: ``spec`` compiled for ``inputs`` stays on until the block ends."""
        with self.hooks(fwd_hooks=spec.compile(self, self.prepare(inputs), sources)):
            yield self

    @torch.no_grad()
    def generate(
        self,
        inputs: Any = None,
        *,
        max_new_tokens: int = 10,
        fwd_hooks: HookList = (),
        do_sample: bool = False,
        **gen_kwargs: Any,
    ) -> Int[Tensor, "batch total"]:
        """Generate with hooks firing at every step (KV cache on, as HF does it).

        During a step, ``model.positions`` holds the absolute positions of the tokens that
        step computes (all prompt positions first, then one position per new token).
        """
        batch = self.prepare(inputs)

        def track(module: nn.Module, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids")
            ids = ids if ids is not None else kwargs.get("inputs_embeds")
            cache = kwargs.get("past_key_values")
            past = cache.get_seq_length() if cache is not None else 0
            self.positions = torch.arange(past, past + ids.shape[1], device=ids.device)

        handle = self.hf_model.register_forward_pre_hook(track, with_kwargs=True)
        try:
            with self.hooks(fwd_hooks=list(fwd_hooks)), self._wiring.attached(None):
                return self.hf_model.generate(
                    **batch.model_inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, **gen_kwargs
                )
        finally:
            handle.remove()
            self.positions = None

    # ------------------------------------------------------------------ hook names

    def hook_name(self, name: str) -> str:
        """``name`` when this model has that hook point; else a KeyError suggesting close names."""
        if name not in self.hook_dict:
            close = difflib.get_close_matches(name, list(self.hook_dict), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(
                f"no hook point named {name!r} on this {self.cfg.architecture}.{hint} "
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

    def add_hook(self, name: Any, hook: Callable, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if isinstance(name, str):
            self.hook_name(name)
        super().add_hook(name, hook, *args, **kwargs)

    def _enable_hook(self, name: Any, hook: Callable, dir: Any) -> None:  # type: ignore[override]
        if isinstance(name, str):
            self.hook_name(name)
        super()._enable_hook(name, hook, dir)

    # ------------------------------------------------------------------ device

    def _device(self) -> torch.device:
        try:
            return next(self.hf_model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def to(self, *args: Any, **kwargs: Any) -> HookedMLLM:  # type: ignore[override]
        self.hf_model.to(*args, **kwargs)
        self.cfg.device = self._device()
        return super().to(*args, **kwargs)

    def __repr__(self) -> str:
        return (
            f"HookedMLLM({self.cfg.architecture}, family={self.cfg.family}, n_layers={self.cfg.n_layers}, "
            f"d_model={self.cfg.d_model}, hook points={len(self.hook_dict)})"
        )


def take_positions(t: Tensor, name: str, index: Tensor) -> Tensor:
    """Keep positions ``index`` [batch, n] along the position axis of hook ``name``."""
    dim = lookup(name).pos_dim
    if dim is None or t.dim() <= dim or t.shape[0] != index.shape[0]:
        return t
    shape = [1] * t.dim()
    shape[0], shape[dim] = index.shape
    idx = index.view(shape).expand(*[-1 if i in (0, dim) else s for i, s in enumerate(t.shape)])
    return t.gather(dim, idx)


__all__ = ["Batch", "HookedMLLM", "take_positions"]
