"""HookedMLLM: TransformerLens hook points on any Hugging Face multimodal model.

The HF model is run as is; HookedMLLM only attaches PyTorch hooks to the modules an adapter
table names, and only for the hook points that have hook functions at the time of a
forward, so a run with no hooks is the bare HF forward.

Example::

    from hooks_mm import HookedMLLM, Image, Last

    model = HookedMLLM.from_pretrained("tiny-llava")
    inputs = model.to_inputs("USER: <image> What colour? ASSISTANT:", images=[pil_image])
    logits, cache = model.run_with_cache(inputs, names_filter=lambda n: "resid_post" in n,
                                         pos=Image())
    cache["blocks.0.hook_resid_post"].shape    # [batch, n_image_tokens, d_model]

    def zero(x, hook):
        x[:, :, 3] = 0
    model.run_with_hooks(inputs, fwd_hooks=[("blocks.1.mlp.hook_post", zero)])
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

from hooks_mm import attention
from hooks_mm.adapters import Adapter, adapter_for, adapter_for_names
from hooks_mm.processing import load_processor
from hooks_mm.layout import SEGMENTS_KEY, ModalityLayout, Segment, Selector, as_selector, build_layout

# hook names whose position axis is not 1
_POS_DIM = {"hook_attn_scores": 2, "hook_pattern": 2}
_NOT_POSITIONAL = ("hook_vision_out", "hook_projector_out", "hook_audio_out", "hook_audio_projector_out", "cross_attn.hook_k", "cross_attn.hook_v", "cross_attn.hook_rot_k")


class _Stop(Exception):
    def __init__(self, value: Tensor):
        self.value = value


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for name in ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_attn_scores", "hook_pattern", "hook_z"):
            setattr(self, name, HookPoint())


class _Norm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hook_normalized = HookPoint()


class _MLP(nn.Module):
    def __init__(self, gated: bool) -> None:
        super().__init__()
        self.hook_pre = HookPoint()
        if gated:
            self.hook_pre_linear = HookPoint()
        self.hook_post = HookPoint()


class _Block(nn.Module):
    def __init__(self, cross: bool, injection: bool, gated: bool) -> None:
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.ln1 = _Norm()
        if cross:
            self.cross_attn = _Attn()
        else:
            self.attn = _Attn()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.ln2 = _Norm()
        self.mlp = _MLP(gated)
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        if injection:
            self.hook_deepstack = HookPoint()


def _edited(hp: HookPoint, value: Tensor) -> Tensor | None:
    """Run a derived hook point; the new value, or None when the hooks left it unchanged."""
    before = value.clone()
    out = hp(value)
    return None if (out is value and torch.equal(value, before)) else out


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def _replace_first(out: Any, h: Tensor) -> Any:
    return (h, *out[1:]) if isinstance(out, tuple) else h


class HookedMLLM(HookedRootModule):
    """TransformerLens hook points on the language model (and vision side) of an HF MLLM.

    Hook names (``l`` = layer): ``hook_embed``, ``blocks.{l}.hook_resid_pre``,
    ``blocks.{l}.ln1.hook_normalized``, ``blocks.{l}.attn.hook_{q,k,v}`` [b, pos, head, d_head],
    ``blocks.{l}.attn.hook_rot_{q,k}`` (after RoPE / q-k norms, as attention uses them),
    ``blocks.{l}.attn.hook_attn_scores`` / ``hook_pattern`` [b, head, q, k],
    ``blocks.{l}.attn.hook_z``, ``blocks.{l}.hook_attn_out``, ``blocks.{l}.hook_resid_mid``,
    ``blocks.{l}.ln2.hook_normalized``, ``blocks.{l}.mlp.hook_pre`` (gate pre-activation),
    ``blocks.{l}.mlp.hook_pre_linear`` (up projection), ``blocks.{l}.mlp.hook_post`` (neuron
    activations = input of down_proj), ``blocks.{l}.hook_mlp_out``,
    ``blocks.{l}.hook_resid_post``, ``ln_final.hook_normalized``; on the vision side
    ``hook_vision_out`` (vision features entering the projector) and ``hook_projector_out``
    (features written at the image positions); on the audio side (Qwen2-Audio, Voxtral,
    Qwen2.5-Omni) ``hook_audio_out`` (audio-encoder output entering its projector) and
    ``hook_audio_projector_out`` (features written at the audio positions). Cross-attention layers (Mllama) hold
    ``blocks.{l}.cross_attn.*`` instead of ``attn.*``, and their ``hook_attn_out`` /
    ``hook_mlp_out`` are the gated outputs; Qwen3-VL's deepstack injection after layer ``l``
    is ``blocks.{l}.hook_deepstack``.
    """

    def __init__(self, hf_model: nn.Module, processor: Any | None = None, *, adapter: Adapter | None = None):
        super().__init__()
        adapter = adapter or adapter_for(hf_model)
        # the HF model is deliberately not a submodule: setup() would rename its modules
        self.__dict__["hf_model"] = hf_model
        self.__dict__["adapter"] = adapter
        self.processor = processor
        config = hf_model.config
        self.__dict__["_layers"] = list(self._module(adapter.layers))
        cross = set(adapter.cross_attn_layers(config)) if adapter.cross_attn_layers else set()
        inject = set(adapter.injection_layers(config)) if adapter.injection_layers else set()
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        n = len(self._layers)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList(
            _Block(l in cross, l in inject, adapter.gate is not None) for l in range(n)
        )
        self.ln_final = _Norm()
        if adapter.projector is not None:
            self.hook_vision_out = HookPoint()
            self.hook_projector_out = HookPoint()
        if adapter.audio_projector is not None:
            self.hook_audio_out = HookPoint()
            self.hook_audio_projector_out = HookPoint()
        d_model = getattr(text_config, "hidden_size", None)
        n_heads = getattr(text_config, "num_attention_heads", None)
        self.cfg = SimpleNamespace(
            architecture=type(hf_model).__name__,
            family=adapter.name,
            n_layers=n,
            d_model=d_model,
            n_heads=n_heads,
            n_key_value_heads=getattr(text_config, "num_key_value_heads", n_heads),
            d_head=getattr(text_config, "head_dim", None) or (d_model // n_heads if d_model and n_heads else None),
            d_mlp=getattr(text_config, "intermediate_size", None),
            d_vocab=hf_model.get_output_embeddings().weight.shape[0]
            if hf_model.get_output_embeddings() is not None
            else getattr(text_config, "vocab_size", None),
            cross_attn_layers=sorted(cross),
            injection_layers=sorted(inject),
            device=self._device(),
        )
        self.setup()
        attn_configs = {id(m.config): m.config for l in range(n) for m in [self._attn_module(l)] if hasattr(m, "config")}
        self.original_attn_implementation = attention.install(list(attn_configs.values()))
        self.__dict__["_handles"] = []
        self.__dict__["_state"] = {}
        self.__dict__["_validated"] = None
        self.__dict__["_attn_modules"] = [self._attn_module(l) for l in range(n)]
        self.positions: Int[Tensor, " seq"] | None = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, processor: Any | bool = True, **hf_kwargs: Any
    ) -> "HookedMLLM":
        """Load an HF model (hub id or local dir, or a built-in name such as ``tiny-llava``).

        ``hf_kwargs`` go to the HF ``from_pretrained`` (``torch_dtype``, ``device_map``...).
        The processor (or tokenizer) saved with the model is loaded too unless
        ``processor=False``; pass a processor object to use your own.
        """
        import transformers

        from hooks_mm import zoo

        path = zoo.resolve(name_or_path)
        config = transformers.AutoConfig.from_pretrained(path)
        arch = (config.architectures or [None])[0]
        if arch is None:
            raise ValueError(
                f"{name_or_path}: config.json names no architecture; load the model yourself and "
                "wrap it with HookedMLLM(hf_model, processor)."
            )
        adapter = adapter_for_names([arch], config)
        model_cls = getattr(transformers, arch, None)
        if model_cls is None:
            raise NotImplementedError(f"transformers {transformers.__version__} has no class {arch}.")
        hf_kwargs.setdefault("dtype", "auto")
        hf_model = model_cls.from_pretrained(path, **hf_kwargs).eval()
        if processor is True:
            processor = load_processor(path)
        elif processor is False:
            processor = None
        return cls(hf_model, processor, adapter=adapter)

    # ------------------------------------------------------------------ inputs and layout

    def to_inputs(
        self,
        text: str | Sequence[str],
        images: Any = None,
        *,
        videos: Any = None,
        audio: Any = None,
        answer: str | Sequence[str] | None = None,
        chat: bool = False,
        **processor_kwargs: Any,
    ) -> dict[str, Tensor]:
        """Model inputs from raw text (+ PIL images, videos, audio), through the model's processor.

        ``images``: one PIL image, a list (one per prompt) or a list of lists. ``videos``: a
        list of videos, each a list of PIL frames (pass ``fps=`` for the frame rate);
        ``audio``: a list of 1-D float waveforms at the feature extractor's sampling rate.
        With ``chat=True`` each prompt is a user turn rendered by the processor's chat
        template, and ``"<image>"``, ``"<video>"``, ``"<audio>"`` in it mark where each input
        goes (any family); otherwise the text must hold the processor's own placeholders.
        ``answer`` appends answer tokens after each prompt (segment ``Answer()``; the prompt
        text is ``Instruction()``). Rows are left-padded.

        Example::

            inputs = model.to_inputs("<image> What colour is the square?", images=img, chat=True)
            inputs = model.to_inputs("<audio> <video> What do you hear?", audio=[wave], videos=[frames],
                                     chat=True, fps=2.0)
        """
        if self.processor is None:
            raise ValueError(
                "this model has no processor: pass model inputs (input_ids, attention_mask, "
                "pixel_values, ...) directly, or load it with HookedMLLM.from_pretrained(dir) "
                "from a directory holding the processor, or HookedMLLM(hf_model, processor)."
            )
        texts = [text] if isinstance(text, str) else list(text)
        if chat:
            texts = [self._chat(t) for t in texts]
        tok = getattr(self.processor, "tokenizer", self.processor)
        tok.padding_side = "left"
        kwargs: dict[str, Any] = {"return_tensors": "pt", "padding": True}
        if images is not None:
            if not isinstance(images, (list, tuple)):
                images = [images]
            kwargs["images"] = images
        if videos is not None:
            kwargs["videos"] = videos
        if audio is not None:
            kwargs["audio"] = audio
            fe = getattr(self.processor, "feature_extractor", None)
            if getattr(fe, "sampling_rate", None):
                kwargs.setdefault("sampling_rate", fe.sampling_rate)
        kwargs.update(processor_kwargs)
        enc = dict(self.processor(text=texts, **kwargs))
        enc = {k: v for k, v in enc.items() if torch.is_tensor(v)}
        seq_keys = [k for k, v in enc.items() if torch.is_tensor(v) and v.shape[:2] == enc["input_ids"].shape]
        segments = torch.where(enc["attention_mask"].bool(), int(Segment.INSTRUCTION), int(Segment.NONE))
        enc[SEGMENTS_KEY] = segments
        if answer is not None:
            answers = [answer] * len(texts) if isinstance(answer, str) else list(answer)
            if len(answers) != len(texts):
                raise ValueError(f"{len(answers)} answers for {len(texts)} prompts: give one answer per prompt.")
            enc = _append_answers(enc, [*seq_keys, SEGMENTS_KEY], [tok(a, add_special_tokens=False)["input_ids"] for a in answers], tok.pad_token_id or 0)
        return enc

    def _chat(self, text: str) -> str:
        if not getattr(self.processor, "chat_template", None):
            raise ValueError(
                "this processor has no chat template: call to_inputs(..., chat=False) with the "
                "processor's own image placeholder in the text."
            )
        import re

        parts: list[dict[str, str]] = []
        for piece in re.split(r"(<image>|<video>|<audio>)", text):
            if piece in ("<image>", "<video>", "<audio>"):
                parts.append({"type": piece[1:-1]})
            elif piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
        messages = [{"role": "user", "content": parts}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def layout(self, inputs: Any) -> ModalityLayout:
        """The :class:`ModalityLayout` of a batch of model inputs."""
        inputs = self._as_inputs(inputs)
        return self._layout(inputs)

    def _layout(self, inputs: dict[str, Any]) -> ModalityLayout:
        a, config = self.adapter, self.hf_model.config
        ids = inputs.get("input_ids")
        if ids is None:
            raise ValueError("a layout needs input_ids; inputs_embeds alone carry no token identities.")
        real = inputs["attention_mask"].bool() if "attention_mask" in inputs else None

        def positions(fn: Any) -> Tensor | None:
            mask = fn(config, ids) if fn else None
            return mask & real if (mask is not None and real is not None) else mask

        mask = positions(a.image_mask)
        plans = a.image_plans(config, inputs) if (a.image_plans and mask is not None and mask.any()) else []
        video, audio = positions(a.video_mask), positions(a.audio_mask)
        video_plans = a.video_plans(config, inputs, self.processor) if (a.video_plans and video is not None and video.any()) else []
        audio_plans = a.audio_plans(config, inputs, self.processor) if (a.audio_plans and audio is not None and audio.any()) else []
        times = a.position_times(self.hf_model, inputs) if a.position_times else None
        special = set(a.special_ids(config))
        tok = getattr(self.processor, "tokenizer", self.processor)
        if tok is not None and hasattr(tok, "all_special_ids"):
            special |= set(tok.all_special_ids)
        return build_layout(
            ids, inputs.get("attention_mask"), mask, plans, special, inputs.get(SEGMENTS_KEY),
            video_mask=video, video_plans=video_plans, audio_mask=audio, audio_plans=audio_plans, times=times,
        )

    def _as_inputs(self, inputs: Any, **kwargs: Any) -> dict[str, Any]:
        if isinstance(inputs, (str, list)) and (isinstance(inputs, str) or all(isinstance(t, str) for t in inputs)):
            tok = getattr(self.processor, "tokenizer", self.processor)
            if tok is None:
                raise ValueError("text input needs a tokenizer: load the model with its processor or pass input_ids.")
            tok.padding_side = "left"
            inputs = dict(tok(inputs, return_tensors="pt", padding=True))
        elif isinstance(inputs, Tensor):
            inputs = {"input_ids": inputs}
        elif inputs is None:
            inputs = {}
        else:
            inputs = dict(inputs)
        inputs.update(kwargs)
        device = self.cfg.device
        return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}

    def _check_images(self, inputs: dict[str, Any]) -> None:
        """Raise a clear error when the image tokens do not match the images given."""
        ids = inputs.get("input_ids")
        a = self.adapter
        if ids is None or (a.image_mask is None and a.video_mask is None and a.audio_mask is None):
            return
        tensors = tuple(v for v in inputs.values() if torch.is_tensor(v))
        key = (tensors, tuple(t._version for t in tensors))
        seen = self._validated
        if seen and len(seen[0]) == len(tensors) and all(a is b for a, b in zip(seen[0], tensors)) and seen[1] == key[1]:
            return  # the very same tensors, unmodified, were checked before
        self._layout(inputs)
        self.__dict__["_validated"] = key  # holds the tensors, so their ids cannot be reused

    # ------------------------------------------------------------------ forward passes

    def forward(
        self,
        inputs: Any = None,
        *,
        return_type: str | None = "logits",
        stop_at_layer: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the HF model with the hook points live.

        ``inputs``: a dict of model inputs (from ``to_inputs`` or a processor), a tensor of
        input_ids, or text. ``return_type``: "logits" (default), "loss" (pass ``labels``),
        "output" (the HF output object) or None. ``stop_at_layer=l`` stops before block
        ``l`` and returns the residual stream there.
        """
        inputs = self._as_inputs(inputs, **kwargs)
        self._check_images(inputs)
        inputs.pop(SEGMENTS_KEY, None)
        if stop_at_layer is not None and not -self.cfg.n_layers <= stop_at_layer <= self.cfg.n_layers:
            raise IndexError(f"stop_at_layer={stop_at_layer} is out of range for {self.cfg.n_layers} layers.")
        with self._attached(stop_at_layer):
            try:
                out = self.hf_model(**inputs)
            except _Stop as stop:
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
        inputs = self._as_inputs(inputs, **kwargs)
        names = self._names(names_filter)
        index = self._layout(inputs).indices(as_selector(pos)) if pos is not None else None
        store: dict[str, Tensor] = {}

        def save(t: Tensor, hook: HookPoint) -> None:
            t = t.detach()
            if index is not None:
                t = _take(t, hook.name, index)
            store[hook.name] = t if device is None else t.to(device)

        with self.hooks(fwd_hooks=[(n, save) for n in names]):
            out = self.forward(inputs, return_type=return_type, stop_at_layer=stop_at_layer)
        cache = ActivationCache(store, self)
        cache.positions = index
        return out, cache

    def run_with_hooks(  # type: ignore[override]
        self,
        inputs: Any = None,
        *,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Callable]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], Callable]] = (),
        reset_hooks_end: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Run with temporary hooks ``[(hook_name or name filter, fn(tensor, hook))]``."""
        with self.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks), reset_hooks_end=reset_hooks_end):
            return self.forward(inputs, **kwargs)

    def run_with_interventions(
        self,
        inputs: Any,
        spec: Any,
        *,
        sources: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run with an intervention spec (see :mod:`hooks_mm.interventions`); weights untouched.

        ``sources`` names other runs a spec reads (``Patch(source="clean")``,
        ``NeuronAblation(mode="resample", source=...)``): ``{"clean": clean_inputs}``.
        """
        from hooks_mm.interventions import compile_hooks

        inputs = self._as_inputs(inputs)
        hooks = compile_hooks(self, spec, inputs, sources)
        return self.run_with_hooks(inputs, fwd_hooks=hooks, **kwargs)

    @contextlib.contextmanager
    def interventions(self, spec: Any, inputs: Any, *, sources: dict[str, Any] | None = None) -> Iterator["HookedMLLM"]:
        """Context manager: ``spec`` compiled for ``inputs`` stays on until the block ends."""
        from hooks_mm.interventions import compile_hooks

        hooks = compile_hooks(self, spec, self._as_inputs(inputs), sources)
        with self.hooks(fwd_hooks=hooks):
            yield self

    @torch.no_grad()
    def generate(
        self,
        inputs: Any = None,
        *,
        max_new_tokens: int = 10,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Callable]] = (),
        do_sample: bool = False,
        **gen_kwargs: Any,
    ) -> Int[Tensor, "batch total"]:
        """Generate with hooks firing at every step (KV cache on, as HF does it).

        During a step, ``model.positions`` holds the absolute positions of the tokens that
        step computes (all prompt positions first, then one position per new token).
        """
        inputs = self._as_inputs(inputs)
        self._check_images(inputs)
        inputs.pop(SEGMENTS_KEY, None)

        def track(module: nn.Module, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids")
            ids = ids if ids is not None else kwargs.get("inputs_embeds")
            cache = kwargs.get("past_key_values")
            past = cache.get_seq_length() if cache is not None else 0
            self.positions = torch.arange(past, past + ids.shape[1], device=ids.device)

        handle = self.hf_model.register_forward_pre_hook(track, with_kwargs=True)
        try:
            with self.hooks(fwd_hooks=list(fwd_hooks)), self._attached(None):
                return self.hf_model.generate(
                    **inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, **gen_kwargs
                )
        finally:
            handle.remove()
            self.positions = None

    # ------------------------------------------------------------------ hook names

    def _check_name(self, name: str) -> None:
        if name not in self.hook_dict:
            close = difflib.get_close_matches(name, list(self.hook_dict), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(
                f"no hook point named {name!r} on this {self.cfg.architecture}.{hint} "
                f"See model.hook_dict for all {len(self.hook_dict)} names (layers 0..{self.cfg.n_layers - 1})."
            )

    def _names(self, names_filter: Any) -> list[str]:
        if names_filter is None:
            return list(self.hook_dict)
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if callable(names_filter):
            return [n for n in self.hook_dict if names_filter(n)]
        for n in names_filter:
            self._check_name(n)
        return list(names_filter)

    def add_hook(self, name: Any, hook: Callable, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if isinstance(name, str):
            self._check_name(name)
        super().add_hook(name, hook, *args, **kwargs)

    def _enable_hook(self, name: Any, hook: Callable, dir: Any) -> None:  # type: ignore[override]
        if isinstance(name, str):
            self._check_name(name)
        super()._enable_hook(name, hook, dir)

    # ------------------------------------------------------------------ wiring

    def _module(self, path: str, root: nn.Module | None = None) -> nn.Module:
        return (root or self.hf_model).get_submodule(path)

    def _attn_module(self, l: int) -> nn.Module:
        cross = self.cfg.cross_attn_layers if hasattr(self, "cfg") else ()
        return self._module(self.adapter.cross_attn if l in cross else self.adapter.attn, self._layers[l])

    def _device(self) -> torch.device:
        try:
            return next(self.hf_model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def to(self, *args: Any, **kwargs: Any) -> "HookedMLLM":  # type: ignore[override]
        self.hf_model.to(*args, **kwargs)
        self.cfg.device = self._device()
        return super().to(*args, **kwargs)

    @contextlib.contextmanager
    def _attached(self, stop_at_layer: int | None) -> Iterator[None]:
        """Attach PyTorch hooks for the hook points that have hooks; always detach."""
        try:
            self._attach(stop_at_layer)
            yield
        finally:
            if self._state:  # something was attached
                for h in self._handles:
                    h.remove()
                self._handles.clear()
                self._state.clear()
                for m in self._attn_modules:
                    attention.SITES.pop(m, None)

    def _attach(self, stop_at_layer: int | None) -> None:
        live = {n for n, hp in self.hook_dict.items() if hp.fwd_hooks or hp.bwd_hooks}
        if not live and stop_at_layer is None:
            return
        a, handles, state = self.adapter, self._handles, self._state
        state["attached"] = True
        fwd = lambda m, fn: handles.append(m.register_forward_hook(fn))  # noqa: E731
        pre = lambda m, fn, kw=False: handles.append(m.register_forward_pre_hook(fn, with_kwargs=kw))  # noqa: E731

        def out_hook(hp: HookPoint) -> Callable:
            return lambda m, i, o: _replace_first(o, hp(_first(o)))

        def in_hook(hp: HookPoint) -> Callable:
            return lambda m, args: (hp(args[0]), *args[1:])

        def heads_out(hp: HookPoint) -> Callable:
            def fn(m: nn.Module, i: Any, o: Tensor) -> Tensor:
                return hp(o.unflatten(-1, (-1, self.cfg.d_head))).flatten(-2)
            return fn

        def heads_in(hp: HookPoint) -> Callable:
            def fn(m: nn.Module, args: tuple) -> tuple:
                return (hp(args[0].unflatten(-1, (-1, self.cfg.d_head))).flatten(-2), *args[1:])
            return fn

        if "hook_embed" in live:  # token embedding: the first embedding call of a forward
            # (Chameleon and Emu3 call the embedding again on image codes)
            def embed(m: nn.Module, i: Any, o: Tensor) -> Tensor | None:
                if state.get("embedded"):
                    return None
                state["embedded"] = True
                return self.hook_embed(o)

            pre(self.hf_model, lambda m, args: state.pop("embedded", None) and None)
            fwd(self._module(a.embed), embed)
        if a.projector is not None:
            proj = self._module(a.projector)
            if "hook_vision_out" in live:
                pre(proj, in_hook(self.hook_vision_out))
            if "hook_projector_out" in live:
                fwd(proj, out_hook(self.hook_projector_out))
        if a.audio_projector is not None:
            proj = self._module(a.audio_projector)
            if "hook_audio_out" in live:
                pre(proj, in_hook(self.hook_audio_out))
            if "hook_audio_projector_out" in live:
                fwd(proj, out_hook(self.hook_audio_projector_out))

        n = self.cfg.n_layers
        final_norm = self._module(a.final_norm)
        for l, layer in enumerate(self._layers):
            blk, p = self.blocks[l], f"blocks.{l}."
            cross = l in self.cfg.cross_attn_layers
            attn_name = "cross_attn" if cross else "attn"
            attn_hp = getattr(blk, attn_name)
            attn_mod = self._attn_module(l)
            derived_attn = (cross or a.attn_out is None) and p + "hook_attn_out" in live
            derived_mlp = (cross or a.mlp_out is None) and p + "hook_mlp_out" in live
            prev_inject = l > 0 and (f"blocks.{l - 1}.hook_deepstack" in live)
            inject = f"{p}hook_deepstack" in live

            if p + "hook_resid_pre" in live or derived_attn or prev_inject:
                pre(layer, self._layer_pre(l, prev_inject), True)
            if p + "ln1.hook_normalized" in live:
                fwd(self._module(a.ln1, layer), out_hook(blk.ln1.hook_normalized))
            for key in ("q", "k", "v"):
                if f"{p}{attn_name}.hook_{key}" in live:
                    fwd(self._module(getattr(a, key), attn_mod), heads_out(getattr(attn_hp, f"hook_{key}")))
            if p + attn_name + ".hook_z" in live:
                pre(self._module(a.o, attn_mod), heads_in(attn_hp.hook_z))
            site = tuple(
                getattr(attn_hp, h) if f"{p}{attn_name}.{h}" in live else None
                for h in ("hook_attn_scores", "hook_pattern", "hook_rot_q", "hook_rot_k")
            )
            if any(hp is not None for hp in site):
                attention.SITES[attn_mod] = site
            if p + "hook_attn_out" in live and not derived_attn:
                fwd(self._module(a.attn_out, layer), out_hook(blk.hook_attn_out))
            mid = p + "hook_resid_mid" in live
            if mid or derived_attn or derived_mlp:
                pre(self._module(a.ln2, layer), self._ln2_pre(l, derived_attn, mid))
            if p + "ln2.hook_normalized" in live:
                fwd(self._module(a.ln2, layer), out_hook(blk.ln2.hook_normalized))
            mlp = self._module(a.mlp, layer)
            if p + "mlp.hook_pre" in live:
                fwd(self._module(a.gate or a.up, mlp), out_hook(blk.mlp.hook_pre))
            if p + "mlp.hook_pre_linear" in live:
                fwd(self._module(a.up, mlp), out_hook(blk.mlp.hook_pre_linear))
            if p + "mlp.hook_post" in live:
                pre(self._module(a.down, mlp), in_hook(blk.mlp.hook_post))
            if p + "hook_mlp_out" in live and not derived_mlp:
                fwd(self._module(a.mlp_out, layer), out_hook(blk.hook_mlp_out))
            if mid or derived_attn or derived_mlp or p + "hook_resid_post" in live or inject:
                fwd(layer, self._layer_post(l, derived_mlp, inject))
        if f"blocks.{n - 1}.hook_deepstack" in live:
            pre(final_norm, self._final_pre(), True)
        if "ln_final.hook_normalized" in live:
            fwd(final_norm, out_hook(self.ln_final.hook_normalized))
        if stop_at_layer is not None:
            stop_at_layer = stop_at_layer + n if stop_at_layer < 0 else stop_at_layer

            def stop(m: nn.Module, args: tuple, kwargs: dict) -> None:
                raise _Stop(args[0] if args else kwargs["hidden_states"])

            pre(self._layers[stop_at_layer] if stop_at_layer < n else final_norm, stop, True)

    def _injected(self, l: int, x: Tensor) -> Tensor:
        """Route the injection after block ``l`` (x - resid_post[l]) through hook_deepstack."""
        post = self._state["post", l]
        new = _edited(self.blocks[l].hook_deepstack, x - post)
        return x if new is None else post + new

    def _layer_pre(self, l: int, prev_inject: bool) -> Callable:
        blk, state = self.blocks[l], self._state

        def fn(m: nn.Module, args: tuple, kwargs: dict) -> tuple:
            x = args[0] if args else kwargs["hidden_states"]
            if prev_inject:
                x = self._injected(l - 1, x)
            x = blk.hook_resid_pre(x)
            state["pre", l] = x
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x}

        return fn

    def _final_pre(self) -> Callable:
        l = self.cfg.n_layers - 1
        return lambda m, args, kwargs: ((self._injected(l, args[0]), *args[1:]), kwargs)

    def _ln2_pre(self, l: int, derived_attn: bool, mid: bool) -> Callable:
        blk, state = self.blocks[l], self._state

        def fn(m: nn.Module, args: tuple) -> tuple:
            x0 = x = args[0]
            if derived_attn:
                resid_pre = state["pre", l]
                new = _edited(blk.hook_attn_out, x - resid_pre)
                if new is not None:
                    x = resid_pre + new
            if mid:
                x = blk.hook_resid_mid(x)
            if x is not x0:  # the residual branch inside the layer still holds x0
                state["delta", l] = x - x0
            state["mid", l] = x
            return (x, *args[1:])

        return fn

    def _layer_post(self, l: int, derived_mlp: bool, inject: bool) -> Callable:
        blk, state = self.blocks[l], self._state

        def fn(m: nn.Module, args: tuple, out: Any) -> Any:
            h = _first(out)
            delta = state.pop(("delta", l), None)
            if delta is not None:
                h = h + delta
            if derived_mlp:
                mid = state["mid", l]
                new = _edited(blk.hook_mlp_out, h - mid)
                if new is not None:
                    h = mid + new
            h = blk.hook_resid_post(h)
            if inject:
                state["post", l] = h
            return _replace_first(out, h)

        return fn

    def __repr__(self) -> str:
        return (
            f"HookedMLLM({self.cfg.architecture}, family={self.cfg.family}, n_layers={self.cfg.n_layers}, "
            f"d_model={self.cfg.d_model}, hook points={len(self.hook_dict)})"
        )


def _take(t: Tensor, name: str, index: Tensor) -> Tensor:
    """Keep positions ``index`` [batch, n] along the position axis of hook ``name``."""
    if name.endswith(_NOT_POSITIONAL):
        return t
    dim = _POS_DIM.get(name.rsplit(".", 1)[-1], 1)
    if t.dim() <= dim or t.shape[0] != index.shape[0]:
        return t
    shape = [1] * t.dim()
    shape[0], shape[dim] = index.shape
    idx = index.view(shape).expand(*[-1 if i in (0, dim) else s for i, s in enumerate(t.shape)])
    return t.gather(dim, idx)


def _append_answers(enc: dict[str, Any], seq_keys: list[str], answers: list[list[int]], pad_id: int) -> dict[str, Any]:
    """Append answer ids after each row's prompt and left-pad again."""
    am = enc["attention_mask"].bool()
    rows: dict[str, list[Tensor]] = {k: [] for k in seq_keys}
    for i, ans in enumerate(answers):
        a = torch.tensor(ans, dtype=torch.long)
        fill = {"input_ids": a, "attention_mask": torch.ones_like(a), SEGMENTS_KEY: torch.full_like(a, int(Segment.ANSWER))}
        for k in seq_keys:
            rows[k].append(torch.cat([enc[k][i][am[i]], fill.get(k, torch.zeros_like(a)).to(enc[k].dtype)]))
    width = max(len(r) for r in rows["input_ids"])
    for k in seq_keys:
        value = pad_id if k == "input_ids" else 0
        enc[k] = torch.stack([torch.cat([torch.full((width - len(r),), value, dtype=r.dtype), r]) for r in rows[k]])
    return enc
