"""ndif 0.1.2's API app with API keys read from a file (``$NDIF_KEYS_FILE``) instead of Postgres.

A public NDIF checks each request's ``ndif-api-key`` against its key database and runs the request
in its process only when the key carries the ``trusted`` user tag; every other request goes through
the sandbox (ndif.services.ray.sandbox). This stack has no Postgres, so it replaces
``ndif.services.api.auth.verify_api_key`` with the same policy over a JSON file that
scripts/ndif_stack.py writes at ``up``: ``{key: {"user": ..., "tags": [...]}}``, one key tagged
``trusted`` and one untagged (their values are in ``stack.json`` under ``keys``):

* a key in the file: its tags decide (``trusted`` -> in-process; none -> sandboxed);
* a malformed key: 400, a well-formed unknown one: 403 (as ndif's Postgres path);
* no key: ndif's auth-off mode (trusted unless the request says ``trusted: false``), so
  clients that send none keep working as before.

Served as ``gunicorn ... ndif_api:app`` with scripts/ on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from fastapi import HTTPException
from ndif.services.api import app as _app
from ndif.services.api import auth
from ndif.services.api.auth import Identity


async def verify_api_key(api_key: str | None) -> Identity | None:
    if not api_key:
        return None
    try:
        uuid.UUID(api_key)
    except (ValueError, TypeError):
        raise HTTPException(status_code=400, detail=f"Invalid API key format: '{api_key}'.") from None
    keys = json.loads(Path(os.environ["NDIF_KEYS_FILE"]).read_text())
    if api_key not in keys:
        raise HTTPException(status_code=403, detail="Invalid API key.")
    entry = keys[api_key]
    return Identity(key_id=api_key, user_id=entry["user"], email=entry.get("email"), user_tags=list(entry["tags"]))


auth.verify_api_key = verify_api_key  # validate_request looks it up in auth's globals
_app.verify_api_key = verify_api_key  # /whoami imported the name
app = _app.app
