"""Which multimodal classes of the installed transformers hooks_mm wraps, and how: a smoke check per class.

Enumerates every class in transformers' multimodal auto mappings (image-text-to-text, multimodal LM,
speech seq2seq; vision-to-seq where it exists), builds a tiny random-weight instance of each from its
default config with every size field shrunk, wraps it in ``HookedMLLM`` (no processor) and checks the
text path: no-hook logits equal the bare model's bit for bit, ``blocks.{l}.hook_resid_post`` equals HF's
``hidden_states[l+1]``, and the block decomposition ``resid_mid == resid_pre + attn_out``,
``resid_post == resid_mid + mlp_out`` holds. Family-level exactness (media positions, patterns,
edits) is tests/test_conformance.py's job.

    python scripts/coverage.py                  # print the table
    python scripts/coverage.py --readme         # rewrite README.md between the coverage markers
    python scripts/coverage.py --json out.json  # also write the raw results

Each class runs in a worker process with a per-class time limit; a worker that dies or hangs is
replaced and the class is recorded as not built.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coverage_shrink import mrope_default, shrink, sub_configs  # noqa: E402  (scripts/coverage_shrink.py)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"
MAPPINGS = (
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
)
TIME_LIMIT = 60  # seconds per class
MAX_PARAMS = 50_000_000
TOL = 1e-5
NO_TEXT_PATH = "not built here: the bare model has no text-only forward"


def mapping_classes() -> dict[str, str]:
    """Every class name in the multimodal auto mappings -> the first model_type mapping to it (no model imports)."""
    from transformers.models.auto import modeling_auto

    found: dict[str, str] = {}
    for mapping in MAPPINGS:
        for model_type, names in getattr(modeling_auto, mapping, {}).items():
            for name in names if isinstance(names, (list, tuple)) else (names,):
                found.setdefault(name, model_type)
    return dict(sorted(found.items()))


# ---------------------------------------------------------------- one class


def describe(config: Any, name: str) -> dict[str, Any]:
    """Wrapper family, backbone and modalities of a class, from its (full-size) default config."""
    from hooks_mm.adapters import adapter_for_names

    try:
        family = adapter_for_names([name], config).name
    except NotImplementedError:
        family = ""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    keys = set()
    for c in [config, *sub_configs(config)]:
        keys |= {k for k, v in vars(c).items() if v is not None}
    modal = [
        m
        for m, marks in (
            ("image", ("image_token", "vision_config", "vq_config", "vision_start")),
            ("video", ("video_token",)),
            ("audio", ("audio_token", "audio_config")),
        )
        if any(k.startswith(mark) for k in keys for mark in marks)
    ]
    return {"family": family, "backbone": getattr(text, "model_type", ""), "modalities": modal}


def encoder_decoder(config: Any, name: str) -> bool:
    from transformers.models.auto import modeling_auto

    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    seq2seq = modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    return (
        "EncoderDecoder" in name
        or any(getattr(c, "is_encoder_decoder", False) for c in (config, text))
        or getattr(text, "model_type", None) in seq2seq
    )


def model_class(name: str, model_type: str) -> Any:
    import transformers
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    if hasattr(transformers, name):
        return getattr(transformers, name)
    return getattr(importlib.import_module(f"transformers.models.{model_type_to_module_name(model_type)}"), name)


def text_ids(config: Any, n: int = 8) -> Any:
    """[2, n] token ids below the vocab size that are none of the config's special / media ids."""
    import torch

    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    vocab = getattr(text, "vocab_size", None) or getattr(config, "vocab_size", 1000)
    special = set()
    for c in [config, *sub_configs(config)]:
        for k, v in vars(c).items():
            if ("token" in k or k.endswith("_id")) and isinstance(v, int) and not isinstance(v, bool):
                special.add(v)
    ids = [i for i in range(3, vocab) if i not in special][: 4 * n]
    g = torch.Generator().manual_seed(0)
    return torch.tensor(ids)[torch.randint(len(ids), (2, n), generator=g)]


