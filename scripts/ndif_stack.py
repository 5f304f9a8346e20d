"""A real NDIF stack on 127.0.0.1 for tests: ``scripts/ndif-stack.sh up|down|status``.

Runs under the stack's own interpreter (``scripts/ndif-stack.sh`` installs ``.ndif-venv``
and Redis first); the tiny models are built and saved by hooks_mm's interpreter
(``$HOOKS_MM_PYTHON``, default ``.venv/bin/python``). ``up`` starts, each bound to 127.0.0.1 and recorded
by PID in the state dir: Redis, an S3 stand-in (moto), the Ray head (with a fake GPU and a
``cuda_memory_bytes`` resource, which the controller requires), the NDIF controller, the
NDIF API (gunicorn), then saves two tiny models (``tiny-llama``, ``tiny-llava`` from
``hooks_mm.zoo``) and deploys them pinned, on the CPU actor of
``scripts/ndif_actor.py`` (trusted requests in the actor, the rest in ndif's sandbox
runners). The API (``scripts/ndif_api.py``) reads API keys from ``keys.json``: ``up`` writes one
tagged ``trusted`` and one untagged (a public NDIF user's) and lists them in ``stack.json``
under ``keys``. ``down`` stops every recorded process (PID checked against its start time),
its process group and descendants, and everything in the stack's network namespace, SIGKILL
after 10 s, then checks by PID and by port that nothing remains (scripts/ndif_procs.py);
it is idempotent, and ``up`` over a crashed stack's records cleans them first. Never
``ndif start``: it binds 0.0.0.0.

Environment: ``NDIF_STATE`` (state dir, default ``.ndif-state``); the two ports the host
sees, ``NDIF_API_PORT`` (8001) and ``NDIF_S3_PORT`` (9000): when not set and taken, free
ones are picked (the host URL is written to ``stack.json``); inside the namespace
``NDIF_REDIS_PORT`` (6379), ``NDIF_RAY_PORT`` (6385), ``NDIF_RAY_DASHBOARD_PORT`` (8265),
``NDIF_RAY_CLIENT_PORT`` (10001).

Example::

    scripts/ndif-stack.sh up          # ~1 min; prints the host and the model keys
    NDIF_HOST=http://127.0.0.1:8001 pytest -m ndif tests/remote
    scripts/ndif-stack.sh down
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import ndif_procs as procs

HOST = "127.0.0.1"
MODELS = {"tiny-llama": ("llama", "text-generation"), "tiny-llava": ("llava", "image-text-to-text")}
MODEL_CLASS = "nnsight.modeling.transformers.TransformersModel"


def _port(name: str, default: int) -> int:
    """$NAME, else the port this stack was started with (state dir), else ``default``."""
    if name in os.environ:
        return int(os.environ[name])
    saved = Path(os.environ.get("NDIF_STATE", ".ndif-state")).resolve() / "ports.json"
    return int(json.loads(saved.read_text()).get(name, default)) if saved.exists() else default


PORTS = {
    "api": _port("NDIF_API_PORT", 8001),
    "redis": _port("NDIF_REDIS_PORT", 6379),
    "s3": _port("NDIF_S3_PORT", 9000),
    "ray": _port("NDIF_RAY_PORT", 6385),
    "dashboard": _port("NDIF_RAY_DASHBOARD_PORT", 8265),
    "ray_client": _port("NDIF_RAY_CLIENT_PORT", 10001),
}


def state_dir() -> Path:
    return Path(os.environ.get("NDIF_STATE", ".ndif-state")).resolve()


def api_url() -> str:
    return f"http://{HOST}:{PORTS['api']}"


def model_dir(name: str) -> str:
    return str(state_dir() / "models" / name)


def model_key(name: str) -> str:
    """The key nnsight's ``TransformersModel(model_dir(name), task=...)`` mints for a saved model."""
    task = MODELS[name][1]
    return f"{MODEL_CLASS}:" + json.dumps({"repo_id": model_dir(name), "revision": None, "task": task})


