"""The README's controlled findings table (python -m hooks_mm.analysis.findings): each row's verdict follows from
its interval and control."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_controlled_table_judges_each_row_by_its_interval_and_control() -> None:
    """Each row of the README's controlled table agrees exactly when its effect interval lies beyond the control's
    range (or above zero), on 200 held-out examples."""
    lines = README.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("| finding | organism | expected | effect")]
    assert len(starts) == 2, "one table for the small organisms, one for the large"
    rows = [row for start in starts for row in lines[start + 2 : lines.index("", start)]]
    assert len(rows) >= 2 * 17
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        lo, hi = (float(x) for x in re.match(r"-?[\d.e-]+ \[(-?[\d.e-]+), (-?[\d.e-]+)\]", cells[3]).groups())
        bound = float(re.search(r"\[-?[\d.e-]+, (-?[\d.e-]+)\]", cells[4]).group(1)) if "random" in cells[4] else 0.0
        assert lo <= hi and cells[5] == "200" and cells[6] == ("yes" if lo > bound else "no"), row


def test_the_readme_has_no_uncontrolled_findings_table() -> None:
    """The uncontrolled table (scripts/findings.py, retired) is gone: its command and its header."""
    text = README.read_text()
    assert "python scripts/findings.py" not in text
    assert "| finding | organism | expected | measured | agrees |" not in text