def first_clause(message: str) -> str:
    """The reason in a NotImplementedError message, short enough for a table cell."""
    m = re.search(r"over backbone '([\w.-]+)' .*?\) has (.*?): its hook points", message)
    if m:
        return f"backbone {m.group(1)} has {m.group(2)}"
    head = re.split(r"(?<=[.:])\s", message.strip(), maxsplit=1)[0].rstrip(".:")
    return head if len(head) <= 160 else head[:157] + "..."


def check(name: str, model_type: str) -> dict[str, Any]:
    """Build, wrap and smoke-check one class; the result row."""
    from transformers import CONFIG_MAPPING

    row: dict[str, Any] = {"class": name, "model_type": model_type, "family": "", "backbone": "", "modalities": []}
    try:
        config = CONFIG_MAPPING[model_type]()
    except Exception as e:  # noqa: BLE001 - any failure is recorded, not raised
        return {**row, "status": f"not built here: default config: {one_line(e)}"}
    row.update(describe(config, name))
    if encoder_decoder(config, name):
        return {**row, "status": "not decoder-only"}
    status = ""
    for keep_head in (False, True):  # per-head width shrunk first; kept (M-RoPE sections, MLA ranks) if that fails
        status, extra = tiny_status(name, model_type, keep_head)
        if not status.startswith("not built here"):
            break
    row.update(extra)
    failed = status.startswith(("not built here", "accepted, then fails", "refused"))  # a variant may be exact
    return zoo_fallback(row, status) if failed else {**row, "status": status}


def tiny_status(name: str, model_type: str, keep_head: bool) -> tuple[str, dict[str, Any]]:
    """Build the shrunk default config of a class and check it: (status, parameter count and structure)."""
    import torch
    from transformers import CONFIG_MAPPING

    try:
        config = CONFIG_MAPPING[model_type]()
        cls = model_class(name, model_type)
        shrink(config, mrope_default(cls, config), keep_head=keep_head)
        with torch.device("meta"):
            n_params = sum(p.numel() for p in cls(copy.deepcopy(config)).parameters())
        if n_params > MAX_PARAMS:
            return f"not built here: {n_params / 1e6:.0f}M parameters after shrinking", {"params": n_params}
        torch.manual_seed(0)
        bare = cls(config).eval()
    except Exception as e:  # noqa: BLE001
        if os.environ.get("COVERAGE_TRACE"):
            traceback.print_exc()
        return f"not built here: {default_builds(name, model_type)}{one_line(e)}", {}
    status = conformance(bare, text_ids(config))
    return status, {"params": n_params, **(structure(bare) if status.startswith("refused") else {})}


def structure(bare: Any) -> dict[str, Any]:
    """What a wrapper table would need, as far as it can be found (JSON only): the decoder layers' path,
    the placeholder-id fields of the config, projector-like modules, and whether hooks_mm's Llama-like
    block table (LLaVA's) describes every decoder layer (``llama_like_block``: True, or the reason not)."""
    from torch import nn

    from hooks_mm.adapters import ADAPTERS, check_backbone

    stacks = [n for n, m in bare.named_modules() if isinstance(m, nn.ModuleList) and n.endswith("layers") and len(m)]
    text_stacks = [n for n in stacks if re.search(r"(language_model|text_model|^model)\.(model\.)?layers$", n)]
    out: dict[str, Any] = {"layers": text_stacks[0] if text_stacks else None}
    out["placeholders"] = sorted(
        k
        for c in [bare.config, *sub_configs(bare.config)]
        for k, v in vars(c).items()
        if re.search(r"(image|video|audio|media).*_(id|index)$", k) and isinstance(v, int)
    )
    marks = ("projector", "merger", "connector", "aligner", "adapter", "mm_proj")
    names = [n for n, _ in bare.named_modules() if any(m in n.rsplit(".", 1)[-1].lower() for m in marks)]
    out["projectors"] = [n for n in names if not any(n.startswith(f"{p}.") for p in names)][:3]  # outermost
    if out["layers"]:
        out["llama_like_block"] = True
        text = bare.config.get_text_config(decoder=True)
        for i, layer in enumerate(bare.get_submodule(out["layers"])):  # every layer: dense then MoE, hybrids
            try:
                check_backbone(ADAPTERS["LlavaForConditionalGeneration"], layer, text, index=i)
            except NotImplementedError as e:
                out["llama_like_block"] = first_clause(str(e))
                break
    return out


