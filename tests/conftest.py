"""Shared fixtures: tiny models of every family, built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from hooks_mm import HookedMLLM, zoo  # noqa: E402
from hooks_mm.zoo.organisms import ORGANISMS  # noqa: E402
from hooks_mm.zoo.versions import NEEDS, version_tuple  # noqa: E402

# the tiny random-weight families, then the shipped trained organisms (loaded from the package)
FAMILIES = sorted(zoo.BUILDERS) + sorted(ORGANISMS)
AUDIO_ONLY = (
    "qwen2_audio",
    "voxtral",
    "qwen3_asr",
    "glm_asr",
    "moss_transcribe_diarize",
    "granite_speech",
    "granite_speech_plus",
    "fun_asr_nano",
)  # audio + text: no image positions
VIDEO_ONLY = ("glm4v_video", "glm4v_moe_video")  # video + text: GLM-4V refuses images and videos in one batch
IMAGE_FAMILIES = [f for f in FAMILIES if f != "llama" and f not in AUDIO_ONLY + VIDEO_ONLY]
# families / input cases whose batches hold video or audio positions
VIDEO_FAMILIES = [
    "qwen2_vl_video",
    "qwen2_5_vl_video",
    "qwen2_5_omni",
    "llava_onevision_video",
    "video_llava",
    "llava_next_video",
    "cosmos3_omni_video",
    "hyperclovax_vision_v2_video",
    "videollama3_video",
    "glm4v_video",
    "exaone4_5_video",
    "glm4v_moe_video",
    "qwen3_omni_moe",
    "lfm3_vl_video",
]
AUDIO_FAMILIES = [
    "qwen2_audio",
    "voxtral",
    "qwen2_5_omni",
    "anygpt_audio",
    "qwen3_asr",
    "glm_asr",
    "moss_transcribe_diarize",
    "granite_speech",
    "granite_speech_plus",
    "fun_asr_nano",
    "gemma4_audio",
    "qwen3_omni_moe",
]
# images in each tiny family's example batch, as its builder writes them (none where not listed)
N_IMAGES = {
    **dict.fromkeys(
        [
            "anygpt",
            "chameleon",
            "cosmos3_omni",
            "deepseek_vl",
            "deepseek_vl_hybrid",
            "emu3",
            "gemma3",
            "hyperclovax_vision_v2",
            "got_ocr2",
            "gemma4",
            "idefics2",
            "idefics3",
            "internvl",
            "janus",
            "lighton_ocr",
            "llava",
            "llava_next",
            "llava_onevision",
            "mistral3",
            "mllama",
            "ovis2",
            "molmo2",
            "paligemma",
            "paligemma2",
            "paddleocr_vl",
            "qianfan_ocr",
            "qwen2_5_vl",
            "qwen2_vl",
            "qwen3_vl",
            "qwen3_vl_moe",
            "qwen3_5",
            "qwen3_5_moe",
            "glm4v_moe",
            "lfm2_vl",
            "lfm3_vl",
            "minicpmv4_6",
            "minicpm_ocr",
            "minicpmv4_7",
            "smolvlm",
            "videollama3",
            "vipllava",
            "glm4v",
            "glm46v",
            "glm_ocr",
            "aya_vision",
            "cohere2_vision",
            "exaone4_5",
            "llama4",
            "aria",
        ],
        3,
    ),
    **dict.fromkeys(
        [
            "anygpt_audio",
            "cosmos3_omni_video",
            "hyperclovax_vision_v2_video",
            "llava_next_video",
            "llava_onevision_video",
            "qwen2_5_omni",
            "qwen3_omni_moe",
            "qwen2_5_vl_video",
            "qwen2_vl_video",
            "video_llava",
            "videollama3_video",
            "exaone4_5_video",
            "lfm3_vl_video",
        ],
        1,
    ),
    "fuyu": 2,
    "kosmos2_5": 2,
    "gemma4_audio": 1,
    **dict.fromkeys(["blip2", "instructblip", "instructblipvideo"], 2),  # one image per row (BLIP-2's processor)
}
# worst measured differences, printed at the end of the run
REPORT: dict[str, dict[str, float]] = {}


def record(metric: str, family: str, value: float) -> None:
    REPORT.setdefault(metric, {})[family] = max(value, REPORT.get(metric, {}).get(family, 0.0))


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001
    if not REPORT:
        return
    terminalreporter.section("hooks_mm conformance: worst max-abs differences")
    for metric, per_family in REPORT.items():
        worst = max(per_family, key=per_family.get)
        terminalreporter.write_line(f"{metric:<44} worst {per_family[worst]:.2e} ({worst}, {len(per_family)} families)")


class Pair:
    """A hooked model and an independent bare copy with identical weights."""

    def __init__(self, family: str):
        self.family = family
        if family in ORGANISMS:  # a shipped organism: two loads of the packaged weights
            from hooks_mm.tasks import make_drawings, make_qa
            from hooks_mm.tasks.evaluate import encode

            self.model = HookedMLLM.from_pretrained(family)
            self.bare = HookedMLLM.from_pretrained(family).hf_model
            examples = make_qa(3, "test", 0) + make_drawings(1, "test", 0)  # mixed lengths: padding
            inputs = encode(self.model, examples)
            self.tiny = zoo.Tiny(self.model.hf_model, inputs, self.model.processor)
            self.n_images = len(examples)  # one image per example
        else:
            self.tiny = zoo.build(family)
            self.n_images = N_IMAGES.get(family, 0)
            self.bare = zoo.build(family).model
            self.model = HookedMLLM(self.tiny.model, self.tiny.processor)
        self.inputs = self.tiny.inputs
        am = self.inputs.get("attention_mask")
        self.real = am.bool() if am is not None else torch.ones_like(self.inputs["input_ids"], dtype=torch.bool)

    def fresh_bare(self):  # noqa: ANN201
        """Another independent HF copy with the same weights."""
        if self.family in ORGANISMS:
            return HookedMLLM.from_pretrained(self.family).hf_model
        return zoo.build(self.family).model

    @torch.no_grad()
    def bare_out(self, **kwargs):  # noqa: ANN003
        return lm_outputs(self.bare(**self.inputs, **kwargs))


def lm_outputs(out):  # noqa: ANN001, ANN201
    """The language model's outputs: BLIP-2 / InstructBLIP keep its hidden states and attentions in
    ``language_model_outputs`` (same logits)."""
    inner = getattr(out, "language_model_outputs", None)
    return inner if inner is not None else out


_PAIRS: dict[str, Pair] = {}


def pair_for(family: str) -> Pair:
    # i20: under an older transformers (.ci/lowest), a family newer than it skips instead of failing
    need = NEEDS.get(family)
    if need and version_tuple(transformers.__version__) < version_tuple(need):
        pytest.skip(f"{family} needs transformers>={need}; this is {transformers.__version__}")
    if family not in _PAIRS:
        _PAIRS[family] = Pair(family)
    return _PAIRS[family]


@pytest.fixture(params=FAMILIES)
def pair(request) -> Pair:  # noqa: ANN001
    return pair_for(request.param)


def assert_clean(model: HookedMLLM) -> None:
    """No hook left anywhere: not on hook points, not on the HF modules."""
    assert not any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values())
    for name, mod in model.hf_model.named_modules():  # (transformers keeps hooks of its own)
        for fn in [*mod._forward_hooks.values(), *mod._forward_pre_hooks.values()]:
            assert not getattr(fn, "__module__", "").startswith("hooks_mm"), f"hook left on {name}"
        forward = mod.__dict__.get("forward")  # hooks_mm's MoE forward replaces a block's only while hooked
        assert not getattr(forward, "__module__", "").startswith("hooks_mm"), f"forward left on {name}"
