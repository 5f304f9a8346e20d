"""Tiny-config builders for every supported family, and built-in model names.

``hooks_mm.zoo.build("llava")`` returns a :class:`Tiny` (random weights, example inputs);
``HookedMLLM.from_pretrained("tiny-llava")`` saves that model (and its processor) once
under ``$HOOKS_MM_CACHE`` (default ``~/.cache/hooks_mm``) and loads it from there through
the same ``from_pretrained`` path as a hub model.
"""

from __future__ import annotations

import difflib
import importlib
import os

from hooks_mm.processing import save_processor
from hooks_mm.zoo.base import Tiny, toy_image
from hooks_mm.zoo.versions import check_family

# family -> "module:function" of its builder (a module of this package), imported on build()
BUILDERS: dict[str, str] = {
    "llama": "text:build_llama",
    "anygpt": "text:build_anygpt",
    "anygpt_audio": "text:build_anygpt_audio",
    "llava": "llava:build_llava",
    "llava_next": "llava:build_llava_next",
    "llava_onevision": "llava:build_llava_onevision",
    "qwen2_vl": "qwen:build_qwen2_vl",
    "qwen2_5_vl": "qwen:build_qwen2_5_vl",
    "qwen3_vl": "qwen:build_qwen3_vl",
    "qwen3_vl_moe": "moe:build_qwen3_vl_moe",
    "idefics3": "idefics_gemma:build_idefics3",
    "smolvlm": "idefics_gemma:build_smolvlm",
    "paligemma": "idefics_gemma:build_paligemma",
    "gemma3": "idefics_gemma:build_gemma3",
    "internvl": "idefics_gemma:build_internvl",
    "paligemma2": "idefics_gemma:build_paligemma2",
    "janus": "discrete_cross:build_janus",
    "chameleon": "discrete_cross:build_chameleon",
    "emu3": "discrete_cross:build_emu3",
    "mllama": "discrete_cross:build_mllama",
    "qwen2_vl_video": "qwen:build_qwen2_vl_video",
    "qwen2_5_vl_video": "qwen:build_qwen2_5_vl_video",
    "qwen2_5_omni": "omni:build_qwen2_5_omni",
    "qwen2_audio": "audio:build_qwen2_audio",
    "voxtral": "audio:build_voxtral",
    "llava_onevision_video": "llava:build_llava_onevision_video",
    "video_llava": "llava:build_video_llava",
    "idefics2": "idefics2_deepseek:build_idefics2",
    "deepseek_vl": "idefics2_deepseek:build_deepseek_vl",
    "vipllava": "llava_more:build_vipllava",
    "mistral3": "llava_more:build_mistral3",
    "llava_next_video": "llava_more:build_llava_next_video",
    "cosmos3_omni": "qwen_more:build_cosmos3_omni",
    "cosmos3_omni_video": "qwen_more:build_cosmos3_omni_video",
    "paddleocr_vl": "qwen_more:build_paddleocr_vl",
    "hyperclovax_vision_v2": "qwen_more:build_hyperclovax_vision_v2",
    "hyperclovax_vision_v2_video": "qwen_more:build_hyperclovax_vision_v2_video",
    "videollama3": "qwen_more:build_videollama3",
    "videollama3_video": "qwen_more:build_videollama3_video",
    "exaone4_5": "qwen_more:build_exaone4_5",
    "exaone4_5_video": "qwen_more:build_exaone4_5_video",
    "llama4": "llama4_aria:build_llama4",
    "aria": "llama4_aria:build_aria",
    "qwen3_asr": "audio_more:build_qwen3_asr",
    "glm_asr": "audio_more:build_glm_asr",
    "moss_transcribe_diarize": "audio_more:build_moss_transcribe_diarize",
    "granite_speech": "audio_more:build_granite_speech",
    "granite_speech_plus": "audio_more:build_granite_speech_plus",
    "fun_asr_nano": "audio_more:build_fun_asr_nano",
    "glm4v": "glm_cohere:build_glm4v",
    "glm4v_video": "glm_cohere:build_glm4v_video",
    "glm46v": "glm_cohere:build_glm46v",
    "glm_ocr": "glm_cohere:build_glm_ocr",
    "aya_vision": "glm_cohere:build_aya_vision",
    "cohere2_vision": "glm_cohere:build_cohere2_vision",
    "qwen3_5": "hybrid:build_qwen3_5",
    "lfm2_vl": "hybrid:build_lfm2_vl",
    "lfm3_vl": "hybrid:build_lfm3_vl",
    "lfm3_vl_video": "hybrid:build_lfm3_vl_video",
    "minicpmv4_6": "minicpm:build_minicpmv4_6",
    "minicpm_ocr": "minicpm:build_minicpm_ocr",
    "minicpmv4_7": "minicpm:build_minicpmv4_7",
    "got_ocr2": "ocr:build_got_ocr2",
    "lighton_ocr": "ocr:build_lighton_ocr",
    "qianfan_ocr": "ocr:build_qianfan_ocr",
    "deepseek_vl_hybrid": "ocr:build_deepseek_vl_hybrid",
    "ovis2": "ocr:build_ovis2",
    "gemma4": "gemma4:build_gemma4",
    "gemma4_audio": "gemma4:build_gemma4_audio",
    "fuyu": "fuyu:build_fuyu",
    "molmo2": "molmo2:build_molmo2",
    "kosmos2_5": "kosmos2_5:build_kosmos2_5",
    "blip2": "blip:build_blip2",
    "instructblip": "blip:build_instructblip",
    "instructblipvideo": "blip:build_instructblipvideo",
    "qwen3_5_moe": "moe:build_qwen3_5_moe",
    "glm4v_moe": "glm_cohere:build_glm4v_moe",
    "glm4v_moe_video": "glm_cohere:build_glm4v_moe_video",
    "qwen3_omni_moe": "moe:build_qwen3_omni_moe",
}