def default_builds(name: str, model_type: str) -> str:
    """ "" if the full-size default config builds (on the meta device), else a prefix saying it does not."""
    import torch
    from transformers import CONFIG_MAPPING

    try:
        with torch.device("meta"):
            model_class(name, model_type)(CONFIG_MAPPING[model_type]())
    except Exception:  # noqa: BLE001
        return "its default config does not build either: "
    return ""


def zoo_fallback(row: dict[str, Any], status: str) -> dict[str, Any]:
    """Where the shrunk default config does not build but hooks_mm.zoo has a tiny builder of the family, use it."""
    from hooks_mm.zoo import BUILDERS, build

    if row["family"] not in BUILDERS:
        return {**row, "status": status}
    try:
        bare = (tiny := build(row["family"])).model.eval()
    except Exception as e:  # noqa: BLE001
        return {**row, "status": f"{status}; hooks_mm.zoo builder: {one_line(e)}"}
    if type(bare).__name__ != row["class"]:
        return {**row, "status": status}
    found = conformance(bare, text_ids(bare.config))
    found = conformance(bare, tiny.inputs) if found.startswith(NO_TEXT_PATH) else found  # needs media (BLIP-2)
    if not found.startswith("exact"):
        return {**row, "status": found}
    note = "" if status.startswith("not built here") else f"; the shrunk default config: {status}"
    return {**row, "status": f"{found} (hooks_mm.zoo tiny config{note})"}


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= 160 else text[:157] + "..."


def conformance(bare: Any, ids: Any, wrapped: Any = None) -> str:
    """The status of a built model: wrapped and exact on the text path, refused, or what differs.

    ``ids``: token ids [batch, seq], or a media batch (a zoo builder's inputs: compared at its real positions).
    ``wrapped``: the HF model given to ``HookedMLLM`` (default: a copy of ``bare``).
    """
    import torch

    from hooks_mm import HookedMLLM

    inputs = ids if (media := isinstance(ids, dict)) else {"input_ids": ids}
    with torch.no_grad():
        try:
            ref = bare(**inputs, output_hidden_states=True)
        except Exception as e:  # noqa: BLE001
            return f"{NO_TEXT_PATH} ({one_line(e)})" if not media else f"not built here: {one_line(e)}"
        ref = getattr(ref, "language_model_outputs", None) or ref  # BLIP-2: the LM's hidden states (same logits)
        try:
            model = HookedMLLM(copy.deepcopy(bare) if wrapped is None else wrapped)
        except NotImplementedError as e:
            return f"refused: {first_clause(str(e))}"
        except Exception as e:  # noqa: BLE001
            return f"accepted, then fails: HookedMLLM(): {one_line(e)}"
        try:
            logits = model(inputs)
            _, cache = model.run_with_cache(inputs, names_filter=lambda n: "hook_resid_p" in n)
            all_logits, every = model.run_with_cache(inputs)
        except NotImplementedError as e:
            return f"refused: {first_clause(str(e))}"
        except Exception as e:  # noqa: BLE001
            return f"accepted, then fails: {one_line(e)}"
    real = inputs["attention_mask"].bool() if media and "attention_mask" in inputs else None
    try:
        wrong = differences(model, ref, logits, all_logits, cache, every, real)
    except Exception as e:  # noqa: BLE001
        return f"accepted, then fails: {one_line(e)}"
    if wrong:
        return "accepted but WRONG: " + "; ".join(wrong[:3])
    return "exact (media path: the builder's batch)" if media else "exact (text path)"


