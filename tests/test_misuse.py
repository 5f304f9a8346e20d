"""Property-based misuse suite: every misuse in tests/misuse_catalogue.py, on six families.

Each generated call either raises a *clear* error (:func:`clear`: it names the offending
thing and says how to fix it) or returns the right result (equal to an independent
computation within 1e-5); raising or not, no hook is left anywhere and no weight changes.
Hypothesis draws the family, the misuse and its parameters; a plain parametrised test runs
every (misuse, family) pair once more with fixed parameters.

``python tests/test_misuse.py`` prints one line per (misuse, family) with its outcome.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from misuse_catalogue import CATALOGUE
from misuse_support import FAMILIES6, Draw, Env, Misuse, Result

ERRORS = (ValueError, TypeError, IndexError, KeyError, NotImplementedError, RuntimeError, OSError)
FIX_VERBS = (
    "pass|use|call|give|fit|delete|load|move|compile|refit|remove|check|select|pick|set|lower|raise|convert|cast|add|"
    "drop|keep|build|apply|save|install|make|run|wrap|create|return|prepare|put|choose|reload|rebuild|replace|specify|"
    "provide|resample|reduce|start|register|deploy|fix|shorten|split|restart|recompute|compute|tokenize|keep|write"
)
# a fix: an imperative right after ':', ';' or a sentence end (optionally "or"/"then"/"instead"), or "did you mean"
FIX = re.compile(rf"(?:[:;]|[.?!]\s)\s*(?:(?:or|then|instead|either|e\.g\.|first|just),?\s+)?(?:{FIX_VERBS})\b", re.I)
MAX_MESSAGE = 600


def message(e: BaseException) -> str:
    return e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else str(e)


def clear(msg: str, names: tuple[str, ...]) -> bool:
    """Names the offending thing (one of ``names``), says how to fix it, and is short."""
    low = msg.lower()
    fix = FIX.search(msg) is not None or "did you mean" in low
    return len(msg) < MAX_MESSAGE and fix and any(n.lower() in low for n in names)


HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def ours(fn: object) -> bool:
    """Not one of the output-capturing hooks transformers installs on a model's first forward."""
    return not getattr(fn, "__module__", "").startswith("transformers")


def hook_counts(model: object) -> list[int]:
    """Hooks on every module of a HookedMLLM (its hook points and the HF model's modules)."""
    mods = [*model.modules(), *model.hf_model.modules()] if hasattr(model, "hf_model") else [*model.modules()]
    out = [sum(map(ours, getattr(m, d).values())) for m in mods for d in HOOK_DICTS]
    return out + [len(getattr(m, "fwd_hooks", [])) + len(getattr(m, "bwd_hooks", [])) for m in mods]


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode() + p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def global_hooks() -> int:
    from torch.nn.modules import module

    return len(module._global_forward_hooks) + len(module._global_forward_pre_hooks)


def difference(got: object, want: object) -> float | None:
    """Max abs difference (relative to the answer's scale for tensors); None when not comparable."""
    if torch.is_tensor(got) and torch.is_tensor(want):
        if got.shape != want.shape or got.dtype != want.dtype:
            return None
        g, w = got.detach().cpu().double(), want.detach().cpu().double()
        if not (torch.isfinite(g) == torch.isfinite(w)).all():
            return float("inf")
        fin = torch.isfinite(w)
        return float((g[fin] - w[fin]).abs().max() / max(1.0, float(w[fin].abs().max()))) if fin.any() else 0.0
    if isinstance(got, (int, float, bool)) and isinstance(want, (int, float, bool)):
        return abs(float(got) - float(want))
    return None


@dataclass
class Verdict:
    outcome: str  # passes | silent | unclear | wrong error type | leaks hooks | changes weights
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "passes"


