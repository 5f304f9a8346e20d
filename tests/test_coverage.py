"""The README's generated support table cannot go stale: it lists every multimodal class transformers has.

Enumeration only, plus one tiny LLaVA that shows the smoke check can fail; ``python scripts/coverage.py
--readme`` builds and checks each class and regenerates the table.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers.models.auto import modeling_auto

from hooks_mm.adapters import ADAPTERS, check_backbone
from hooks_mm.zoo import build

# scripts/coverage.py, loaded by path: the name `coverage` belongs to the coverage.py package
_spec = importlib.util.spec_from_file_location(
    "hooks_mm_coverage", Path(__file__).resolve().parents[1] / "scripts" / "coverage.py"
)
cov = importlib.util.module_from_spec(_spec)
sys.modules["hooks_mm_coverage"] = cov
_spec.loader.exec_module(cov)


def readme() -> str:
    return cov.README.read_text()


def test_enumeration_finds_every_multimodal_class_hooks_mm_registers() -> None:
    classes = cov.mapping_classes()
    text_only = set(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    # (a user's table for a class transformers does not have, as the README example registers, is not counted)
    multimodal = {name for name in ADAPTERS if name not in text_only and hasattr(transformers, name)}
    assert multimodal, "no multimodal adapter registered"
    assert multimodal <= set(classes), f"enumeration misses {sorted(multimodal - set(classes))}"
    # the audio and omni families live outside image-text-to-text: their mappings must be read too
    image_text = set(modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values())
    assert {"Qwen2AudioForConditionalGeneration", "VoxtralForConditionalGeneration"} <= set(classes) - image_text


def test_readme_table_lists_every_enumerated_class_once() -> None:
    listed = cov.table_classes(readme())
    dupes = sorted({n for n in listed if listed.count(n) > 1})
    assert not dupes, f"README coverage table lists {dupes} more than once"
    enumerated = set(cov.mapping_classes())
    missing, extra = sorted(enumerated - set(listed)), sorted(set(listed) - enumerated)
    assert not missing and not extra, (
        f"README coverage table is stale (missing {missing}, not in transformers {extra}): "
        "run `python scripts/coverage.py --readme`"
    )


def test_readme_table_has_no_accepted_but_wrong_row_and_a_true_summary() -> None:
    block = readme().split(cov.START, 1)[1].split(cov.END, 1)[0]
    rows = cov.table_rows(readme())
    assert rows and not [r for r in rows if "accepted but WRONG" in r["status"]]
    assert cov.summary(rows) in block


def test_table_classes_parses_the_generated_block() -> None:
    rows = [
        {
            "class": "AForX",
            "family": "llava",
            "backbone": "llama",
            "modalities": ["image"],
            "status": "exact (text path)",
        },
        {"class": "BForX", "family": "", "backbone": "a|b", "modalities": [], "status": "refused: no | adapter"},
    ]
    text = f"intro\n{cov.readme_block(rows)}\nrest"
    assert cov.table_classes(text) == ["AForX", "BForX"]
    assert [r["status"] for r in cov.table_rows(text)] == ["exact (text path)", "refused: no | adapter"]
    assert "2 classes: 1 exact, 1 refused, 0 not built here, 0 not decoder-only. 1 of the exact" in text
    assert "`tiny-llava`" in text  # llava has a tiny model under the media conformance suite


def test_smoke_check_is_exact_on_llava_and_catches_a_wrong_model() -> None:
    bare = build("llava").model.eval()
    ids = cov.text_ids(bare.config)
    assert cov.conformance(bare, ids) == "exact (text path)"
    wrong = copy.deepcopy(bare)
    with torch.no_grad():
        wrong.model.language_model.layers[0].mlp.down_proj.weight.mul_(1.01)
    status = cov.conformance(bare, ids, wrapped=wrong)
    assert status.startswith("accepted but WRONG: no-hook logits differ"), status


def test_a_forward_that_needs_media_is_checked_on_the_zoo_builders_batch() -> None:
    """BLIP-2 has no text-only forward: the smoke check runs on its hooks_mm.zoo builder's batch (image, padding),
    every check kept, and still catches a wrong model."""
    tiny = build("blip2")
    bare = tiny.model.eval()
    assert cov.conformance(bare, cov.text_ids(bare.config)).startswith(cov.NO_TEXT_PATH)
    assert cov.conformance(bare, tiny.inputs) == "exact (media path: the builder's batch)"
    row = {"class": "Blip2ForConditionalGeneration", "family": "blip2", "backbone": "opt", "modalities": ["image"]}
    status = cov.zoo_fallback(row, f"{cov.NO_TEXT_PATH} (ValueError)")["status"]
    assert status == "exact (media path: the builder's batch) (hooks_mm.zoo tiny config)"
    wrong = copy.deepcopy(bare)
    with torch.no_grad():
        wrong.language_model.model.decoder.layers[0].fc2.weight.mul_(1.01)
    status = cov.conformance(bare, tiny.inputs, wrapped=wrong)
    assert status.startswith("accepted but WRONG: no-hook logits differ"), status


def test_a_backbone_refusal_is_shortened_to_its_reason() -> None:
    """The table cell of a refused block names the backbone and the problem, not the message's first clause."""
    from transformers import OlmoConfig

    text = OlmoConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    text.clip_qkv = 8.0
    layer = transformers.OlmoForCausalLM(text).model.layers[0]
    with pytest.raises(NotImplementedError) as refused:
        check_backbone(ADAPTERS["LlavaForConditionalGeneration"], layer, text, index=0)
    cell = cov.first_clause(str(refused.value))
    assert cell == "backbone olmo has clip_qkv=8.0: attention reads q/k/v clamped after the projections", cell
