"""Families newer than pyproject's lowest transformers: refused with the version they need, where built or loaded."""

from __future__ import annotations

import pytest
import transformers

from hooks_mm import HookedMLLM, zoo
from hooks_mm.zoo.versions import LOWEST, NEEDS, TESTED, check_family, version_tuple


def test_version_tuple_orders_releases() -> None:
    assert version_tuple("5.9.0") < version_tuple("5.23.0") < version_tuple("6.0.0")
    assert version_tuple("5.24.0.dev0") == (5, 24, 0) and version_tuple("5.10.0rc1") == (5, 10, 0)


def test_the_table_names_builder_families_and_the_pyproject_bounds() -> None:
    assert {f for f in NEEDS if f in zoo.BUILDERS} == {f for f in NEEDS if not f.endswith("_thinker")}
    text = open("pyproject.toml").read() if __import__("os").path.isfile("pyproject.toml") else ""
    if text:  # run from a clone: pyproject's lower bound is LOWEST, constraints.txt pins TESTED
        assert f'"transformers>={LOWEST},<6"' in text
        assert f"transformers=={TESTED}" in open("constraints.txt").read()


def test_check_family_names_the_version_needed() -> None:
    with pytest.raises(ImportError, match=r"family 'aria' needs transformers>=5\.23\.0.*this is transformers 5\.9\.0"):
        check_family("aria", installed="5.9.0")
    check_family("aria", installed="5.23.0")
    check_family("llava", installed=LOWEST)


OLDER = version_tuple(transformers.__version__) < version_tuple(TESTED)


@pytest.mark.skipif(OLDER, reason="builds vipllava, which needs the tested transformers")
def test_build_and_load_are_refused_under_an_older_transformers(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    zoo.save(zoo.build("vipllava"), str(tmp_path))  # built under the installed (tested) version
    monkeypatch.setattr(transformers, "__version__", LOWEST)
    with pytest.raises(ImportError, match=r"family 'vipllava' needs transformers>="):
        zoo.build("vipllava")
    with pytest.raises(ImportError, match=r"family 'vipllava' needs transformers>="):
        HookedMLLM.from_pretrained(str(tmp_path))
    with pytest.raises(ImportError, match=r"family 'vipllava' needs transformers>="):
        HookedMLLM.from_config(str(tmp_path))
    zoo.build("llava")  # a core family still builds


@pytest.mark.skipif(not OLDER, reason="runs under an older transformers (.ci/lowest)")
def test_every_newer_family_is_refused_under_the_installed_transformers() -> None:
    for family in sorted(f for f in NEEDS if f in zoo.BUILDERS):
        with pytest.raises(ImportError, match=f"family '{family}' needs transformers>="):
            zoo.build(family)
