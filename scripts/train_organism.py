"""Train a built-in organism on the shapes task, evaluate it, and save it.

    python scripts/train_organism.py toy-llava [--seed 0] [--out DIR] [--steps N]

Writes the weights (safetensors), config and processor into ``--out`` (default: the
package's ``hooks_mm/zoo/organisms/<name>/``) and prints the held-out QA accuracy
(image-dependent / text-guessable / all) and per-modality perplexity. The same seed gives
the same weights on the same machine and thread count (``--threads``, default 1: on a
CPU shared with other jobs one thread per process ran several times faster than two).

A development tool, outside the package: the recipes live in ``hooks_mm.zoo.organisms``.

Example::

    from train_organism import train          # with scripts/ on sys.path
    result = train("toy-anygpt", seed=0, out="/tmp/toy-anygpt", steps=20)   # a quick run
    result.sha256
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from hooks_mm.layout import Modality, Segment
from hooks_mm.model import HookedMLLM
from hooks_mm.processing import save_processor
from hooks_mm.tasks.evaluate import EOS, Evaluation, encode, evaluate, uses_chat
from hooks_mm.tasks.shapes import KINDS, Example, caption_example, drawing_example, make_qa
from hooks_mm.zoo.organisms import Organism, Stage, get

IGNORE = -100
WARMUP = 100
QA_PER_SCENE = 4
KIND_WEIGHTS = {"relation": 3.0}  # comparing two objects' places is the slowest kind to learn
LOG_NAME = "hooks_mm_training.json"


@dataclass
class Pool:
    """Encoded training sequences of one source (unpadded), their loss masks and scenes."""

    ids: list[Tensor]
    targets: list[Tensor]  # bool per position: this token is predicted (loss)
    scene: Tensor  # index into the scene table of the run


@dataclass
class TrainResult:
    path: str
    seconds: float
    sha256: str
    evaluation: Evaluation | None


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over the state dict (names and raw bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _examples(source: str, qa: list[Example], scenes: list[Any]) -> list[Example]:
    if source == "qa":
        return qa
    if source == "caption":
        return [caption_example(s) for s in scenes]
    if source in ("drawing", "image"):
        return [drawing_example(s, with_text=source == "drawing") for s in scenes]
    raise ValueError(f"unknown training source {source!r}; known: qa, caption, drawing, image")


def follow_up(model: HookedMLLM, example: Example) -> tuple[list[int], list[int]]:
    """Token ids of a further turn about the same image: the question (rendered as a user
    turn where the processor has a chat template) and the answer + ``</s>``."""
    tok = getattr(model.processor, "tokenizer", model.processor)
    question = example.question
    if uses_chat(model):
        turn = [{"role": "user", "content": [{"type": "text", "text": question}]}]
        question = model.processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    ids = tok([question, f"{example.answer} {EOS}"], add_special_tokens=False)["input_ids"]
    return ids[0], ids[1]


def encode_pool(
    model: HookedMLLM, examples: list[Example], scene_index: dict[int, int], pixels: dict[int, Tensor]
) -> Pool:
    """Encode ``examples`` through the model's processor; targets are the answer tokens, or
    the image tokens for examples without an answer (drawings). Consecutive questions about
    one scene become one dialogue: the first prompt (image, context, question), its answer,
    then each further question and answer as a new turn."""
    groups: list[list[Example]] = []
    for e in examples:
        if e.kind in KINDS and groups and groups[-1][0].scene is e.scene:
            groups[-1].append(e)
        else:
            groups.append([e])
    ids, targets, scene = [], [], []
    for i in range(0, len(groups), 512):
        chunk = groups[i : i + 512]
        first = [g[0] for g in chunk]
        inputs = encode(model, first, answers=bool(first[0].answer))
        layout = model.layout(inputs)
        is_target = layout.segment == Segment.ANSWER if first[0].answer else layout.modality == Modality.IMAGE
        real = inputs["attention_mask"].bool()
        for r, group in enumerate(chunk):
            s = scene_index[id(group[0].scene)]
            row, t = inputs["input_ids"][r][real[r]].tolist(), is_target[r][real[r]].tolist()
            for e in group[1:]:
                q, a = follow_up(model, e)
                row, t = row + q + a, t + [False] * len(q) + [True] * len(a)
            ids.append(torch.tensor(row))
            targets.append(torch.tensor(t))
            scene.append(s)
            if "pixel_values" in inputs and s not in pixels:
                pixels[s] = inputs["pixel_values"][r]
    return Pool(ids, targets, torch.tensor(scene))


def collate(pools: dict[str, Pool], picks: dict[str, Tensor], pad_id: int) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Left-padded batch of the picked sequences, their scene indices and loss targets (bool)."""
    rows = [(pools[s].ids[i], pools[s].targets[i], pools[s].scene[i]) for s, idx in picks.items() for i in idx.tolist()]
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (i, t, _) in enumerate(rows):
        ids[r, width - len(i) :], mask[r, width - len(i) :], target[r, width - len(i) :] = i, 1, t
    return {"input_ids": ids, "attention_mask": mask}, torch.stack([r[2] for r in rows]), target


