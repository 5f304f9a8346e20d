"""hooks_mm at real scale: a random-weight LLaVA with LLaVA-1.5-7B's configuration (GPU) or a ~1.1B one (CPU).

``--device cuda``: LLaVA-1.5-7B's shapes (Vicuna-7B LM: 32 layers x 4096, d_mlp 11008, 32 heads,
vocab 32064; CLIP ViT-L/14 at 336 px: 24 layers x 1024, 576 image tokens; 2-layer GELU
projector), bf16, 2 rows x 608 tokens. ``--device cpu`` (default when no GPU): the same
architecture at ~1.1B (LM 16 layers x 2048, d_mlp 5504, 16 heads, vocab 32064; CLIP ViT-L
width with 12 layers at 168 px: 144 image tokens), fp32, 1 row x 176 tokens (sized to run in
minutes on 2 shared CPU cores). Weights are
random, built on the device (``no_init_weights``, then N(0, 0.02); nothing is downloaded).

Measured, each printed with what it is:

  memory     run_with_cache of every hook vs of every hook at ``pos=Last()`` vs a bare forward:
             the cache's bytes and the call's peak (CUDA: ``max_memory_allocated``; CPU:
             ``hooks_mm.remote.budget.peak_tensor_bytes``, live tensor storage), and the remote
             memory planner's per-copy estimate (``plan_memory``) for the same batch;
  sweep      configs/s of the TransformerLens-style loop, nnsight batched invokes and the fast
             path, round-robin, for neurons spread over the depth (image positions and ``Last()``);
  budget     a sweep under a small ``max_memory``: the chunk it chose, ``bytes_per_config`` x chunk
             and the measured peak beside it;
  attribution the time of attribution patching (every neuron of every layer, image positions);
  kernel     the Triton low-rank update vs torch at the model's shapes (CUDA only; skipped on CPU).

    python benchmarks/scale.py [--device cuda] [--rounds 2] [--threads 1] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Callable

import torch
from common import machine
from nnsight_baseline import MultimodalNNsight
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from transformers.initialization import no_init_weights
from ways import Ways, interleave, report, spread, timed

from hooks_mm import HookedMLLM, Image, Last
from hooks_mm.remote.budget import peak_tensor_bytes, plan_memory
from hooks_mm.sweep import answer_logprob, single_neurons, sweep
from hooks_mm.sweep.engine import bytes_per_config
from hooks_mm.sweep.kernels import lowrank_update_torch, triton_available
from hooks_mm.sweep.replay import Replay

# (text config, vision config, rows, text tokens) per size
SIZES: dict[str, tuple[dict, dict, int, int]] = {
    "llava-1.5-7b": (
        dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336),
        2,
        32,
    ),
    "llava-1.1b": (
        dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=16, num_attention_heads=16),
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=12, num_attention_heads=16, image_size=168),
        1,
        32,
    ),
    "smoke": (
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56),
        1,
        8,
    ),
}
VOCAB, IMAGE_TOKEN = 32064, 32000  # LLaVA-1.5's vocabulary and <image> id
MIB = 1 << 20


def build(size: str, device: str, dtype: torch.dtype) -> tuple[LlavaForConditionalGeneration, dict[str, torch.Tensor]]:
    """A random LLaVA of ``size`` built directly on ``device`` in ``dtype``, and a batch for it."""
    text, vision, rows, n_text = SIZES[size]
    config = LlavaConfig(
        text_config=LlamaConfig(vocab_size=VOCAB, max_position_embeddings=4096, rms_norm_eps=1e-5, **text),
        vision_config=CLIPVisionConfig(patch_size=14, projection_dim=768, **vision),
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:  # buffers (rotary frequencies, position ids) computed on the device; weights left empty, then drawn
        with torch.device(device), no_init_weights():
            model = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    random_init(model)
    n_img = (vision["image_size"] // 14) ** 2
    g = torch.Generator().manual_seed(1)
    words = torch.randint(2, IMAGE_TOKEN, (rows, n_text), generator=g)
    ids = torch.cat([words[:, :5], torch.full((rows, n_img), IMAGE_TOKEN), words[:, 5:]], dim=1)
    size_px = vision["image_size"]
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(rows, 3, size_px, size_px, generator=g).to(dtype),
    }
    return model, {k: v.to(device) for k, v in inputs.items()}


@torch.no_grad()
def random_init(model: torch.nn.Module, std: float = 0.02) -> None:
    """Weights N(0, std), biases 0, norm scales 1 (much faster than HF's per-module init at this size)."""
    g = torch.Generator(next(model.parameters()).device).manual_seed(0)
    for module in model.modules():
        norm = isinstance(module, torch.nn.LayerNorm) or "Norm" in type(module).__name__
        for name, p in module.named_parameters(recurse=False):
            if name == "bias":
                p.zero_()
            elif norm:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=g)


