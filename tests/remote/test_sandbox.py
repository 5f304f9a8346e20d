"""The two execution paths of the loopback NDIF stack (scripts/ndif-stack.sh): trusted and sandboxed.

A public NDIF runs a request whose API key has no ``trusted`` tag in a separate runner process
(ndif.services.ray.sandbox) that starts from an allow-listed environment: the operator's variables
(object-store credentials, Redis URL, key table) are not there. A trusted request runs inside the
model actor and sees them. Each test runs once per path (the ``ndif`` fixture).
"""

from __future__ import annotations

import os
import sys

import nnsight
import pytest
import torch

from hooks_mm.remote import load_nnsight

from .conftest import stack_info

pytestmark = [pytest.mark.ndif, pytest.mark.sandboxed]
OPERATOR_SECRETS = ("AWS_SECRET_ACCESS_KEY", "NDIF_REDIS_URL", "NDIF_KEYS_FILE")  # set by scripts/ndif_stack.py


def _where(info: dict) -> tuple[list[str], str]:
    """(operator variables the request can read, the module its process runs as), asked on the server."""
    lm = load_nnsight(info["models"]["tiny-llama"]["path"])
    with lm.trace(torch.tensor([[1, 2, 3]]), remote=info["host"]):
        seen = nnsight.save([k for k in OPERATOR_SECRETS if k in os.environ])
        main = nnsight.save(getattr(sys.modules["__main__"].__spec__, "name", None) or sys.argv[0])
    return list(seen), str(main)


def test_a_request_reads_the_operators_environment_only_on_the_trusted_path(ndif: dict) -> None:
    seen, main = _where(ndif)
    if ndif["path"] == "trusted":
        assert seen == list(OPERATOR_SECRETS), f"a trusted request runs in the model actor, which has them: {seen}"
        assert "sandbox" not in main
    else:
        assert seen == [], f"the sandbox runner must not see the operator's {seen} (ran in {main})"
        assert main == "ndif.services.ray.sandbox.runner"


def test_a_request_without_a_key_is_trusted_and_an_unknown_key_is_refused() -> None:
    info = stack_info()
    before = nnsight.CONFIG.API.APIKEY
    try:
        nnsight.CONFIG.API.APIKEY = ""  # no key: ndif's auth-off mode, trusted by default
        assert _where(info)[0] == list(OPERATOR_SECRETS)
        nnsight.CONFIG.API.APIKEY = "00000000-0000-4000-8000-000000000000"  # well formed, not in the key table
        with pytest.raises(Exception, match="(?i)invalid api key|403"):
            _where(info)
    finally:
        nnsight.CONFIG.API.APIKEY = before