def differences(model: Any, ref: Any, logits: Any, all_logits: Any, cache: Any, every: Any, real: Any = None) -> list:
    """What differs from the bare model (empty: exact); after the no-hook logits, at ``real`` positions (None: all)."""
    import torch

    at = (lambda x: x) if real is None else (lambda x: x[real])  # noqa: E731
    wrong = []
    if not torch.equal(logits, ref.logits):
        wrong.append(f"no-hook logits differ by {(logits - ref.logits).abs().max().item():.2e}")
    scale = max(1.0, at(ref.logits).abs().max().item())
    if at(all_logits - ref.logits).abs().max().item() > TOL * scale:
        wrong.append("logits while caching every hook differ")
    n = model.cfg.n_layers
    # HF records a hidden state per layer that runs (Mllama skips its cross-attention layers without an image)
    ran = [l for l in range(n) if f"blocks.{l}.hook_resid_post" in cache]
    if len(ref.hidden_states) != len(ran) + 1:
        wrong.append(f"resid_post fired in {len(ran)} layers, HF gives {len(ref.hidden_states) - 1} hidden states")
        ran = []
    for i, l in enumerate(ran[:-1]):  # HF's last hidden state is after the final norm
        d = at(cache[f"blocks.{l}.hook_resid_post"] - ref.hidden_states[i + 1]).abs().max().item()
        if d > TOL:
            wrong.append(f"resid_post[{l}] != hidden_states[{i + 1}] by {d:.2e}")
            break
    for l in range(n):
        p = f"blocks.{l}."
        for a, b, c in (("resid_pre", "attn_out", "resid_mid"), ("resid_mid", "mlp_out", "resid_post")):
            names = [f"{p}hook_{x}" for x in (a, b, c)]
            if all(k in every for k in names):
                d = at(every[names[0]] + every[names[1]] - every[names[2]]).abs().max().item()
                if d > TOL * max(1.0, at(every[names[2]]).abs().max().item()):
                    wrong.append(f"{c}[{l}] != {a} + {b} by {d:.2e}")
    return wrong


# ---------------------------------------------------------------- workers


def worker(names: list[str]) -> None:
    """Check ``names`` in order, one JSON line per class on stdout (a 'start' line first)."""
    classes = mapping_classes()

    def timeout(*_: Any) -> None:
        raise TimeoutError(f"over {TIME_LIMIT} s")

    signal.signal(signal.SIGALRM, timeout)
    for name in names:
        print(json.dumps({"start": name}), flush=True)
        signal.alarm(TIME_LIMIT)
        try:
            row = check(name, classes[name])
        except TimeoutError as e:
            row = {"class": name, "model_type": classes[name], "status": f"not built here: {e}"}
        finally:
            signal.alarm(0)
        print(json.dumps(row), flush=True)


def run_all(names: list[str]) -> list[dict[str, Any]]:
    """Results for every class, restarting a worker that dies or hangs past the time limit."""
    done: dict[str, dict[str, Any]] = {}
    todo = list(names)
    while todo:
        cmd = [sys.executable, __file__, "--worker", *todo]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        current = None
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 3 * TIME_LIMIT)
            line = proc.stdout.readline() if ready else None
            if not line:
                break
            msg = json.loads(line)
            if "start" in msg:
                current = msg["start"]
                print(f"  {current} ...", file=sys.stderr, flush=True)
            else:
                done[msg["class"]] = msg
                current = None
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if current is not None:
            why = "hung" if proc.returncode in (-9, None) else f"exited with {proc.returncode}"
            done[current] = {"class": current, "model_type": "", "status": f"not built here: worker {why}"}
        todo = [n for n in todo if n not in done]
        if current is None and todo:  # the worker ended without starting a class: do not loop
            for n in todo:
                done[n] = {"class": n, "model_type": "", "status": "not built here: worker ended early"}
            todo = []
    return [done[n] for n in names]