def peak(call: Callable[[], Any], device: str) -> tuple[Any, int]:
    """``call()`` and the peak bytes it allocated beyond what was allocated before."""
    if device != "cuda":
        return peak_tensor_bytes(call)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = call()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() - base


def nbytes(cache: Any) -> int:
    return sum(t.numel() * t.element_size() for t in cache.cache_dict.values())


def memory(model: HookedMLLM, batch: Any, device: str) -> None:
    print("\nmemory (one call each; peak = allocated during the call beyond the weights and inputs):")
    print(f"  {'call':<44} {'cache MiB':>10} {'peak MiB':>10}")
    _, p = peak(lambda: model.hf_model(**batch.model_inputs, use_cache=False).logits, device)
    print(f"  {'bare HF forward (no cache)':<44} {'-':>10} {p / MIB:10.1f}")
    plan = plan_memory(model, batch, reduced=False, max_memory=80 << 30)
    print(f"  {'remote planner plan_memory: per-copy estimate':<44} {'-':>10} {plan.per_copy / MIB:10.1f}")
    for name, kw in (("run_with_cache, every hook", {}), ("run_with_cache, every hook at pos=Last()", {"pos": Last()})):
        (_, cache), p = peak(lambda kw=kw: model.run_with_cache(batch, **kw), device)
        print(f"  {name:<44} {nbytes(cache) / MIB:10.1f} {p / MIB:10.1f}")
        del cache


def budget(model: HookedMLLM, batch: Any, metric: Any, device: str, chunk: int = 4) -> None:
    b, s = batch.shape
    per = bytes_per_config(model, b, s, all_logits=False)
    layer = model.cfg.n_layers - 2
    cfgs = single_neurons(model, layers=layer, positions=Image(), neurons=range(2 * chunk))
    held = Replay(model, batch).held_bytes()  # the recorded clean run, kept for the whole sweep
    max_memory = held + chunk * per
    _, clean_peak = peak(lambda: sweep(model, batch, cfgs[:1], metric, progress=False, max_memory=max_memory), device)
    res, p = peak(lambda: sweep(model, batch, cfgs, metric, progress=False, max_memory=max_memory), device)
    print(
        f"\nbudget: sweep(max_memory={max_memory / MIB:.1f} MiB) held {res.meta['held_bytes'] / MIB:.1f} MiB for the "
        f"recorded clean run and chose chunk {res.meta['chunk']} (bytes_per_config {per / MIB:.1f} MiB each); "
        f"measured peak {p / MIB:.1f} MiB = {p / max_memory:.2f} x max_memory; a 1-config sweep's peak "
        f"{clean_peak / MIB:.1f} MiB: packing added {(p - clean_peak) / MIB:.1f} MiB"
    )


