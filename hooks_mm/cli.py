"""The ``hooks-mm`` command.

    hooks-mm inspect [MODEL]   hook points, layer count and the modality layout of an example
    hooks-mm demo [MODEL]      inspect, then cache image/text activations and ablate neurons
    hooks-mm sweep [MODEL]     neuron-ablation sweep over the layers: results table + report
    hooks-mm report RUN_DIR    one self-contained offline HTML page for a run directory

MODEL is a hub id, a local directory, or a built-in name: a trained organism (toy-llava,
toy-anygpt, toy-anygpt-monotune; default toy-llava) or tiny-<family> (random weights).
On an organism the example batch is held-out questions of its shapes task.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch

from hooks_mm import HookedMLLM, Image, Last, Text
from hooks_mm.zoo import DEFAULT_MODEL, toy_image


def example_inputs(model: HookedMLLM) -> dict[str, Any]:
    """A two-prompt example with images (where the model takes them) built from raw text."""
    if model.processor is None:
        raise SystemExit(f"{model.cfg.architecture}: no processor saved with the model, cannot build an example.")
    takes_images = hasattr(model.processor, "image_processor") or hasattr(model.processor, "encode_image")
    if not takes_images:
        return model.to_inputs(["what colour is the square ?", "describe the picture ."])
    chat = bool(getattr(model.processor, "chat_template", None))
    token = "<image>" if chat else getattr(model.processor, "image_token", "<image>")
    prompts = [f"{token} what colour is the square ?", f"{token} {token} which image is red ?"]
    images = [[toy_image(1)], [toy_image(2), toy_image(3)]]
    return model.to_inputs(prompts, images=images, chat=chat)


def task_inputs(model: HookedMLLM, n: int = 16, seed: int = 0) -> tuple[dict[str, Any], torch.Tensor]:
    """``n`` held-out image-dependent questions of the shapes task (the organisms' own task)
    and the token id of each right answer."""
    from hooks_mm.tasks import make_qa
    from hooks_mm.tasks.evaluate import answer_ids, encode

    qa = [e for e in make_qa(4 * n, "test", seed) if e.needs_image][:n]
    return encode(model, qa), answer_ids(model, qa)


def _hook_summary(model: HookedMLLM) -> list[str]:
    per_block: "OrderedDict[str, list[int]]" = OrderedDict()
    other = []
    for name in model.hook_dict:
        m = re.match(r"blocks\.(\d+)\.(.+)", name)
        if m:
            per_block.setdefault(m.group(2), []).append(int(m.group(1)))
        else:
            other.append(name)
    lines = [f"  {n}" for n in other]
    n = model.cfg.n_layers
    for suffix, layers in per_block.items():
        where = "all layers" if len(layers) == n else f"layers {layers}"
        lines.append(f"  blocks.{{l}}.{suffix:<28} {where}")
    return lines


def inspect(model: HookedMLLM, inputs: dict[str, Any]) -> None:
    c = model.cfg
    print(f"model      {c.architecture} (family {c.family})")
    print(
        f"layers     {c.n_layers}   d_model {c.d_model}   heads {c.n_heads} (kv {c.n_key_value_heads})"
        f"   d_mlp {c.d_mlp}"
    )
    if c.cross_attn_layers:
        print(f"cross-attention layers {c.cross_attn_layers}")
    if c.injection_layers:
        print(f"vision injection after layers {c.injection_layers}")
    print(f"weights    {client_weights(model)}")
    print(f"hook points ({len(model.hook_dict)}):")
    print("\n".join(_hook_summary(model)))
    layout = model.layout(inputs)
    print(f"layout of an example batch {tuple(layout.shape)}: {layout.summary()}")
    for row in range(layout.shape[0]):
        print(f"  row {row}: {layout.describe(row)}")


@torch.no_grad()
def demo(model: HookedMLLM, inputs: dict[str, Any]) -> None:
    inspect(model, inputs)
    layout = model.layout(inputs)
    t0 = time.perf_counter()
    logits, cache = model.run_with_cache(inputs, names_filter=lambda n: n.endswith("hook_resid_post"))
    dt = time.perf_counter() - t0
    print(f"\nrun_with_cache over {len(cache)} residual hooks: {dt * 1e3:.1f} ms")
    print("mean residual norm per layer      text     image")
    img, txt = layout.select(Image()), layout.select(Text())
    for l in range(model.cfg.n_layers):
        norms = cache[f"blocks.{l}.hook_resid_post"].norm(dim=-1)
        t = norms[txt].mean().item()
        i = norms[img].mean().item() if img.any() else float("nan")
        print(f"  blocks.{l}.hook_resid_post {t:12.2f} {i:9.2f}")

    base = logits.log_softmax(-1)[layout.select(Last())]
    print("\nzero-ablate all MLP neurons at the image positions, one layer at a time:")
    print("layer   KL(clean || ablated) at the last token")
    for l in range(model.cfg.n_layers):

        def ablate(x: torch.Tensor, hook: Any) -> torch.Tensor:
            return torch.where(img[..., None], torch.zeros_like(x), x)

        out = model.run_with_hooks(inputs, fwd_hooks=[(f"blocks.{l}.mlp.hook_post", ablate)])
        new = out.log_softmax(-1)[layout.select(Last())]
        kl = (base.exp() * (base - new)).sum(-1).mean().item()
        print(f"  {l:<5} {kl:.5f}")


def client_weights(model: HookedMLLM) -> str:
    """What of the weights this process holds: "none (...)" for a weightless client, else their device."""
    params = list(model.parameters())
    meta = sum(p.is_meta for p in params)
    if meta == len(params):
        return f"none (weightless client, HookedMLLM.from_config: all {meta} parameters on the meta device)"
    return f"loaded ({len(params) - meta}/{len(params)} parameters on {model.cfg.device})"


def sweep_main(
    model: HookedMLLM,
    inputs: dict[str, Any],
    out: str,
    layers: list[int] | None,
    neurons: int | None,
    source: str,
    remote: str | None = None,
    per_request: int = 64,
    targets: torch.Tensor | None = None,
) -> Path:
    """Neuron-ablation sweep over the layers; writes RUN_DIR/results.csv, meta.json (+ report)."""
    from hooks_mm.sweep import answer_logprob, single_neurons, sweep
    from hooks_mm.sweep.core import CheckpointError

    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    metric = answer_logprob(model, inputs, targets)
    configs = single_neurons(
        model, layers=layers, positions=Image(), neurons=None if neurons is None else range(neurons)
    )
    backend = None
    if remote:
        from hooks_mm.remote import NNsightSweep

        backend = NNsightSweep(remote=remote, max_configs_per_request=per_request)
    ckpt = run / "checkpoint.pt"
    try:
        result = sweep(model, inputs, configs, metric, checkpoint=str(ckpt), backend=backend)
    except CheckpointError as e:
        why = str(e).split(": delete it")[0].removeprefix(f"checkpoint {ckpt} ")
        raise SystemExit(
            f"hooks-mm sweep: the run directory {run} holds a checkpoint ({ckpt}) that {why}. "
            f"Pass another --out, or delete {ckpt} to start this sweep over."
        ) from None
    result.table.to_csv(run / "results.csv", index=False)
    meta = {
        "model": source,
        "architecture": model.cfg.architecture,
        "command": "hooks-mm sweep " + " ".join(sys.argv[2:]),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "metric": f"log-prob of the {'right' if targets is not None else 'clean'} answer at the last position",
        "intervention": "zero-ablate one MLP neuron (mlp.hook_post) at every image position",
        "batch": list(inputs["input_ids"].shape),
        "clean_metric": float(result.clean),
        "client_weights": client_weights(model),
        **{k: v for k, v in result.meta.items()},
    }
    (run / "meta.json").write_text(json.dumps(meta, indent=1))
    worst = result.table.nsmallest(10, "delta")[["layer", "neuron", "value", "delta"]]
    print(
        f"\n{len(configs)} configs in {result.meta['seconds']:.1f} s ({result.meta['fast']} on the fast path); "
        f"clean metric {float(result.clean):.4f}"
    )
    print("neurons whose ablation lowers the answer's log-prob most:")
    print(worst.to_string(index=False))
    from hooks_mm.vis.report import write_report

    print(f"report: {write_report(run)}")
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hooks-mm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("inspect", "hook points, layers and modality layout"), ("demo", "inspect, cache and ablate")):
        p = sub.add_parser(name, help=help_)
        p.add_argument(
            "model",
            nargs="?",
            default=DEFAULT_MODEL,
            help=f"hub id, directory or built-in name (default {DEFAULT_MODEL})",
        )
    p = sub.add_parser("sweep", help="neuron-ablation sweep over the layers, results table and report")
    p.add_argument(
        "model", nargs="?", default=DEFAULT_MODEL, help=f"hub id, directory or built-in name (default {DEFAULT_MODEL})"
    )
    p.add_argument("--out", default="runs/sweep", help="run directory (results.csv, meta.json, report.html)")
    p.add_argument("--layers", type=int, nargs="*", default=None, help="layers to sweep (default all)")
    p.add_argument("--neurons", type=int, default=None, help="sweep only the first N neurons of each layer")
    p.add_argument("--remote", metavar="URL", default=None, help="run on this NDIF host (API key: $NDIF_API_KEY)")
    p.add_argument("--max-configs-per-request", type=int, default=64)
    p.add_argument("--n-examples", type=int, default=16, help="held-out questions (built-in organisms)")
    p = sub.add_parser("report", help="one self-contained offline HTML page for a run directory")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="output file (default RUN_DIR/report.html)")
    p.add_argument("--top", type=int, default=20, help="table rows shown")
    args = parser.parse_args(argv)
    if args.command == "report":
        from hooks_mm.vis.report import write_report

        print(write_report(args.run_dir, args.out, args.top))
        return 0
    from hooks_mm.zoo.organisms import ORGANISMS

    remote = getattr(args, "remote", None)
    # --remote: the weightless client (config + processor; the weights stay on the server)
    model = HookedMLLM.from_config(args.model) if remote else HookedMLLM.from_pretrained(args.model)
    targets = None
    if args.model in ORGANISMS:
        inputs, targets = task_inputs(model, args.n_examples if args.command == "sweep" else 2)
    else:
        inputs = example_inputs(model)
    print(f"hooks_mm on {platform.machine()} / torch {torch.__version__} / {args.model}\n")
    if args.command == "sweep":
        inspect(model, inputs)
        sweep_main(
            model,
            inputs,
            args.out,
            args.layers,
            args.neurons,
            args.model,
            args.remote,
            args.max_configs_per_request,
            targets,
        )
    else:
        {"inspect": inspect, "demo": demo}[args.command](model, inputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