# ---------------------------------------------------------------- table


def kind(status: str) -> str:
    for k in ("exact", "refused", "accepted but WRONG", "accepted, then fails", "not built here", "not decoder-only"):
        if status.startswith(k):
            return k
    return status


def summary(rows: list[dict[str, Any]]) -> str:
    counts = {k: sum(kind(r["status"]) == k for r in rows) for k in ("exact", "refused", "not built here")}
    counts["not decoder-only"] = sum(kind(r["status"]) == "not decoder-only" for r in rows)
    text = f"{len(rows)} classes: " + ", ".join(f"{v} {k}" for k, v in counts.items())
    for bad in ("accepted but WRONG", "accepted, then fails"):
        n = sum(kind(r["status"]) == bad for r in rows)
        text += f", {n} {bad}" if n else ""
    media = sum(kind(r["status"]) == "exact" and bool(conformance_models(r.get("family") or "")) for r in rows)
    return text + f". {media} of the exact classes are also checked with media by tests/test_conformance.py."


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def conformance_models(family: str) -> list[str]:
    """The built-in tiny models of a family (``tiny-<family>``, ``tiny-<family>-video``) that
    tests/test_conformance.py checks with media (positions, plans, projector rows)."""
    from hooks_mm.zoo import BUILDERS

    keys = [
        k
        for k in BUILDERS
        if family and (k == family or k.startswith(f"{family}_") and k[len(family) + 1 :] in SUFFIXES)
    ]
    return [f"tiny-{k.replace('_', '-')}" for k in sorted(keys)]


SUFFIXES = ("video", "audio")


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| class | hooks_mm family | backbone | modalities | status | media conformance |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        fam = f"`{r['family']}`" if r.get("family") else ""
        mods = ", ".join(r.get("modalities") or [])
        tiny = (
            ", ".join(f"`{t}`" for t in conformance_models(r.get("family") or ""))
            if kind(r["status"]) == "exact"
            else ""
        )
        lines.append(
            f"| `{r['class']}` | {fam} | {cell(r.get('backbone') or '')} | {mods} | {cell(r['status'])} | {tiny} |"
        )
    return "\n".join(lines)


def readme_block(rows: list[dict[str, Any]]) -> str:
    return f"{START}\n{summary(rows)}\n\n{table(rows)}\n{END}"


def table_classes(readme: str) -> list[str]:
    """The class names listed in the README's generated table, in order."""
    return [r["class"] for r in table_rows(readme)]


def table_rows(readme: str) -> list[dict[str, str]]:
    """The README's generated table read back: class, family, status (markdown and escapes removed)."""
    block = readme.split(START, 1)[1].split(END, 1)[0]
    rows = []
    for line in block.splitlines():
        if line.startswith("| `"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows.append({"class": cells[0].strip("`"), "family": cells[1].strip("`"), "status": cells[4]})
    return rows


def write_readme(rows: list[dict[str, Any]]) -> None:
    text = README.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} markers: add them where the table goes.")
    head, rest = text.split(START, 1)
    README.write_text(head + readme_block(rows) + rest.split(END, 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", action="store_true", help="rewrite the README table between the markers")
    parser.add_argument("--json", metavar="PATH", help="write the raw results as JSON")
    parser.add_argument("--only", nargs="*", help="check only these class names")
    parser.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args.worker)
    names = list(mapping_classes())
    if args.only:
        names = [n for n in names if n in args.only]
    t0 = time.time()
    rows = run_all(names)
    print(f"{summary(rows)} ({time.time() - t0:.0f} s)", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.readme:
        write_readme(rows)
    else:
        print(table(rows))


if __name__ == "__main__":
    main()