def kernel(model: HookedMLLM, batch: Any, device: str, reps: int = 20) -> None:
    if device != "cuda" or not triton_available():
        print("\nkernel: Triton low-rank update vs torch: skipped (needs CUDA and triton; this run is on the CPU)")
        return
    from hooks_mm.sweep.kernels.lowrank_triton import lowrank_update_triton

    b, s = batch.shape
    d, m, dtype = model.cfg.d_model, model.cfg.d_mlp, next(model.hf_model.parameters()).dtype
    weight = model.decoder_layers[0].mlp.down_proj.weight
    print(f"\nkernel: low-rank update, rows {b * s}, d_model {d}, d_mlp {m}, {dtype} (median of {reps}, CUDA events):")
    for n, k in ((64, 1), (64, 8), (256, 1)):
        base = torch.randn(b * s, d, device=device, dtype=dtype)
        coef = torch.randn(n, b * s, k, device=device, dtype=dtype)
        idx = torch.randint(0, m, (n, k), device=device)
        times = {}
        for name, fn in (("torch", lowrank_update_torch), ("triton", lowrank_update_triton)):
            fn(base, coef, weight, idx)
            ts = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(base, coef, weight, idx)
                end.record()
                torch.cuda.synchronize()
                ts.append(start.elapsed_time(end))
            times[name] = statistics.median(ts)
        err = (lowrank_update_torch(base, coef, weight, idx) - lowrank_update_triton(base, coef, weight, idx)).abs()
        print(
            f"  n {n:4d} k {k}: torch {times['torch']:.3f} ms, triton {times['triton']:.3f} ms "
            f"({times['torch'] / times['triton']:.2f}x), max |diff| {err.max().item():.1e}"
        )


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=sorted(SIZES), help="default: llava-1.5-7b on cuda, llava-1.1b on cpu")
    p.add_argument("--rounds", type=int, default=2, help="round-robin repetitions of the sweep ways")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (set explicitly: the machine may be shared)"
    )
    p.add_argument("--layers-every", type=int, default=4, help="sweep neurons of every k-th layer (spread over depth)")
    p.add_argument("--per-layer", type=int, default=1, help="fast-path configs per swept layer")
    p.add_argument("--slow", type=int, default=2, help="configs for the loop and nnsight batched invokes")
    p.add_argument("--weight-grads", choices=("on", "off"), help="attribution with weight gradients (default: on cuda)")
    p.add_argument("--smoke", action="store_true", help="a tiny model: checks the script runs (tests)")
    return p.parse_args()


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    device = args.device
    size = "smoke" if args.smoke else args.size or ("llava-1.5-7b" if device == "cuda" else "llava-1.1b")
    if args.smoke:
        args.layers_every, args.rounds = 1, 1
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    print(f"machine: {machine()}")
    t, (hf, inputs) = timed(lambda: build(size, device, dtype))
    weight_grads = (args.weight_grads or ("on" if device == "cuda" else "off")) == "on"
    if not weight_grads:  # activation gradients still flow (the embedding keeps requires_grad)
        for name, p in hf.named_parameters():
            p.requires_grad_("embed_tokens" in name)
    model = HookedMLLM(hf)
    batch = model.prepare(inputs)
    b, s = batch.shape
    n_params = sum(p.numel() for p in hf.parameters())
    print(
        f"model: random {size}, {n_params / 1e9:.2f}B params, {model.cfg.n_layers} layers x {model.cfg.d_model}, "
        f"d_mlp {model.cfg.d_mlp}, {dtype}, on {device} (built in {t:.0f} s); input {b} x {s} "
        f"({int((inputs['input_ids'] == IMAGE_TOKEN).sum()) // b} image tokens per row)"
    )
    with torch.no_grad():
        t, _ = timed(lambda: model(batch))
        t, _ = timed(lambda: model(batch))
    print(f"one forward: {t:.2f} s")

    with torch.no_grad():
        memory(model, batch, device)
        metric = answer_logprob(model, batch)
        ways = Ways(model, MultimodalNNsight(hf), inputs, metric)
        layers = list(range(0, model.cfg.n_layers, args.layers_every))
        image = [c for c in spread(model, args.per_layer, Image()) if c.layers in layers]
        last = [c for c in spread(model, args.per_layer, Last()) if c.layers in layers]
        slow = image[: args.slow]
        print(
            f"\nsweep: configs zero one neuron of layers {layers} (spread over depth), {args.rounds} rounds "
            f"round-robin; loop and nnsight on {len(slow)} configs (one forward each, whatever the layer):"
        )
        rates, outs = interleave(
            {
                "(a) loop: run_with_hooks per config": (lambda: ways.loop(slow), len(slow)),
                "(c) nnsight: batched invokes": (lambda: ways.nnsight_batched(slow), len(slow)),
                "(d) fast, spread over depth, image": (lambda: ways.fast(image), len(image)),
                "(d) fast, spread over depth, Last()": (lambda: ways.fast(last), len(last)),
            },
            args.rounds,
        )
        report(rates, base="(a) loop: run_with_hooks per config")
        fast = outs["(d) fast, spread over depth, image"][: len(slow)]
        err = max((outs[k] - fast).abs().max().item() for k in list(outs)[:2])
        print(f"  max |loop or nnsight - fast| on the shared configs: {err:.1e}")
        meta = ways.metas[(repr(Last()), True)]
        print(f"  Last() sweep: suffix reuse {meta.get('suffix', 'n/a')}; replayed {meta.get('replayed', 'n/a')}")
        budget(model, batch, metric, device)

    t, att = timed(lambda: ways.attribution(Image()))
    print(
        f"\nattribution: every neuron of {len(att.layers)} layers ({att.neurons.numel()} estimates) at the image "
        f"positions in {t:.2f} s (weight gradients {'on' if weight_grads else 'off: only the embedding requires grad'})"
    )
    kernel(model, batch, device)
    if device != "cuda":
        print(
            "\nthe GPU figures (LLaVA-1.5-7B shapes, bf16, Triton kernel) are not measured in this run: --device cuda"
        )


if __name__ == "__main__":
    main()