SCRIPTS = str(Path(__file__).resolve().parent)


def _env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [SCRIPTS, os.environ.get("PYTHONPATH")])),
        "NDIF_KEYS_FILE": str(state_dir() / "keys.json"),
        "NDIF_SANDBOX_POOL_SIZE": os.environ.get("NDIF_SANDBOX_POOL_SIZE", "2"),
        "NDIF_REDIS_URL": f"redis://{HOST}:{PORTS['redis']}",
        "NDIF_RAY_ADDRESS": f"ray://{HOST}:{PORTS['ray_client']}",
        "NDIF_OBJECT_STORE_URL": f"http://{HOST}:{PORTS['s3']}",
        "NDIF_DEFAULT_DTYPE": "float32",
        "NDIF_DEFAULT_MODEL_ACTOR_CLASS": "ndif_actor.CpuModelActor",
        "NDIF_MIN_NNSIGHT_VERSION": os.environ.get("NDIF_MIN_NNSIGHT_VERSION", "0.8.0"),
        "NDIF_API_WORKERS": "1",
        "HF_HUB_OFFLINE": "1",
        "GRPC_ENABLE_FORK_SUPPORT": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _pids() -> dict[str, list[list[int]]]:
    """name -> [[pid, start time], ...] of the processes this stack started (a bare int: an old record)."""
    f = state_dir() / "pids.json"
    data = json.loads(f.read_text()) if f.exists() else {}
    return {k: [[r, None] if isinstance(r, int) else r for r in v] for k, v in data.items()}


def _save_pids(data: dict[str, list[list[int]]]) -> None:
    (state_dir() / "pids.json").write_text(json.dumps(data, indent=1))


def _record(name: str, pids: list[int]) -> None:
    data = _pids()
    data[name] = data.get(name, []) + [procs.record(p) for p in pids]
    _save_pids(data)


