"""Cost of the hook interface: HookedMLLM forward vs the bare HF forward, measured side by side.

For each model: (a) the bare HF model (an unwrapped copy with identical weights), (b) the
HookedMLLM forward with no hooks, (c) run_with_cache of every hook point, (d) run_with_cache
of the residual stream at the image positions only. Runs are interleaved round-robin and the
median is reported, so machine noise hits all variants alike.

    python benchmarks/overhead.py [--reps 30]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from hooks_mm import HookedMLLM, Image, zoo


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def llava_100m():  # noqa: ANN201
    """A ~100M-parameter LLaVA (Llama LM 12 x 768, CLIP 4 x 256) with random weights."""
    torch.manual_seed(0)
    config = LlavaConfig(
        text_config=LlamaConfig(
            vocab_size=8000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
            num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=512,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
            image_size=112, patch_size=14,
        ),
        image_token_index=7999,
        vision_feature_select_strategy="default",
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    model = LlavaForConditionalGeneration(config).eval()
    n_img = (112 // 14) ** 2
    g = torch.Generator().manual_seed(1)
    text = torch.randint(10, 7990, (2, 64), generator=g)
    ids = torch.cat([text[:, :4], torch.full((2, n_img), 7999), text[:, 4:]], dim=1)
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(2, 3, 112, 112, generator=g),
    }
    return model, inputs


def bench(name: str, model, inputs, reps: int) -> None:  # noqa: ANN001
    bare = copy.deepcopy(model)
    hooked = HookedMLLM(model)
    n_params = sum(p.numel() for p in bare.parameters())
    variants = {
        "bare HF forward": lambda: bare(**inputs),
        "HookedMLLM, no hooks": lambda: hooked(inputs),
        "run_with_cache, every hook": lambda: hooked.run_with_cache(inputs),
        "run_with_cache, resid at Image(0)": lambda: hooked.run_with_cache(
            inputs, names_filter=lambda n: n.endswith("hook_resid_post"), pos=Image(0)
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(reps):
            for k, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["bare HF forward"])
    seq = tuple(inputs["input_ids"].shape)
    print(f"\n{name}: {n_params / 1e6:.1f}M parameters, input_ids {seq}, {len(hooked.hook_dict)} hook points, {reps} reps")
    print(f"  {'variant':<38} {'median ms':>10} {'vs bare':>8}")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:<38} {med * 1e3:10.2f} {med / base:7.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    tiny = zoo.build("llava")
    bench("tiny-llava", tiny.model, tiny.inputs, args.reps * 4)
    model, inputs = llava_100m()
    bench("llava ~100M (random)", model, inputs, args.reps)


if __name__ == "__main__":
    main()
