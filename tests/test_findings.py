"""The README's findings table: each finding is measured on the organisms and its verdict
follows from its numbers."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from findings import findings, markdown  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_findings_are_measured_and_judged_by_their_numbers() -> None:
    rows = findings(n=32)
    by = {r.name.split(":")[0].split(" (")[0]: r for r in rows}
    assert len(rows) == 6
    assert all(math.isfinite(v) for r in rows for v in r.measured.values())
    e = by["centroid erasure"].measured
    assert by["centroid erasure"].holds == (e["text_cost"] > e["visual_cost"]) and 0 <= e["clean"] <= 1
    b = by["text-centric bias"].measured
    assert by["text-centric bias"].holds == (b["bias_monotune"] < b["bias_paired"])
    for r in rows:
        if r.name.startswith("masking"):
            assert r.holds == (r.measured["image_ppl_x"] > r.measured["text_ppl_x"])
    a = by["implicit alignment"].measured
    assert (
        by["implicit alignment"].holds == (a["cos_image_text"] < a["cos_image_image"])
        and -1 <= a["cos_image_text"] <= 1
    )
    table = markdown(rows)
    assert table.count("\n") == len(rows) + 1 and all(f"`{r.model}`" in table for r in rows)
