"""Which transformers each family needs, checked where a family is built (``zoo.build``) or loaded.

pyproject allows ``transformers>=LOWEST``: .ci/lowest runs the core families there. The families below
fail there (a class, a processor option or a module layout newer than LOWEST); each is supported from the
version given, the lowest one it was tested with, and refused below it with an error naming it.

Example::

    check_family("aria")   # under transformers 5.9.0: ImportError naming 'transformers>=5.23.0'
"""

from __future__ import annotations

import re

LOWEST = "5.9.0"  # pyproject's lower bound (constraints-lowest.txt)
TESTED = "5.23.0"  # constraints.txt

# family (a zoo.BUILDERS key, also the HF model_type where the two agree) -> lowest transformers tested
NEEDS: dict[str, str] = {
    name: TESTED
    for name in (
        "aria cosmos3_omni cosmos3_omni_video deepseek_vl deepseek_vl_hybrid fun_asr_nano fuyu glm4v_moe "
        "glm4v_moe_video glm_asr got_ocr2 granite_speech granite_speech_plus hyperclovax_vision_v2 "
        "hyperclovax_vision_v2_video idefics2 lfm3_vl lfm3_vl_video llava_onevision llava_onevision_video "
        "minicpm_ocr minicpmv4_6 minicpmv4_7 molmo2 moss_transcribe_diarize ovis2 qwen2_5_omni qwen2_5_omni_thinker "
        "qwen2_audio qwen3_5_moe qwen3_asr qwen3_omni_moe qwen3_omni_moe_thinker qwen3_vl_moe vipllava voxtral"
    ).split()
}


def version_tuple(version: str) -> tuple[int, ...]:
    """``"5.23.0"`` -> ``(5, 23, 0)``; a suffix (``.dev0``, ``rc1``) is dropped."""
    match = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    return tuple(int(g) for g in match.groups() if g is not None) if match else ()


def check_family(family: str, installed: str | None = None) -> None:
    """Raise ImportError when ``family`` needs a newer transformers than the one installed."""
    if installed is None:
        import transformers

        installed = transformers.__version__
    need = NEEDS.get(family)
    if need is not None and version_tuple(installed) < version_tuple(need):
        raise ImportError(
            f"family {family!r} needs transformers>={need} (the lowest version hooks_mm tests it with) and this is "
            f"transformers {installed}: pip install -U 'transformers>={need}'. The core families (llava, qwen2_vl, "
            f"gemma3, idefics3, ...) work from {LOWEST}."
        )


__all__ = ["LOWEST", "NEEDS", "TESTED", "check_family", "version_tuple"]