DEFAULT_MODEL = "toy-llava"  # a trained organism shipped in the package


def build(name: str, seed: int = 0) -> Tiny:
    """Build the tiny model of a family (``llava``, ``qwen2_vl``, ``anygpt``, ...).

    Example::

        tiny = build("qwen2_vl")
        logits = tiny.model(**tiny.inputs).logits
    """
    if name not in BUILDERS:
        raise KeyError(f"no tiny builder {name!r}; known: {', '.join(sorted(BUILDERS))}")
    check_family(name)  # families newer than pyproject's lowest transformers name the version they need
    module, function = BUILDERS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)(seed=seed)


def cache_dir() -> str:
    return os.environ.get("HOOKS_MM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hooks_mm"))


def save(tiny: Tiny, path: str) -> str:
    """``save_pretrained`` the model and its processor into ``path``."""
    os.makedirs(path, exist_ok=True)
    tiny.model.save_pretrained(path)
    if tiny.processor is not None:
        save_processor(tiny.processor, path)
    return path


def builtin_names() -> list[str]:
    """Every built-in model name: ``tiny-<family>`` (random weights) and the trained organisms."""
    from hooks_mm.zoo.organisms import ORGANISMS

    return [f"tiny-{f.replace('_', '-')}" for f in sorted(BUILDERS)] + sorted(ORGANISMS)


def resolve(name_or_path: str) -> str:
    """A built-in name becomes a local directory; others pass through.

    ``tiny-<family>``: random weights, saved once under :func:`cache_dir`. ``toy-llava``,
    ``toy-anygpt``, ``toy-anygpt-monotune`` and their ``-large`` versions: the trained organisms
    shipped in the package.
    """
    from hooks_mm.zoo.organisms import ORGANISMS

    if name_or_path in ORGANISMS:
        path = ORGANISMS[name_or_path].path
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"organism {name_or_path!r}: no weights in {path}; train them with "
                f"`python scripts/train_organism.py {name_or_path}` (in a clone of the repository)."
            )
        return path
    if name_or_path.startswith("tiny-") and name_or_path[5:].replace("-", "_") in BUILDERS:
        family = name_or_path[5:].replace("-", "_")
        path = os.path.join(cache_dir(), name_or_path)
        if not os.path.isfile(os.path.join(path, "config.json")):
            save(build(family), path + ".tmp")
            os.replace(path + ".tmp", path) if not os.path.exists(path) else None
        return path
    if name_or_path.startswith(("tiny-", "toy-")) and not os.path.exists(name_or_path):
        close = difflib.get_close_matches(name_or_path, builtin_names(), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        names = builtin_names()
        toys = [n for n in names if not n.startswith("tiny-")]
        raise KeyError(
            f"no built-in model {name_or_path!r}.{hint} Pass a built-in name: the organisms {', '.join(toys)}, or "
            f"tiny-<family> for {len(names) - len(toys)} families (hooks_mm.zoo.builtin_names() lists them all)."
        )
    return name_or_path


__all__ = ["BUILDERS", "DEFAULT_MODEL", "Tiny", "build", "builtin_names", "cache_dir", "resolve", "save", "toy_image"]