def sequence_loss(
    logits: Float[Tensor, "batch seq vocab"], ids: Int[Tensor, "batch seq"], target: Tensor
) -> Float[Tensor, ""]:
    """Next-token cross-entropy on the target positions, averaged per sequence, then over
    sequences (a one-word answer weighs as much as a caption)."""
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    t = target[:, 1:].float()
    return ((nll * t).sum(1) / t.sum(1).clamp(min=1)).mean()


def _lr(step: int, total: int, peak: float) -> float:
    if step < WARMUP:
        return peak * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, total - WARMUP)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _split(batch_size: int, mix: dict[str, float]) -> dict[str, int]:
    """Rows per source in a batch (shares of ``batch_size``, summing to it)."""
    counts = {s: int(batch_size * w / sum(mix.values())) for s, w in mix.items()}
    first = next(iter(counts))
    counts[first] += batch_size - sum(counts.values())
    return counts


def run_stage(
    model: torch.nn.Module,
    stage: Stage,
    pools: dict[str, Pool],
    pixels: Tensor | None,
    batch_size: int,
    pad_id: int,
    gen: torch.Generator,
    log_every: int = 200,
    on_log: Callable[[], str] | None = None,
    lr_scales: dict[str, float] = {},
    after_step: Callable[[], None] | None = None,
) -> None:
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        scale = next((v for k, v in lr_scales.items() if name.startswith(k)), 1.0)
        groups.setdefault(scale, []).append(param)
    opt = torch.optim.AdamW(
        [{"params": p, "scale": k} for k, p in groups.items()], lr=stage.lr, betas=(0.9, 0.98), weight_decay=0.01
    )
    counts = _split(batch_size, stage.mix)
    model.train()
    for step in range(stage.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, stage.steps, stage.lr) * g["scale"]
        picks = {s: torch.randint(len(pools[s].ids), (n,), generator=gen) for s, n in counts.items()}
        inputs, scene, target = collate(pools, picks, pad_id)
        if pixels is not None:
            inputs["pixel_values"] = pixels[scene]
        logits = model(**inputs, use_cache=False).logits
        loss = sequence_loss(logits, inputs["input_ids"], target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if after_step is not None:
            after_step()
        if log_every and (step % log_every == 0 or step == stage.steps - 1):
            extra = ""
            if on_log is not None:
                model.eval()
                extra = "  " + on_log()
                model.train()
            print(f"  step {step:5d}/{stage.steps}  loss {loss.item():.4f}{extra}", flush=True)
    model.eval()


def train(
    name: str,
    seed: int = 0,
    out: str | None = None,
    steps: int | None = None,
    n_scenes: int | None = None,
    threads: int = 1,
    with_eval: bool = True,
    log_every: int = 200,
    eval_every_log: bool = False,
    base: str | None = None,
    checkpoint_every: int = 0,
    checkpoints: str | None = None,
) -> TrainResult:
    """Train organism ``name`` and save it into ``out`` (default: the package).

    An organism with a ``base`` (``toy-anygpt-monotune``) starts from that organism's trained
    weights: from the directory ``base`` if given, else the shipped ones. ``steps`` /
    ``n_scenes`` shrink a run (every stage gets at most ``steps`` steps), for quick
    reproducibility checks; the shipped organisms use the recipe's values.
    ``checkpoint_every`` > 0 saves the model every that many steps (counted over all stages)
    into ``checkpoints/step-<N>/`` (default: ``<out>-checkpoints``), with its step and
    weights hash; saving draws no random numbers, so the final weights are the same.
    """
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ValueError(f"checkpoint_every={checkpoint_every!r}: give a number of steps >= 0 (0: no checkpoints).")
    organism: Organism = get(name)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    base_sha = None
    if organism.base is not None:
        src = base or get(organism.base).path
        if not os.path.isfile(os.path.join(src, "config.json")):
            raise FileNotFoundError(
                f"{name} starts from {organism.base}'s weights, and {src} has none; train it first: "
                f"`python scripts/train_organism.py {organism.base}` (or pass --base DIR)."
            )
        loaded = HookedMLLM.from_pretrained(src)
        hf_model, processor = loaded.hf_model.float(), loaded.processor
        base_sha = weights_hash(hf_model)
        torch.manual_seed(seed)
    else:
        hf_model, processor = organism.build(seed)
    model = HookedMLLM(hf_model, processor)
    stages = [Stage(min(s.steps, steps) if steps else s.steps, s.lr, s.mix) for s in organism.stages]
    sources = sorted({s for st in stages for s in st.mix})
    n_qa = QA_PER_SCENE * (n_scenes or organism.n_scenes)
    qa = make_qa(n_qa, "train", seed, per_scene=QA_PER_SCENE, kind_weights=KIND_WEIGHTS)
    scenes = list({id(e.scene): e.scene for e in qa}.values())
    scene_index = {id(s): i for i, s in enumerate(scenes)}
    pixel_rows: dict[int, Tensor] = {}
    pools = {s: encode_pool(model, _examples(s, qa, scenes), scene_index, pixel_rows) for s in sources}
    pixels = torch.stack([pixel_rows[i] for i in range(len(scenes))]) if pixel_rows else None
    gen = torch.Generator().manual_seed(seed)
    tok = getattr(processor, "tokenizer", processor)
    monitor = make_qa(200, "test", seed + 1)
    on_log = (lambda: _quick_accuracy(model, monitor)) if eval_every_log else None
    where = checkpoints or f"{(out or organism.path).rstrip('/')}-checkpoints"
    done = [0]

    def after_step() -> None:
        done[0] += 1
        if checkpoint_every and done[0] % checkpoint_every == 0:
            log = dict(name=name, seed=seed, step=done[0], threads=threads, sha256=weights_hash(hf_model))
            save(hf_model, processor, os.path.join(where, f"step-{done[0]}"), log)

    for i, stage in enumerate(stages):
        print(f"{name}: stage {i + 1}/{len(stages)} {stage}", flush=True)
        run_stage(
            hf_model,
            stage,
            pools,
            pixels,
            organism.batch_size,
            tok.pad_token_id,
            gen,
            log_every,
            on_log,
            organism.lr_scales,
            after_step,
        )
    seconds = time.perf_counter() - start
    sha = weights_hash(hf_model)
    evaluation = evaluate(model) if with_eval else None
    path = save(
        hf_model,
        processor,
        out or organism.path,
        log=dict(
            name=name,
            seed=seed,
            base=organism.base,
            base_sha256=base_sha,
            stages=[asdict(s) for s in stages],
            n_scenes=len(scenes),
            threads=threads,
            torch=torch.__version__,
            train_seconds=round(seconds, 1),
            sha256=sha,
            evaluation=asdict(evaluation) if evaluation else None,
        ),
    )
    return TrainResult(path, seconds, sha, evaluation)


def _quick_accuracy(model: HookedMLLM, examples: list[Example]) -> str:
    from hooks_mm.tasks.evaluate import accuracy_table, qa_correct

    acc = accuracy_table(examples, qa_correct(model, examples))
    return f"held-out accuracy image {acc['image']:.3f} text {acc['text']:.3f}"


def save(hf_model: torch.nn.Module, processor: Any, path: str, log: dict[str, Any]) -> str:
    """Write the model, processor and training log into ``path`` (replaced as a whole)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    try:
        hf_model.save_pretrained(tmp)
        save_processor(processor, tmp)
        with open(os.path.join(tmp, LOG_NAME), "w") as f:
            json.dump(log, f, indent=1)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def main(argv: Sequence[str] | None = None) -> None:
    from hooks_mm.zoo.organisms import ORGANISMS

    p = argparse.ArgumentParser(prog="python scripts/train_organism.py", description=__doc__.split("\n")[0])
    p.add_argument("name", choices=sorted(ORGANISMS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default: the package's organisms/<name>/)")
    p.add_argument("--steps", type=int, default=None, help="cap every stage at this many steps (quick runs)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the weights hash depends on it)")
    p.add_argument("--monitor", action="store_true", help="print held-out accuracy at every log line")
    p.add_argument("--base", default=None, help="directory of the base organism's weights (default: the shipped ones)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="save the model every N steps (over all stages)")
    p.add_argument("--checkpoints", default=None, help="where the checkpoints go (default: OUT-checkpoints)")
    args = p.parse_args(argv)
    if args.checkpoint_every < 0:
        p.error(f"--checkpoint-every must be >= 0 (0: none), got {args.checkpoint_every}")
    result = train(
        args.name,
        args.seed,
        args.out,
        args.steps,
        threads=args.threads,
        eval_every_log=args.monitor,
        base=args.base,
        checkpoint_every=args.checkpoint_every,
        checkpoints=args.checkpoints,
    )
    print(f"trained {args.name} (seed {args.seed}) in {result.seconds:.0f} s on {args.threads} threads")
    print(f"weights sha256 {result.sha256}")
    print(f"saved to {result.path}")
    if result.evaluation is not None:
        print(result.evaluation.format())


if __name__ == "__main__":
    main()
