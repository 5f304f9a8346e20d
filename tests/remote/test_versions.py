"""Server nnsight versions: key formats, version detection, the key the client sends, the errors.

The fast tests serve a recorded ``/status`` + ``/env`` (tests/remote/data/recorded_status.json: the
real NDIF 0.1.2 stack on nnsight 0.8.1, and the same recording with its keys rewritten to the keys
real nnsight 0.7.0 gives those checkpoints; a recorded response, not a real 0.7 server) from a tiny
local HTTP server. The ``ndif`` test reads the real stack's status. The suite runs under every
nnsight the client supports (``.ci/lowest`` runs it under the lowest).
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nnsight
import pytest

from hooks_mm import HookedMLLM
from hooks_mm.remote import ModelNotDeployedError, NNsightBackend, VersionMismatchError, load_nnsight, remote_sweep
from hooks_mm.remote.versions import (
    SUPPORTED,
    CheckpointId,
    client_series,
    key_for,
    parse_key,
    resolve_key,
    server_info,
)
from hooks_mm.sweep import answer_logprob, single_neurons

from .cases import inputs_for

RECORDED = json.loads((Path(__file__).parent / "data" / "recorded_status.json").read_text())
TASKS = {"tiny-llama": "text-generation", "tiny-llava": "image-text-to-text"}
OTHER = {"0.7": "0.8", "0.8": "0.7"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llama and tiny-llava saved as local checkpoints (their path is the repo id in their keys)."""
    root = tmp_path_factory.mktemp("models")
    for name in TASKS:
        model = HookedMLLM.from_pretrained(name)
        model.hf_model.save_pretrained(root / name)
        model.processor.save_pretrained(root / name)
    return root


class _Server(http.server.BaseHTTPRequestHandler):
    answers: dict[str, Any] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.answers.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(json.dumps(body if body is not None else {"detail": "Not Found"}).encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Any]:
    """``serve(answers)``: a local HTTP server answering ``{path: json}``; returns its URL."""
    servers = []

    def start(answers: dict[str, Any]) -> str:
        handler = type("Handler", (_Server,), {"answers": answers})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()


def recorded(fmt: str, models: Path, env: bool = True) -> dict[str, Any]:
    """The recorded answers of a server of nnsight series ``fmt``, keyed to the checkpoints in ``models``."""
    answers = json.loads(json.dumps(RECORDED[fmt]).replace("{models}", str(models)))
    return {"/status": answers["status"], **({"/env": answers["env"]} if env else {})}


def test_the_installed_nnsight_is_one_the_client_supports() -> None:
    assert client_series() in SUPPORTED, f"nnsight {nnsight.__version__} is outside pyproject's range"


@pytest.mark.parametrize("name", list(TASKS))
def test_key_computation_matches_the_installed_nnsight(models: Path, name: str) -> None:
    lm = load_nnsight(str(models / name))
    ckpt = CheckpointId(str(models / name), None, TASKS[name])
    assert lm.to_model_key() == key_for(ckpt, client_series())  # nnsight's own key for this checkpoint
    assert parse_key(lm.to_model_key()) == (client_series(), ckpt)
    # the other series' key, as the recording (real nnsight 0.7.0 / the real 0.8.1 stack) has it
    other = key_for(ckpt, OTHER[client_series()])
    assert other in json.dumps(recorded(OTHER[client_series()], models)).replace('\\"', '"')


@pytest.mark.parametrize("fmt", ["0.7", "0.8"])
def test_version_and_keys_are_read_from_status_and_env(serve: Any, models: Path, fmt: str) -> None:
    info = server_info(serve(recorded(fmt, models)))
    assert info.nnsight == {"0.7": "0.7.0", "0.8": "0.8.1"}[fmt] and info.series == fmt
    assert len(info.keys) == 2 and all(parse_key(k[k.find("nnsight.") :])[0] == fmt for k in info.keys)
    # a server without /env (a public NDIF may have none): the series comes from its key format
    bare = server_info(serve(recorded(fmt, models, env=False)))
    assert bare.nnsight is None and bare.series == fmt and bare.keys == info.keys
    assert f"nnsight {fmt} (from its model keys)" == bare.describe()


@pytest.mark.parametrize("fmt", ["0.7", "0.8"])
@pytest.mark.parametrize("name", list(TASKS))
def test_the_client_speaks_the_servers_key_format_or_names_both_versions(
    serve: Any, models: Path, fmt: str, name: str
) -> None:
    lm = load_nnsight(str(models / name))
    host = serve(recorded(fmt, models))
    server_key = key_for(CheckpointId(str(models / name), None, TASKS[name]), fmt)
    if fmt == client_series():  # the client's own series: it sends the key the server deploys
        assert resolve_key(lm, server_info(host)) == server_key == lm.to_model_key()
        return
    with pytest.raises(VersionMismatchError) as err:
        resolve_key(lm, server_info(host))
    msg = str(err.value)
    server_version = RECORDED[fmt]["env"]["packages"]["nnsight"]
    assert f"runs nnsight {server_version} and this client nnsight {nnsight.__version__}" in msg
    assert server_key in msg and lm.to_model_key() in msg
    assert f"pip install 'nnsight=={server_version}'" in msg
    with pytest.raises(VersionMismatchError, match=rf"runs nnsight {fmt} \(from its model keys\)"):
        resolve_key(lm, server_info(serve(recorded(fmt, models, env=False))))


