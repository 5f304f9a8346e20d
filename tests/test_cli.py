"""The hooks-mm command: inspect, demo and the sweep main job."""

from __future__ import annotations

import json

import pandas as pd
import pytest

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
    assert "data:image/png;base64" in report and 'src="http' not in report  # figures inlined, nothing fetched
    assert main(["report", str(run), "--out", str(tmp_path / "again.html")]) == 0
    assert (tmp_path / "again.html").read_text().count("<html") == 1


def test_main_job_on_the_default_organism_scores_the_right_answers(tmp_path, capsys) -> None:  # noqa: ANN001
    """`hooks-mm sweep` with no model runs on toy-llava over held-out image questions; its
    clean metric is the mean log-prob of the right answers, computed here independently."""
    import torch

    from hooks_mm import HookedMLLM
    from hooks_mm.tasks import make_qa
    from hooks_mm.tasks.evaluate import answer_ids, encode
    from hooks_mm.zoo import DEFAULT_MODEL

    assert DEFAULT_MODEL == "toy-llava"
    run = tmp_path / "run"
    assert main(["sweep", "--out", str(run), "--neurons", "4", "--n-examples", "8"]) == 0
    table = pd.read_csv(run / "results.csv")
    meta = json.loads((run / "meta.json").read_text())
    assert meta["model"] == "toy-llava" and meta["batch"][0] == 8 and "right answer" in meta["metric"]
    assert len(table) == 4 * 3 and (table.delta != 0).any()
    model = HookedMLLM.from_pretrained("toy-llava")
    qa = [e for e in make_qa(32, "test", 0) if e.needs_image][:8]
    with torch.no_grad():
        logp = model(encode(model, qa))[:, -1].log_softmax(-1)
    expected = logp[torch.arange(8), answer_ids(model, qa)].mean()
    assert meta["clean_metric"] == pytest.approx(float(expected), abs=1e-5)


def test_sweep_into_a_run_dir_of_another_model_names_the_dir_and_the_fix(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setenv("HOOKS_MM_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["sweep", "tiny-llava", "--out", str(run), "--neurons", "2", "--layers", "0"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # the same --out again: refused, naming both ways on
        main(["sweep", "tiny-qwen2-vl", "--out", str(run), "--neurons", "2", "--layers", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"--out {run} already holds a run (checkpoint.pt, results.csv, meta.json, report.html)" in err
    assert "pass --resume to continue from its checkpoint, --force to overwrite it, or another --out." in err
    with pytest.raises(SystemExit) as e:  # --resume from another model's checkpoint
        main(["sweep", "tiny-qwen2-vl", "--out", str(run), "--neurons", "2", "--layers", "0", "--resume"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"--resume: the checkpoint {run / 'checkpoint.pt'} was written for another model, inputs or metric" in err
    assert f"pass --force to overwrite the run in {run}, or another --out." in err
    (run / "checkpoint.pt").write_bytes(b"")  # an empty file (a killed disk write)
    with pytest.raises(SystemExit):
        main(["sweep", "tiny-llava", "--out", str(run), "--neurons", "2", "--layers", "0", "--resume"])
    err = capsys.readouterr().err
    assert f"the checkpoint {run / 'checkpoint.pt'} is empty (" in err and "): pass --force" in err