def check(case: Misuse, family: str, draw: Draw) -> Verdict:
    """Run one misuse and judge it (the error or the result, then hooks and weights)."""
    env = Env(family)
    shared = [env.model, env.pair.bare]
    before = [(hook_counts(m), digest(m)) for m in shared], global_hooks()
    verdict = Verdict("passes")
    try:
        res = case.run(env, draw)
    except ERRORS as e:
        msg = message(e)
        if not clear(msg, case.names):
            verdict = Verdict("unclear", f"{type(e).__name__}: {msg[:150]!r} (len {len(msg)})")
    except Exception as e:  # noqa: BLE001 (any other type is a finding too)
        verdict = Verdict("wrong error type", f"{type(e).__name__}: {message(e)[:150]!r}")
    else:
        verdict = judge(res)
    after = [(hook_counts(m), digest(m)) for m in shared], global_hooks()
    leaks = [m for m in env.fresh_models if any(hook_counts(m))]
    if after[1] != before[1] or any(a[0] != b[0] for a, b in zip(after[0], before[0])) or leaks:
        verdict = Verdict("leaks hooks", f"{verdict.outcome} {verdict.detail}")
        clean_up(env)
    elif any(a[1] != b[1] for a, b in zip(after[0], before[0])):
        verdict = Verdict("changes weights", f"{verdict.outcome} {verdict.detail}")
    return verdict


def judge(res: Result) -> Verdict:
    diff = difference(res.got, res.want) if res.want is not None else None
    if res.must_raise:
        gap = f"max |diff| vs the right run {diff:.3g}" if diff is not None else f"returned {type(res.got).__name__}"
        return Verdict("silent", f"ran without an error ({gap})")
    if diff is None:
        return Verdict("silent", f"returned {short(res.got)}, expected {short(res.want)}")
    if diff > 1e-5:
        return Verdict("silent", f"max |diff| {diff:.3g} vs the independent computation")
    return Verdict("passes")


def short(x: object) -> str:
    return f"tensor{tuple(x.shape)} {x.dtype}" if torch.is_tensor(x) else repr(x)[:60]


def clean_up(env: Env) -> None:
    """After a leak: remove every hook, so one failure does not spread to other cases."""
    for m in [env.model, *env.fresh_models]:
        m.reset_hooks(including_permanent=True)
    for m in [env.model.hf_model, env.pair.bare, *(f.hf_model for f in env.fresh_models)]:
        for mod in m.modules():
            for d in HOOK_DICTS:
                for key in [k for k, fn in getattr(mod, d).items() if ours(fn)]:
                    del getattr(mod, d)[key]


def seeded(case: Misuse, family: str) -> Draw:
    rng = random.Random(f"{case.name}/{family}")
    return Draw(rng.choice)


PAIRS = [(c, f) for c in CATALOGUE for f in c.families]


def test_catalogue_is_large_and_named_once() -> None:
    names = [c.name for c in CATALOGUE]
    assert len(names) >= 40 and len(set(names)) == len(names)


def test_clear_accepts_a_fix_and_refuses_a_bare_complaint() -> None:
    assert clear("Steer: vector has shape (3,) but the hook has width 64: give 64 numbers.", ("vector",))
    assert clear("checkpoint x.pt is corrupt; delete it.", ("x.pt",))
    assert not clear("index out of range in self", ("input_ids",))
    assert not clear("layers [5] out of range for a 2-layer model (0..1).", ("layers",))  # no fix
    assert not clear("vector: pass 64 numbers" + "." * MAX_MESSAGE, ("vector",))  # too long


@pytest.mark.parametrize(("case", "family"), PAIRS, ids=[f"{c.name}-{f}" for c, f in PAIRS])
def test_each_misuse_on_each_family(case: Misuse, family: str) -> None:
    v = check(case, family, seeded(case, family))
    assert v.ok, f"{case.name} on {family}: {v.outcome}: {v.detail}"


@settings(
    derandomize=True,
    deadline=None,
    max_examples=60,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: a failure reports the example drawn
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(family=st.sampled_from(FAMILIES6), case=st.sampled_from(CATALOGUE), data=st.data())
def test_misuse_property(family: str, case: Misuse, data: st.DataObject) -> None:
    family = family if family in case.families else case.families[FAMILIES6.index(family) % len(case.families)]
    v = check(case, family, Draw(lambda options: data.draw(st.sampled_from(options))))
    assert v.ok, f"{case.name} on {family}: {v.outcome}: {v.detail}"


if __name__ == "__main__":  # the outcome table
    only = sys.argv[1:]
    for c, f in PAIRS:
        if not only or c.name in only:
            v = check(c, f, seeded(c, f))
            print(f"{c.name}\t{f}\t{v.outcome}\t{v.detail}", flush=True)