def _spawn(name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    log = open(state_dir() / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _record(name, [proc.pid])
    return proc


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) != 0


def _any_free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait(what: str, ok: Any, timeout: float, proc: subprocess.Popen | None = None) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {state_dir() / 'logs'}")
        try:
            if ok():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s; see {state_dir() / 'logs'}")


def _get(path: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(api_url() + path, timeout=timeout) as r:
        body = r.read().decode()
    try:
        return json.loads(body)
    except ValueError:
        return body


SAVE = """
import os, sys
from hooks_mm import zoo
for family, path in zip(sys.argv[1::2], sys.argv[2::2]):
    if not os.path.isfile(os.path.join(path, "config.json")):
        zoo.save(zoo.build(family), path + ".tmp")
        os.replace(path + ".tmp", path)
"""


def save_models() -> dict[str, str]:
    """Build and save the tiny models once under the state dir (hooks_mm's interpreter)."""
    root = Path(__file__).resolve().parents[1]
    python = os.environ.get("HOOKS_MM_PYTHON", str(root / ".venv" / "bin" / "python"))
    if not os.path.exists(python):
        raise RuntimeError(
            f"{python} does not exist: create hooks_mm's venv first (`make .venv/.installed`) or set HOOKS_MM_PYTHON."
        )
    args = [x for name, (family, _) in MODELS.items() for x in (family, model_dir(name))]
    subprocess.run([python, "-c", SAVE, *args], check=True, cwd=root, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return {name: model_dir(name) for name in MODELS}


def _size(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def _netns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _in_netns(holder: list[int]) -> list[int]:
    """Every process in the stack's network namespace (Ray re-parents its daemons to init).

    ``holder`` is the namespace holder's record; nothing when it no longer runs (its PID may belong
    to another process now) or when its namespace is this process's own (never end the host's).
    """
    try:
        ns = _netns(holder[0])
        if not procs.matches(holder) or ns == _netns(os.getpid()):
            return []
    except OSError:
        return []
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "ns" / "net") == ns:
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def up() -> None:
    """Start the stack in its own network namespace; forward its API and S3 ports to host loopback.

    Ray binds some of its ports on every interface and picks the machine's address as its
    node address; inside a fresh network namespace the only interface is loopback, so
    nothing of the stack is reachable from outside this machine. A small forwarder
    (``_forward``) is the one process in the host namespace: it listens on
    127.0.0.1:{api, s3} and connects into the namespace.
    """
    t0 = time.time()
    state = state_dir()
    if _pids():
        try:
            running = _holder() is not None and _get("/ping", timeout=3) is not None
        except OSError:
            running = False
        if running:
            raise SystemExit(f"a stack is running from {state} on {api_url()}: run `down` first.")
        print(f"a stack recorded in {state}/pids.json no longer answers (a crash?): stopping what is left of it")
        down()
    for sub in ("logs", "models", "ray"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    # Ray's note of the last cluster started in this temp dir: left behind, `ray start` refuses ("already running")
    (state / "ray" / "ray_current_cluster").unlink(missing_ok=True)
    keys = {"trusted": str(uuid.uuid4()), "sandboxed": str(uuid.uuid4())}
    tags = {"trusted": ["trusted"], "sandboxed": []}
    table = {key: {"user": f"hooks-mm-{path}", "tags": tags[path]} for path, key in keys.items()}
    (state / "keys.json").write_text(json.dumps(table, indent=1))  # read by scripts/ndif_api.py
    for name, var in (("api", "NDIF_API_PORT"), ("s3", "NDIF_S3_PORT")):  # the two ports the host sees
        if not _free(PORTS[name]):
            if var in os.environ:
                raise SystemExit(f"{var}={PORTS[name]} is in use on {HOST}; choose a free port.")
            PORTS[name] = _any_free_port()
        os.environ[var] = str(PORTS[name])  # inherited by the forwarder and the namespace
    (state / "ports.json").write_text(json.dumps({"NDIF_API_PORT": PORTS["api"], "NDIF_S3_PORT": PORTS["s3"]}))
    try:
        holder = _spawn("netns", ["unshare", "--net", "--", "sleep", "infinity"], dict(os.environ))
        mine = _netns(os.getpid())
        _wait("the network namespace", lambda: _netns(holder.pid) != mine, 10, holder)
        enter = ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "--"]
        subprocess.run([*enter, "ip", "link", "set", "lo", "up"], check=True)
        fwd = _spawn("forward", [sys.executable, __file__, "_forward", str(holder.pid)], dict(os.environ))
        paths = save_models()
        print(f"[{time.time() - t0:6.1f} s] tiny models saved", flush=True)
        inner = subprocess.run([*enter, sys.executable, __file__, "_inner", str(t0)], check=False)
        if inner.returncode != 0:
            raise RuntimeError(f"starting the stack failed; see {state / 'logs'}")
        _wait("the NDIF API through the forwarder", lambda: _get("/ping") is not None, 30, fwd)
        info = {
            "host": api_url(),
            "keys": keys,  # API key per execution path: "trusted" (in the model actor), "sandboxed" (a runner)
            "models": {n: {"key": model_key(n), "path": paths[n], "task": MODELS[n][1]} for n in MODELS},
        }
        (state / "stack.json").write_text(json.dumps(info, indent=1))
    except BaseException:
        down()
        raise
    print(f"NDIF stack up on {api_url()} in {time.time() - t0:.1f} s (state: {state})", flush=True)


def _forward(holder: int) -> None:
    """Listen on host 127.0.0.1:{api, s3}; relay each connection into the stack's namespace."""
    import asyncio
    import ctypes

    ports = [PORTS["api"], PORTS["s3"]]
    socks = []
    for port in ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        s.listen(256)
        socks.append(s)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{holder}/ns/net", os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET: sockets made from here on live in the stack's namespace
        raise OSError(ctypes.get_errno(), "setns into the stack's network namespace failed")

    async def pipe(reader: Any, writer: Any) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(port: int, reader: Any, writer: Any) -> None:
        try:
            r2, w2 = await asyncio.open_connection(HOST, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, w2), pipe(r2, writer))

    async def main() -> None:
        servers = [await asyncio.start_server(lambda r, w, p=p: handle(p, r, w), sock=s) for p, s in zip(ports, socks)]
        await asyncio.gather(*(srv.serve_forever() for srv in servers))

    asyncio.run(main())


def _inner(t0: float) -> None:
    """Inside the namespace: Redis, S3 stand-in, Ray head, controller, API; deploy the models."""
    state = state_dir()
    env = _env()

    def stamp(what):
        return print(f"[{time.time() - t0:6.1f} s] {what}", flush=True)

    redis = _spawn(
        "redis",
        ["redis-server", "--bind", HOST, "--port", str(PORTS["redis"]), "--save", "", "--appendonly", "no"],
        env,
    )
    s3 = _spawn("s3", ["moto_server", "-H", HOST, "-p", str(PORTS["s3"])], env)
    resources = json.dumps({"head": 10, "cuda_memory_bytes": 8 << 30, "cpu_memory_bytes": 16 << 30})
    cmd = [
        "ray",
        "start",
        "--head",
        f"--node-ip-address={HOST}",
        f"--port={PORTS['ray']}",
        "--num-cpus=4",
        "--num-gpus=1",
        f"--resources={resources}",
        "--include-dashboard=true",
        f"--dashboard-host={HOST}",
        f"--dashboard-port={PORTS['dashboard']}",
        f"--ray-client-server-port={PORTS['ray_client']}",
        f"--temp-dir={state / 'ray'}",
        "--disable-usage-stats",
    ]
    with open(state / "logs" / "ray.log", "ab") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode != 0:
            raise SystemExit(f"ray start failed; see {state / 'logs' / 'ray.log'}")
    _wait("redis", lambda: not _free(PORTS["redis"]), 20, redis)
    _wait("s3 stand-in", lambda: not _free(PORTS["s3"]), 30, s3)
    stamp("redis, s3 stand-in, ray head up")
    ctl_env = {**env, "RAY_ADDRESS": f"{HOST}:{PORTS['ray']}"}
    ctl = _spawn("controller", [sys.executable, "-m", "ndif.services.ray.deployments.controller.controller"], ctl_env)
    if ctl.wait(timeout=120) != 0:
        raise SystemExit(f"the NDIF controller failed to start; see {state / 'logs' / 'controller.log'}")
    stamp("controller scheduled")
    _wait("the NDIF API", lambda: _get("/ping") is not None, 90, _start_api([], env))
    stamp("api answers /ping")
    from ndif.cli.lib.deploy import deploy

    specs = [
        {
            "checkpoint": model_dir(n),
            "task": MODELS[n][1],
            "model_key": model_key(n),
            "size_bytes": _size(model_dir(n)),
            "dtype": "float32",
            "pinned": True,
        }
        for n in MODELS
    ]
    os.environ.update({k: v for k, v in env.items() if k.startswith(("NDIF_", "HF_", "RAY_", "GRPC_"))})
    deploy(specs, ray_address=env["NDIF_RAY_ADDRESS"])
    _wait("the tiny models", lambda: set(deployed()) >= {model_key(n) for n in MODELS}, 240)
    stamp("models deployed: " + ", ".join(MODELS))


def _start_api(enter: list[str], env: dict[str, str]) -> subprocess.Popen:
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    cmd = [gunicorn, "--config", "python:ndif_gunicorn_conf", "--bind", f"{HOST}:{PORTS['api']}", "ndif_api:app"]
    return _spawn("api", [*enter, *cmd], env)


def _holder() -> list[int] | None:
    """The running namespace holder's record, or None."""
    rec = (_pids().get("netns") or [None])[0]
    return rec if rec is not None and procs.matches(rec) else None


def api_stop() -> None:
    """Stop only the NDIF API (for fault tests); Ray, the models and the forwarder keep running.

    Ends the API's whole process group (master, workers, ndif's dispatcher), SIGKILL after 10 s,
    then waits until nothing listens on the API port inside the namespace. Idempotent.
    """
    pids = _pids()
    api = pids.pop("api", [])
    left = procs.stop(api)
    _save_pids(pids)
    holder = _holder()
    taken = procs.wait_ports_free([PORTS["api"]], holder[0]) if holder else []
    if left or taken:
        raise SystemExit(f"the NDIF API did not stop: processes {left} alive, port {taken} still listening")
    print(f"stopped the NDIF API ({len(api)} recorded processes and their group); port {PORTS['api']} is free")


def api_start() -> None:
    """Start the NDIF API again inside the stack's namespace; returns once it answers /ping."""
    holder = _holder()
    if holder is None:
        raise SystemExit(f"no running stack recorded in {state_dir()}: run `up` first")
    if any(procs.matches(r) for r in _pids().get("api", [])):
        raise SystemExit("the NDIF API is already running: `api-stop` first")
    if procs.wait_ports_free([PORTS["api"]], holder[0]):
        raise SystemExit(f"port {PORTS['api']} is still taken inside the stack's namespace")
    proc = _start_api(["nsenter", f"--net=/proc/{holder[0]}/ns/net", "--"], _env())
    _wait("the NDIF API", lambda: _get("/ping") is not None and isinstance(_get("/status"), dict), 90, proc)
    print("the NDIF API answers again")


def deployed() -> list[str]:
    """Model keys the API reports as RUNNING."""
    status = _get("/status", timeout=10)
    out = []
    for name, v in (status.get("deployments") or {}).items() if isinstance(status, dict) else []:
        if str(v.get("application_state", "")).upper() == "RUNNING":
            out.append(name.split(":", 2)[2])  # "<replica>:<actor class>:<model key>"
    return out


def down() -> None:
    """Stop every process of the stack; check by PID and by port that none remains. Idempotent.

    Every recorded process (matched by PID and start time) with its process group and descendants,
    and every process in the stack's network namespace. Exits non-zero, naming them, when any process
    survives SIGKILL or a host port (API, S3) still listens.
    """
    pids = _pids()
    state = state_dir()
    if not pids:
        print(f"no stack recorded in {state}: nothing to stop")
        return
    recs = [r for group in pids.values() for r in group]
    extra = [p for holder in pids.get("netns", []) for p in _in_netns(holder)]
    left = procs.stop(recs, extra)
    left += [r[0] for r in recs if procs.matches(r) and r[0] not in left]
    taken = procs.wait_ports_free([PORTS["api"], PORTS["s3"]], timeout=10)
    if left:
        raise SystemExit(f"processes {left} of the stack survived SIGKILL; {state}/pids.json kept")
    for f in ("pids.json", "stack.json", "ports.json", "keys.json", "ray/ray_current_cluster"):
        (state / f).unlink(missing_ok=True)
    if taken:
        raise SystemExit(f"the stack's processes are gone but 127.0.0.1 ports {taken} still listen (another owner?)")
    print(f"stopped the stack ({len(recs)} recorded processes, {len(extra)} in its namespace); none remains")


def status() -> None:
    try:
        print(json.dumps({"host": api_url(), "ping": _get("/ping"), "status": _get("/status")}, indent=1)[:4000])
    except OSError as e:
        print(f"no NDIF API answers on {api_url()}: {e}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_forward":
        _forward(int(sys.argv[2]))
        raise SystemExit(0)
    if len(sys.argv) == 3 and sys.argv[1] == "_inner":
        _inner(float(sys.argv[2]))
        raise SystemExit(0)
    cmds = {"up": up, "down": down, "status": status, "api-stop": api_stop, "api-start": api_start}
    if len(sys.argv) != 2 or sys.argv[1] not in cmds:
        raise SystemExit("usage: ndif_stack.py up|down|status|api-stop|api-start")
    cmds[sys.argv[1]]()