def test_a_model_deployed_under_neither_format_is_not_deployed_with_close_keys(serve: Any, models: Path) -> None:
    ckpt = CheckpointId(str(models / "tiny-llava"), None, "image-text-to-text")
    lm = load_nnsight(str(models / "tiny-llava"))
    other_revision = key_for(CheckpointId(ckpt.repo_id, "v2", ckpt.task), client_series())
    unrelated = key_for(CheckpointId("org/unrelated-model", None, "text-generation"), client_series())
    host = serve({"/status": {"deployments": {f"1:ModelActor:{k}": {} for k in (other_revision, unrelated)}}})
    with pytest.raises(ModelNotDeployedError) as err:
        resolve_key(lm, server_info(host))
    msg = str(err.value)
    close = msg.split("close to this one")[1]
    assert other_revision in close and unrelated not in close
    assert "Deploy it (`ndif deploy`)" in msg


def test_a_sweep_against_another_series_fails_before_any_request(serve: Any, models: Path) -> None:
    model = HookedMLLM.from_pretrained(str(models / "tiny-llama"))
    inputs, _ = inputs_for(model)
    backend = NNsightBackend(model, load_nnsight(str(models / "tiny-llama"), processor=model.processor))
    host = serve(recorded(OTHER[client_series()], models))
    with pytest.raises(VersionMismatchError, match="cannot load an nnsight"):
        remote_sweep(
            backend,
            inputs,
            single_neurons(model, 0, neurons=[0]),
            answer_logprob(model, inputs),
            remote=host,
            retries=0,
            progress=False,
        )
    assert backend.stats.requests == 0 and backend.stats.bytes_sent == 0


@pytest.mark.ndif
def test_the_real_stack_reports_its_version_and_keys(ndif: dict, serve: Any) -> None:
    import urllib.request

    info = server_info(ndif["host"])
    assert info.series == "0.8" and info.nnsight is not None
    for m in ndif["models"].values():
        lm = load_nnsight(m["path"])
        if client_series() == "0.8":
            assert resolve_key(lm, info) == m["key"] == lm.to_model_key()
        else:  # an nnsight 0.7 client against the real 0.8 server: both versions named, nothing sent
            with pytest.raises(
                VersionMismatchError, match=rf"runs nnsight {info.nnsight} and this client nnsight 0\.7"
            ):
                resolve_key(lm, info)
    if client_series() != "0.8":
        return
    path = ndif["models"]["tiny-llama"]["path"]
    model = HookedMLLM.from_pretrained(path)
    inputs, _ = inputs_for(model)
    out = remote_sweep(
        NNsightBackend(model, load_nnsight(path, processor=model.processor)),
        inputs,
        single_neurons(model, 0, neurons=[0]),
        answer_logprob(model, inputs),
        remote=ndif["host"],
        progress=False,
    )
    assert out.meta["server_nnsight"] == info.nnsight
    # the same live answer with its keys in 0.7's format (rewritten here: not a real 0.7 server)
    with urllib.request.urlopen(ndif["host"] + "/status") as r:
        status = r.read().decode()
    for name, m in ndif["models"].items():
        ckpt = CheckpointId(m["path"], None, m["task"])
        status = status.replace(json.dumps(key_for(ckpt, "0.8"))[1:-1], json.dumps(key_for(ckpt, "0.7"))[1:-1])
    assert "VisionLanguageModel" in status
    host = serve({"/status": json.loads(status), "/env": {"packages": {"nnsight": "0.7.0"}}})
    with pytest.raises(VersionMismatchError, match=r"runs nnsight 0\.7\.0 and this client nnsight 0\.8"):
        resolve_key(load_nnsight(ndif["models"]["tiny-llava"]["path"]), server_info(host))


def test_the_request_size_limit_holds_under_every_supported_nnsight(models: Path) -> None:
    """nnsight_compat meters the payload through 0.7's request() or 0.8's _serialize(): refused before sending."""
    from hooks_mm.remote import RequestTooLargeError

    model = HookedMLLM.from_pretrained(str(models / "tiny-llama"))
    inputs, _ = inputs_for(model)
    lm = load_nnsight(str(models / "tiny-llama"), processor=model.processor)
    backend = NNsightBackend(model, lm, max_request_bytes=1000)
    plan = backend.plan([single_neurons(model, 0, neurons=[0])[0]], inputs)
    with pytest.raises(RequestTooLargeError, match=r"serialises to [\d,]+ bytes, over max_request_bytes=1,000"):
        backend.execute([plan], remote="http://127.0.0.1:9", blocking=False)  # nothing listens there
    assert backend.stats.bytes_sent == 0


def test_a_server_of_another_version_listing_this_key_warns(serve: Any, models: Path) -> None:
    """The key matches but /env names another series (e.g. a future 0.9 that kept the key format): a warning
    that says both versions, and the key is used."""
    answers = recorded(client_series(), models)
    answers["/env"] = {"packages": {"nnsight": "0.9.0"}}
    lm = load_nnsight(str(models / "tiny-llama"))
    with pytest.warns(UserWarning, match=rf"runs nnsight 0\.9\.0 and this client nnsight {nnsight.__version__}"):
        assert resolve_key(lm, server_info(serve(answers))) == lm.to_model_key()
