"""The README's code blocks run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i: int, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("HOOKS_MM_CACHE", str(tmp_path))
    # dont_inherit: the block runs as a user script would, without this module's `from __future__` flags
    exec(compile(BLOCKS[i], f"README.md block {i}", "exec", dont_inherit=True), {"__name__": f"readme_{i}"})


def test_readme_names_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
