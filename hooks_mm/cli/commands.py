"""What the ``hooks-mm`` commands run, imported once a command runs (torch, the model, the sweep).

The parser and the option values are in :mod:`hooks_mm.cli` and :mod:`hooks_mm.cli.options`
(standard library only: ``--help`` loads none of this).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from hooks_mm.cli.expressions import METRICS, metric_name, parse_metric, parse_selector
from hooks_mm.cli.options import OptionError, auto_threads, check_indices, check_run_dir, clear_run_dir
from hooks_mm.model import HookedMLLM
from hooks_mm.progress import set_progress
from hooks_mm.selectors import Image, Last, Selector, Text
from hooks_mm.zoo import toy_image


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
def demo(
    model: HookedMLLM, inputs: dict[str, Any], layers: list[int] | None = None, positions: Selector | None = None
) -> None:
    """Inspect, cache the residual stream, then zero-ablate all MLP neurons at ``positions`` (default
    the image positions) one layer at a time (``layers``, default all)."""
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

    where = layout.select(positions or Image())
    if not where.any():
        print("\nno image positions in this batch: pass --positions (e.g. text) to ablate neurons elsewhere.")
        return
    base = logits.log_softmax(-1)[layout.select(Last())]
    print(f"\nzero-ablate all MLP neurons at {positions or Image()!r}, one layer at a time:")
    print("layer   KL(clean || ablated) at the last token")
    for l in range(model.cfg.n_layers) if layers is None else layers:

        def ablate(x: torch.Tensor, hook: Any) -> torch.Tensor:
            return torch.where(where[..., None], torch.zeros_like(x), x)

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


def check_device(text: str) -> str:
    """``--device``: a torch device this machine has (cpu, cuda, cuda:1, mps ...)."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as e:
        raise OptionError(f"--device {text!r} is not a torch device ({e}): use cpu, cuda, cuda:1 or mps.") from None
    if device.type == "meta":
        raise OptionError("--device meta holds no weights: use cpu or cuda (or --remote URL to run on a server).")
    backend = getattr(torch, device.type, None)
    available = device.type == "cpu" or bool(getattr(backend, "is_available", lambda: False)())
    if not available:
        raise OptionError(
            f"--device {text}: this torch ({torch.__version__}) sees no {device.type} device: pass --device cpu, or "
            f"install a torch build with {device.type} support."
        )
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise OptionError(f"--device {text}: there are {count()} {device.type} device(s) (0-{count() - 1}).")
    return text


def load_model(args: argparse.Namespace) -> HookedMLLM:
    """The model of ``args.model``; the weightless client under ``--remote`` (the weights stay on the server)."""
    try:
        if getattr(args, "remote", None):
            return HookedMLLM.from_config(args.model, dtype=args.dtype)
        return HookedMLLM.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    except (OSError, KeyError, ValueError) as e:  # the loaders' errors name the problem and the fix
        raise OptionError(f"MODEL {args.model!r}: {e.args[0] if e.args else e}") from None


def check_positions(model: HookedMLLM, inputs: dict[str, Any], positions: Selector, text: str) -> None:
    """An error when ``positions`` selects nothing in the batch (every ablation would change nothing)."""
    layout = model.layout(inputs)
    try:
        mask = layout.select(positions)
    except (TypeError, ValueError) as e:
        raise OptionError(f"--positions {text!r}: {e}") from None
    if not bool(mask.any()):
        raise OptionError(
            f"--positions {text!r} selects no position of this batch ({layout.summary()}): an ablation there changes "
            'nothing. Pick positions it has, e.g. --positions text or --positions "Last()".'
        )


