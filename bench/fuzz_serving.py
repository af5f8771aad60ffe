"""Fuzzing the model server's REST and gRPC APIs: what is let through, what reaches TensorFlow.

Two servers are compared, run after run, interleaved: the server of a baseline
checkout (``--base``, e.g. a worktree of main: ``git worktree add /tmp/fuzz-base
COMMIT``) and this checkout's. Each serves the same small SavedModel (the Keras
beginners' dense MNIST model) with ``--max-body-bytes 1000000`` and answers the
same seeded requests, one at a time:

- REST: good bodies (1-8 images) as TF Serving's clients send them; the same with a
  foreign ``Host`` (DNS rebinding) or a ``Content-Type`` a web page can send without
  a CORS preflight (text/plain, a form, none); random shapes and dtypes; bodies over
  the limit.
- gRPC: good tensors; a tiny request whose ``tensor_shape`` asks for an array over
  the limit (one ``float_val``, which ``tf.make_ndarray`` repeats); values fewer than
  the shape's elements; wrong dtypes and shapes.

Printed per server: requests accepted (200/OK) that should have been refused,
requests over the limits that reached TensorFlow (the server's
``kfnb_serving_batches_total`` went up while it was answered), the resident
memory of the server and its model process before and after (and the model
process's peak), and the p50/p99 latency of the good requests, with the ratio of
this checkout's p50 to the baseline's in the same run.

    .venv/bin/python bench/fuzz_serving.py --base /tmp/fuzz-base [--count 300] [--runs 3]
        [--seed 19]

Everything runs on 127.0.0.1; the count of requests is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LIMIT = 1_000_000  # --max-body-bytes of both servers
READY = re.compile(r"on (http://\S+)$")
GRPC_LINE = "kfnb model server: gRPC PredictionService on "


@dataclass
class Case:
    """One fuzzed request and what a server should do with it."""

    api: str  # "rest" or "grpc"
    kind: str
    refuse: bool  # it should be refused
    over_limit: bool  # its array would be over the body limit
    method: str = "POST"
    path: str = "/v1/models/mnist:predict"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    proto: Any = None  # a PredictRequest for gRPC


def export_model(base: Path) -> None:
    import tensorflow as tf

    sys.path.insert(0, str(REPO))
    from model.mnist import IMAGE_SHAPE, export_serving

    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            tf.keras.Input(IMAGE_SHAPE),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )
    export_serving(model, str(base / "1"))


def make_cases(seed: int, count: int) -> list[Case]:
    """``count`` requests from ``seed``: the same list for every server."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    cases: list[Case] = []

    def images(n: int) -> np.ndarray:
        return nprng.random((n, 28, 28), dtype=np.float32)

    def good_body(n: int) -> bytes:
        return json.dumps({"instances": images(n).round(3).tolist()}).encode()

    def grpc_request(tensor: Any) -> Any:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "mnist"
        request.inputs["x"].CopyFrom(tensor)
        return request

    json_type = {"Content-Type": "application/json"}
    for _ in range(count):
        roll = rng.random()
        if roll < 0.25:
            cases.append(Case("rest", "good", False, False, headers=dict(json_type),
                              body=good_body(rng.randint(1, 8))))  # fmt: skip
        elif roll < 0.35:
            host = rng.choice(["attacker.example", "evil.test:8501", "127.0.0.1.nip.io"])
            cases.append(Case("rest", "foreign host", True, False,
                              headers={**json_type, "Host": host}, body=good_body(1)))  # fmt: skip
        elif roll < 0.45:
            given = rng.choice(["text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                "multipart/form-data; boundary=x", None])  # fmt: skip
            headers = {} if given is None else {"Content-Type": given}
            cases.append(Case("rest", "not json", True, False, headers=headers,
                              body=good_body(1)))  # fmt: skip
        elif roll < 0.55:
            shape = rng.choice([(1, 28, 27), (28, 28), (2, 1, 28, 28), (1, 3)])
            values: Any = nprng.random(shape).tolist()
            if rng.random() < 0.5:
                values = np.asarray(values).astype(str).tolist()
            cases.append(Case("rest", "bad shape or dtype", True, False, headers=dict(json_type),
                              body=json.dumps({"instances": values}).encode()))  # fmt: skip
        elif roll < 0.6:
            size = rng.randint(LIMIT + 1, 3 * LIMIT)
            body = b'{"instances": [' + b"0," * (size // 2) + b"0]}"
            cases.append(Case("rest", "body over the limit", True, True, headers=dict(json_type),
                              body=body))  # fmt: skip
        elif roll < 0.75:
            tensor = tf.make_tensor_proto(images(rng.randint(1, 8)))
            cases.append(Case("grpc", "good", False, False, proto=grpc_request(tensor)))
        elif roll < 0.85:
            rows = rng.randint(LIMIT // 3136 + 1, 20000)  # 3136 bytes an image
            tensor = tf.make_tensor_proto([], dtype=tf.float32)
            tensor.tensor_shape.Clear()
            for size in (rows, 28, 28):
                tensor.tensor_shape.dim.add().size = size
            tensor.float_val.append(rng.random())
            cases.append(Case("grpc", "tiny request, huge shape", True, True,
                              proto=grpc_request(tensor)))  # fmt: skip
        elif roll < 0.93:
            rows = rng.randint(1, 300)  # within the limit, but fewer values than elements
            tensor = tf.make_tensor_proto([], dtype=tf.float32)
            tensor.tensor_shape.Clear()
            for size in (rows, 28, 28):
                tensor.tensor_shape.dim.add().size = size
            tensor.float_val.extend([rng.random()] * rng.randint(1, 50))
            cases.append(Case("grpc", "fewer values than the shape", True, False,
                              proto=grpc_request(tensor)))  # fmt: skip
        else:
            array = rng.choice([images(1).astype(np.float64), images(1)[:, :27],
                                nprng.integers(0, 255, (1, 28, 28), dtype=np.int32)])  # fmt: skip
            cases.append(Case("grpc", "wrong dtype or shape", True, False,
                              proto=grpc_request(tf.make_tensor_proto(array))))  # fmt: skip
    return cases


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    grpc: str
    host_pid: int


def start(root: Path, base: Path, log: Path) -> Server:
    """The server of the checkout at ``root`` on ``base``, ready."""
    command = [sys.executable, "-m", "kfnb.serving.server", "--model-base-path", str(base),
               "--model-name", "mnist", "--port", "0", "--grpc-port", "0",
               "--max-body-bytes", str(LIMIT)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("KFNB_ALLOWED_HOSTS", None)
    proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True)  # fmt: skip
    assert proc.stdout is not None
    grpc = url = ""
    while not url:
        line = proc.stdout.readline()  # "" once it exited
        if not line:
            proc.kill()
            proc.wait()
            raise SystemExit(f"the server of {root} did not start: see {log}")
        line = line.strip()
        if line.startswith(GRPC_LINE):
            grpc = line.removeprefix(GRPC_LINE)
        elif READY.search(line):
            url = READY.search(line).group(1)  # type: ignore[union-attr]
    children = [
        int(p.name) for p in Path("/proc").iterdir()
        if p.name.isdigit() and _ppid(int(p.name)) == proc.pid
    ]  # fmt: skip
    return Server(proc, url, grpc, children[0])


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_mib(server: Server) -> tuple[float, float, float]:
    """(server RSS, model process RSS, model process peak RSS) in MiB."""
    return (
        _kib(server.proc.pid, "VmRSS") / 1024,
        _kib(server.host_pid, "VmRSS") / 1024,
        _kib(server.host_pid, "VmHWM") / 1024,
    )


def batches(server: Server) -> float:
    status, text = rest(server, "GET", "/metrics", {}, b"")
    found = re.findall(r"^kfnb_serving_batches_total\{.*\} (\S+)$", text.decode(), re.M)
    return sum(map(float, found))


def rest(server: Server, method: str, path: str, headers: dict[str, str], body: bytes
         ) -> tuple[int, bytes]:  # fmt: skip
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        connection.putrequest(method, path, skip_host="Host" in headers,
                              skip_accept_encoding=True)  # fmt: skip
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    except (ConnectionError, http.client.HTTPException):
        return 0, b""  # reset by the server: refused
    finally:
        connection.close()


def run_one(root: Path, base: Path, cases: list[Case], log: Path) -> dict[str, Any]:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    server = start(root, base, log)
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(server.grpc, options=[("grpc.max_send_message_length", -1)])
        )
        # One good request of each API first, so both are warm before memory is read.
        rest(server, "POST", cases[0].path, {"Content-Type": "application/json"},
             json.dumps({"instances": np.zeros((1, 28, 28)).tolist()}).encode())  # fmt: skip
        before = rss_mib(server)
        accepted_wrongly: dict[str, int] = {}
        reached: dict[str, int] = {}
        latencies: list[float] = []
        started_all = time.perf_counter()
        for case in cases:
            counted = batches(server) if case.over_limit else 0.0
            started = time.perf_counter()
            if case.api == "rest":
                status, _ = rest(server, case.method, case.path, case.headers, case.body)
                ok = status == 200
            else:
                try:
                    stub.Predict(case.proto, 120.0)
                    ok = True
                except grpc.RpcError:
                    ok = False
            seconds = time.perf_counter() - started
            if not case.refuse:
                latencies.append(seconds)
            if case.refuse and ok:
                accepted_wrongly[case.kind] = accepted_wrongly.get(case.kind, 0) + 1
            if case.over_limit and batches(server) > counted:
                reached[case.kind] = reached.get(case.kind, 0) + 1
        wall = time.perf_counter() - started_all
        after = rss_mib(server)
    finally:
        server.proc.terminate()
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
    latencies.sort()
    return {
        "accepted_wrongly": accepted_wrongly,
        "reached": reached,
        "before": before,
        "after": after,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
        "wall": wall,
    }


def _range(values: list[float], fmt: str = "{:.1f}") -> str:
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}-{high}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the baseline checkout")
    parser.add_argument("--count", type=int, default=300, help="requests per server and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = Path(tempfile.mkdtemp(prefix="kfnb-fuzz-"))
    export_model(work / "model")
    cases = make_cases(args.seed, args.count)
    kinds: dict[str, int] = {}
    for case in cases:
        kinds[f"{case.api} {case.kind}"] = kinds.get(f"{case.api} {case.kind}", 0) + 1
    print(f"{len(cases)} requests per server and run (seed {args.seed}, body limit {LIMIT}):")
    for kind, n in sorted(kinds.items()):
        print(f"  {n:4d} {kind}")
    candidates = {"baseline": args.base.resolve(), "this checkout": REPO}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in candidates}
    for run in range(args.runs):
        order = list(candidates) if run % 2 == 0 else list(reversed(candidates))
        for name in order:
            found = run_one(candidates[name], work / "model", cases, work / f"{name}-{run}.log")
            results[name].append(found)
            wrong = sum(found["accepted_wrongly"].values())
            reached = sum(found["reached"].values())
            print(
                f"run {run + 1} {name:<13}: accepted that should be refused {wrong:3d} "
                f"{found['accepted_wrongly']}; over the limits and reached TensorFlow "
                f"{reached:3d} {found['reached']}; RSS server {found['before'][0]:.0f}->"
                f"{found['after'][0]:.0f} MiB, model process {found['before'][1]:.0f}->"
                f"{found['after'][1]:.0f} MiB (peak {found['after'][2]:.0f}); good requests "
                f"p50 {found['p50']:.2f} ms p99 {found['p99']:.2f} ms; {found['wall']:.1f} s",
                flush=True,
            )
    print(f"\n== ranges over {args.runs} interleaved runs")
    for name, runs in results.items():
        print(
            f"  {name:<13}: accepted that should be refused "
            f"{_range([sum(r['accepted_wrongly'].values()) for r in runs], '{:.0f}')}, "
            f"over the limits reaching TensorFlow "
            f"{_range([sum(r['reached'].values()) for r in runs], '{:.0f}')}, "
            f"server RSS {_range([r['before'][0] for r in runs], '{:.0f}')} -> "
            f"{_range([r['after'][0] for r in runs], '{:.0f}')} MiB, model process RSS "
            f"{_range([r['before'][1] for r in runs], '{:.0f}')} -> "
            f"{_range([r['after'][1] for r in runs], '{:.0f}')} MiB (peak "
            f"{_range([r['after'][2] for r in runs], '{:.0f}')}), p50 "
            f"{_range([r['p50'] for r in runs], '{:.2f}')} ms, p99 "
            f"{_range([r['p99'] for r in runs], '{:.2f}')} ms, wall "
            f"{_range([r['wall'] for r in runs])} s"
        )
    ratios = [
        ours["p50"] / theirs["p50"]
        for ours, theirs in zip(results["this checkout"], results["baseline"], strict=True)
    ]
    print(f"  p50 of good requests, this checkout / baseline: {_range(ratios, '{:.2f}')}")


if __name__ == "__main__":
    main()
