"""The hooks-mm command: inspect, demo and the sweep main job."""

from __future__ import annotations

import json

import pandas as pd

from hooks_mm.cli import main


def test_inspect_prints_hooks_layers_and_layout(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setenv("HOOKS_MM_CACHE", str(tmp_path))
    assert main(["inspect", "tiny-qwen2-vl"]) == 0
    out = capsys.readouterr().out
    assert "Qwen2VLForConditionalGeneration" in out and "blocks.{l}.mlp.hook_post" in out
    assert "row 1:" in out and "image0" in out


def test_sweep_writes_results_and_meta(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setenv("HOOKS_MM_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["sweep", "tiny-llava", "--out", str(run), "--neurons", "8"]) == 0
    table = pd.read_csv(run / "results.csv")
    meta = json.loads((run / "meta.json").read_text())
    assert len(table) == 8 * 2 and set(table.layer) == {0, 1}
    assert meta["architecture"] == "LlavaForConditionalGeneration" and meta["fast"] == 16
    assert "neurons whose ablation" in capsys.readouterr().out
    report = (run / "report.html").read_text()
    assert "data:image/png;base64" in report and "src=\"http" not in report  # figures inlined, nothing fetched
    assert main(["report", str(run), "--out", str(tmp_path / "again.html")]) == 0
    assert (tmp_path / "again.html").read_text().count("<html") == 1
