"""The weightless client against the loopback NDIF stack (scripts/ndif-stack.sh up): sweeps equal the local
sweep, a 7B-size client runs end to end, and ``hooks-mm sweep --remote`` never opens the weights file.

Every test here is marked ``ndif`` and skips, saying why, when the stack does not answer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from hooks_mm import HookedMLLM, Image, NonPad
from hooks_mm.interventions import Steer
from hooks_mm.remote import NNsightBackend, load_nnsight, remote_sweep
from hooks_mm.sweep import answer_logprob, kl_to_clean, single_neurons, sweep

from .cases import inputs_for
from .weightless_cases import all_meta, big_llava

pytestmark = pytest.mark.ndif
TOL = 1e-6
ROOT = Path(__file__).resolve().parents[2]


def test_weightless_sweep_on_ndif_equals_the_local_sweep(ndif: dict) -> None:
    path = ndif["models"]["tiny-llava"]["path"]
    full, client = HookedMLLM.from_pretrained(path), HookedMLLM.from_config(path)
    inputs, _ = inputs_for(full)
    configs = single_neurons(client, layers=[0, 1], positions=Image(), neurons=range(0, 128, 8))
    configs += [Steer(1, vector=[0.05 * i] * client.cfg.d_model, positions=NonPad()) for i in range(1, 3)]
    for make in (answer_logprob, kl_to_clean):
        ref = sweep(full, inputs, configs, make(full, inputs), progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no weights check can warn: there is nothing local to compare
            out = remote_sweep(
                client, inputs, configs, make(client, inputs), remote=ndif["host"], max_configs_per_request=16,
                progress=False,
            )  # fmt: skip
        assert (ref.values - out.values).abs().max() <= TOL and (ref.clean - out.clean).abs().max() <= TOL
        assert ref.values.std() > 1e-4
        assert out.meta["requests"] == 1 + -(-(len(configs) + 1) // 16)
        assert out.meta["weights_check"].startswith("skipped: the client holds no weights")
    assert all_meta(client)


def test_a_7b_size_client_runs_end_to_end_against_a_small_model_under_the_same_key(ndif: dict) -> None:
    """The client holds LLaVA-1.5-7B's language-model shapes on meta (6.5 B parameters, no memory); the stack
    serves tiny-llava under the key the client addresses. The values are tiny-llava's, so they must equal its local
    sweep: the layout, plans and requests the 7B-size client built are exactly the small model's for these edits."""
    path = ndif["models"]["tiny-llava"]["path"]
    big, full = big_llava(path), HookedMLLM.from_pretrained(path)
    assert all_meta(big) and big.cfg.n_layers == 32
    lm = load_nnsight(path, processor=big.processor)
    assert lm.to_model_key() == ndif["models"]["tiny-llava"]["key"]
    backend = NNsightBackend(big, lm, check_model=False)  # the stand-in server: shapes differ on purpose
    inputs, _ = inputs_for(big)
    configs = single_neurons(big, layers=[0, 1], positions=Image(), neurons=range(0, 128, 16))  # fit both
    out = remote_sweep(backend, inputs, configs, answer_logprob(big, inputs), remote=ndif["host"], progress=False)
    ref = sweep(full, inputs, configs, answer_logprob(full, inputs), progress=False)
    assert (ref.values - out.values).abs().max() <= TOL and (ref.clean - out.clean).abs().max() <= TOL
    assert out.meta["weights_check"].startswith("skipped")


def _opened(trace: Path) -> list[str]:
    return [line for line in trace.read_text().splitlines() if "open" in line and ".safetensors" in line]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to watch which files the CLI opens")
def test_cli_sweep_remote_never_opens_the_weights(ndif: dict, tmp_path: Path) -> None:
    path = ndif["models"]["tiny-llava"]["path"]
    trace, out = tmp_path / "trace.txt", tmp_path / "run"
    strace = ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace)]
    # control: loading the model opens its safetensors file, so this watch can see it
    subprocess.run(
        [*strace, sys.executable, "-c", f"from hooks_mm import HookedMLLM; HookedMLLM.from_pretrained({path!r})"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    assert _opened(trace), "strace saw no .safetensors open even for from_pretrained: the check below is blind"
    args = ["-m", "hooks_mm.cli", "sweep", path, "--remote", ndif["host"], "--layers", "1", "--neurons", "4"]
    run = subprocess.run(
        [*strace, sys.executable, *args, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert not _opened(trace), f"the --remote CLI opened the weights: {_opened(trace)[:2]}"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["client_weights"].startswith("none (weightless client") and meta["remote"] == ndif["host"]
    assert meta["nnsight"] == 4 and meta["weights_check"].startswith("skipped")
    assert "weights    none" in run.stdout  # inspect says so too