def sweep_main(
    model: HookedMLLM,
    inputs: dict[str, Any],
    args: argparse.Namespace,
    run: Path,
    layers: list[int] | None,
    positions: Selector,
    targets: torch.Tensor | None = None,
) -> Path:
    """Neuron-ablation sweep over the layers; writes RUN_DIR/results.csv, meta.json (+ report)."""
    from hooks_mm.sweep import single_neurons, sweep
    from hooks_mm.sweep.core import CheckpointError

    metric, name = parse_metric(args.metric, model, inputs, targets)
    neurons = args.neurons.resolve(model.cfg.d_mlp) if args.neurons is not None else None
    configs = single_neurons(model, layers=layers, positions=positions, neurons=neurons)
    backend = None
    if args.remote:
        from hooks_mm.remote import NNsightSweep

        backend = NNsightSweep(remote=args.remote, max_configs_per_request=args.max_configs_per_request)
    if args.force and (gone := clear_run_dir(run)):
        print(f"--force: deleted {', '.join(gone)} from {run}")
    run.mkdir(parents=True, exist_ok=True)
    ckpt = run / "checkpoint.pt"
    try:
        result = sweep(model, inputs, configs, metric, checkpoint=str(ckpt), backend=backend)
    except CheckpointError as e:
        why = str(e).split(": delete it")[0].removeprefix(f"checkpoint {ckpt} ")
        raise OptionError(
            f"--resume: the checkpoint {ckpt} {why}: pass --force to overwrite the run in {run}, or another --out."
        ) from None
    except KeyboardInterrupt:
        print(f"\nhooks-mm sweep: interrupted; finished configs are saved in {ckpt}: rerun with --resume to continue.")
        raise SystemExit(130) from None
    result.table.to_csv(run / "results.csv", index=False)
    default = args.metric == "answer_logprob"
    right = "right" if targets is not None else "clean"
    meta = {
        "model": args.model,
        "architecture": model.cfg.architecture,
        "command": "hooks-mm sweep " + " ".join(args.argv),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "metric": f"log-prob of the {right} answer at the last position" if default else args.metric,
        "intervention": f"zero-ablate one MLP neuron (mlp.hook_post) at {positions!r}",
        "batch": list(inputs["input_ids"].shape),
        "clean_metric": float(result.clean),
        "client_weights": client_weights(model),
        "threads": torch.get_num_threads(),
        "dtype": str(model.cfg.dtype),
        **{k: v for k, v in result.meta.items()},
    }
    (run / "meta.json").write_text(json.dumps(meta, indent=1))
    verb = METRICS[name]
    table = result.table
    worst = (table.nsmallest if verb == "lowers" else table.nlargest)(10, "delta")[
        ["layer", "neuron", "value", "delta"]
    ]
    print(
        f"\n{len(configs)} configs in {result.meta['seconds']:.1f} s ({result.meta['fast']} on the fast path, "
        f"{result.meta['resumed']} from the checkpoint); clean metric {float(result.clean):.4f}"
    )
    what = "the answer's log-prob" if default else name
    print(f"neurons whose ablation {verb} {what} most:")
    print(worst.to_string(index=False))
    from hooks_mm.vis.report import write_report

    print(f"report: {write_report(run)}")
    return run


def run(args: argparse.Namespace) -> int:
    """Run a parsed command (not ``report``) on ``args.threads`` torch threads (restored afterwards)."""
    threads, why = (args.threads, "--threads") if args.threads is not None else auto_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    if args.progress is not None:  # --progress / --no-progress: every bar of this command
        set_progress(args.progress)
    try:
        return _run(args, f"{threads} thread{'s' if threads > 1 else ''} ({why})")
    finally:
        torch.set_num_threads(before)
        if args.progress is not None:
            set_progress(None)


def _run(args: argparse.Namespace, threads: str) -> int:
    sweeping = args.command == "sweep"
    run_dir = check_run_dir(args.out, args.force, args.resume) if sweeping else None
    if sweeping:
        metric_name(args.metric)  # a typo is said before the model loads
    given = getattr(args, "positions", None)
    positions = parse_selector(given) if given else Image()
    if getattr(args, "remote", None) and args.device:
        raise OptionError("--device with --remote: the weights stay on the server: drop --device.")
    if args.device:
        check_device(args.device)
    from hooks_mm.zoo.organisms import ORGANISMS

    model = load_model(args)
    layers = getattr(args, "layers", None)
    if layers:
        layers = [l for word in layers for l in word]
        if len(set(layers)) < len(layers):
            raise OptionError(f"--layers names a layer more than once ({layers}): name each once.")
        check_indices(layers, model.cfg.n_layers, "--layers", f"{args.model} ({model.cfg.architecture})")
    targets = None
    if args.model in ORGANISMS:
        inputs, targets = task_inputs(model, args.n_examples if sweeping else 2)
    else:
        inputs = example_inputs(model)
    if given or sweeping:
        check_positions(model, inputs, positions, given or "image")
    print(f"hooks_mm on {platform.machine()} / torch {torch.__version__} / {args.model} / {threads}\n")
    if sweeping:
        inspect(model, inputs)
        sweep_main(model, inputs, args, run_dir, layers or None, positions, targets)  # type: ignore[arg-type]
    elif args.command == "demo":
        demo(model, inputs, layers or None, positions)
    else:
        inspect(model, inputs)
    return 0
