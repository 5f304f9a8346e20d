"""The README's findings table: each finding is measured on the organisms and its verdict
follows from its numbers."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from findings import findings, markdown  # noqa: E402

from hooks_mm import After, Image  # noqa: E402
from hooks_mm.interventions.centroid import default_layer  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


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
    assert (e["text_layer"], e["visual_layer"]) == (default_layer(3, After(Image())), default_layer(3, Image()))
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


def test_the_readme_erasure_row_agrees_with_its_depth_table_and_the_protocol_depths() -> None:
    """The README's erasure finding (K = 256 at the protocol depths) is the K = 256 column of
    its per-depth table at those depths, and its verdict follows from its numbers."""
    lines = README.read_text().splitlines()
    row = next(line for line in lines if line.startswith("| centroid erasure") and "text_layer" in line)
    nums = {k: float(v) for k, v in re.findall(r"(\w+) (-?[\d.]+)", row.split("|")[4])}
    start = lines.index(next(line for line in lines if line.startswith("| block input |"))) + 2
    table = lines[start : lines.index("", start)]
    depth = {cells[1].strip(" `"): [float(c) for c in cells[2:-1]] for cells in (line.split("|") for line in table)}
    assert len(depth) == 3
    text_layer, visual_layer = int(nums["text_layer"]), int(nums["visual_layer"])
    assert (text_layer, visual_layer) == (default_layer(3, After(Image())), default_layer(3, Image()))
    assert depth[f"blocks.{text_layer}.hook_resid_pre"][0] == pytest.approx(nums["text_cost"], abs=5e-3)
    assert depth[f"blocks.{visual_layer}.hook_resid_pre"][3] == pytest.approx(nums["visual_cost"], abs=5e-3)
    assert row.endswith("| yes |") == (nums["text_cost"] > nums["visual_cost"])


def test_the_readme_controlled_table_judges_each_row_by_its_interval_and_control() -> None:
    """Each row of the README's controlled table (python -m hooks_mm.analysis.findings) agrees exactly when its
    effect interval lies beyond the control's range (or above zero)."""
    lines = README.read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| finding | organism | expected | effect")))
    rows = lines[start + 2 : lines.index("", start)]
    assert len(rows) == 9
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        lo, hi = (float(x) for x in re.match(r"-?[\d.e-]+ \[(-?[\d.e-]+), (-?[\d.e-]+)\]", cells[3]).groups())
        bound = float(re.search(r"\[-?[\d.e-]+, (-?[\d.e-]+)\]", cells[4]).group(1)) if "random" in cells[4] else 0.0
        assert lo <= hi and cells[5] == "200" and cells[6] == ("yes" if lo > bound else "no"), row
