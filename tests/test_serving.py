"""The local model server: real server processes, real HTTP on 127.0.0.1, a real SavedModel.

The SavedModels (two versions of the MNIST CNN, untrained: serving does not care
about accuracy) and the in-process reference outputs are made once, in a
subprocess, so this pytest process never imports TensorFlow. The codec and
batcher tests at the end run in-process on a fake model.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from kfnb.serving import ERROR_PREFIX, EXIT_MODEL_ERROR, EXIT_USAGE, READY_PATTERN
from kfnb.serving.batch import run_batch
from kfnb.serving.batcher import Batcher
from kfnb.serving.codec import (
    PredictRequest,
    RequestError,
    SignatureInfo,
    TensorInfo,
    decode_predict,
    encode_predict,
    parse_json,
)
from kfnb.serving.loader import LoadedModel, _same_answers

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
TOLERANCE = 1e-5

_HAVE_SERVING = all(
    importlib.util.find_spec(name) is not None
    for name in ("uvicorn", "aiohttp", "prometheus_client")
)
needs_serving = pytest.mark.skipif(
    not _HAVE_SERVING, reason="needs the serving extra: pip install 'kfnb[serving]'"
)


def needs_tf(test: Any) -> Any:
    """Runs real TensorFlow server processes: marked ``tensorflow``, skipped without it."""
    have_tf = importlib.util.find_spec("tensorflow") is not None
    skip = pytest.mark.skipif(
        not (have_tf and _HAVE_SERVING),
        reason="needs tensorflow and the serving extra: pip install 'kfnb[tensorflow,serving]'",
    )
    return pytest.mark.tensorflow(skip(test))


EXPORT = r"""
import sys
from pathlib import Path
import numpy as np
import tensorflow as tf
sys.path.insert(0, sys.argv[1])
from model.mnist import build_model, export_serving

out = Path(sys.argv[2])
images = np.random.default_rng(0).random((8, 28, 28), dtype=np.float32)
refs = {"images": images}
for version in (1, 2):
    tf.keras.utils.set_random_seed(version)
    path = out / str(version)
    export_serving(build_model(), str(path))
    outputs = tf.saved_model.load(str(path)).signatures["serving_default"](x=tf.constant(images))
    for key, value in outputs.items():
        refs[f"v{version}_{key}"] = value.numpy()
np.savez(out / "refs.npz", **refs)
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1 and 2 of the MNIST SavedModel and refs.npz (their outputs in-process)."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("needs tensorflow")
    out = tmp_path_factory.mktemp("savedmodels")
    done = subprocess.run(
        [sys.executable, "-c", EXPORT, str(REPO), str(out)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def refs(models: Path) -> dict[str, np.ndarray]:
    with np.load(models / "refs.npz") as data:
        return {key: data[key] for key in data.files}


class Server:
    """A model server process started with ``--port 0``; ``url`` once it is ready."""

    def __init__(self, base: Path, log: Path, *args: str, name: str = "mnist") -> None:
        self.log = log
        self.base = base
        from kfnb.serving.server import ServerConfig  # uvicorn: only where the extra is

        # Later flags win, so ``args`` can override what the config gives (e.g. --port).
        command = [*ServerConfig(base, model_name=name).to_argv(), *args]
        if "--port" not in args:
            command += ["--port", "0"]
        with open(log, "w") as stderr:
            self.proc = subprocess.Popen(
                command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        self.url = ""
        self.port = 0
        self.grpc = ""  # host:port of the gRPC PredictionService, when started with one

    def wait_ready(self, timeout: float = 120.0) -> Server:
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().strip() if readable else ""
        if line.startswith("kfnb model server: gRPC PredictionService on "):
            self.grpc = line.rsplit(" ", 1)[1]
            line = self.proc.stdout.readline().strip()
        match = READY_PATTERN.match(line)
        assert match, f"no ready line ({line!r}); stderr:\n{self.stderr()[-3000:]}"
        self.url = match.group("url")
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def finish(self, timeout: float = 120.0) -> tuple[int, str]:
        """Exit code and stderr of a server expected to stop by itself."""
        code = self.proc.wait(timeout)
        return code, self.stderr()

    def stderr(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


JSON = {"Content-Type": "application/json"}  # what TF Serving's clients send with a body


def http(
    method: str,
    url: str,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """(status, parsed JSON body) of one request; error statuses are answers too. A body
    goes as ``application/json`` unless ``headers`` say otherwise."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    sent = {**(JSON if data is not None else {}), **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def assert_rows(predictions: list[dict[str, Any]], refs: dict[str, np.ndarray], v: int) -> None:
    """Row-format predictions equal the SavedModel's in-process outputs for version ``v``."""
    assert [sorted(p) for p in predictions] == [["classes", "predictions"]] * len(predictions)
    n = len(predictions)
    np.testing.assert_allclose(
        [p["predictions"] for p in predictions], refs[f"v{v}_predictions"][:n], atol=TOLERANCE
    )
    assert [p["classes"] for p in predictions] == refs[f"v{v}_classes"][:n].tolist()


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server on version 1, shared by the tests that do not change its models."""
    base = tmp_path_factory.mktemp("served") / "model"
    shutil.copytree(models / "1", base / "1")
    (base / ".staging-2").mkdir()  # a job still writing: must be ignored
    started = Server(
        base,
        base.parent / "server.log",
        "--max-body-bytes",
        "1000000",
        "--allowed-hosts",
        "mnist.example.com,.models.example.org",
    )
    try:
        yield started.wait_ready()
    finally:
        started.stop()


# ----------------------------------------------------------------- the API


@needs_tf
def test_status_metadata_health(server: Server) -> None:
    status, doc = http("GET", f"{server.url}/v1/models/mnist")
    assert status == 200
    assert doc == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert http("GET", f"{server.url}/v1/models/mnist/versions/1") == (200, doc)

    status, meta = http("GET", f"{server.url}/v1/models/mnist/metadata")
    assert status == 200
    assert meta["model_spec"] == {"name": "mnist", "signature_name": "", "version": "1"}
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    x = signature["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1", "28", "28"]
    assert x["tensor_shape"]["unknown_rank"] is False
    outputs = signature["outputs"]
    assert outputs["classes"]["dtype"] == "DT_UINT8"
    assert [d["size"] for d in outputs["classes"]["tensor_shape"]["dim"]] == ["-1"]
    assert outputs["predictions"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in outputs["predictions"]["tensor_shape"]["dim"]] == ["-1", "10"]

    assert http("GET", f"{server.url}/healthz") == (
        200,
        {"status": "ok", "model": "mnist", "version": "1"},
    )
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    for name in (
        "kfnb_serving_requests_total",
        "kfnb_serving_request_seconds_bucket",
        "kfnb_serving_model_version",
        "kfnb_serving_model_loads_total",
    ):
        assert name in text


@needs_tf
def test_predict_row_format_matches_the_savedmodel(
    server: Server, refs: dict[str, np.ndarray]
) -> None:
    images = refs["images"]
    status, doc = http(
        "POST", f"{server.url}/v1/models/mnist:predict", {"instances": images.tolist()}
    )
    assert status == 200, doc
    assert list(doc) == ["predictions"]
    assert_rows(doc["predictions"], refs, 1)
    # Instances as objects naming the input, one image at a time, a specific version.
    status, doc = http(
        "POST",
        f"{server.url}/v1/models/mnist/versions/1:predict",
        {"instances": [{"x": images[3].tolist()}]},
    )
    assert status == 200, doc
    assert doc["predictions"][0]["classes"] == int(refs["v1_classes"][3])
    np.testing.assert_allclose(
        doc["predictions"][0]["predictions"], refs["v1_predictions"][3], atol=TOLERANCE
    )


@needs_tf
def test_predict_columnar_format(server: Server, refs: dict[str, np.ndarray]) -> None:
    images = refs["images"].tolist()
    for inputs in ({"x": images}, images):
        status, doc = http("POST", f"{server.url}/v1/models/mnist:predict", {"inputs": inputs})
        assert status == 200, doc
        assert list(doc) == ["outputs"]
        assert sorted(doc["outputs"]) == ["classes", "predictions"]
        assert doc["outputs"]["classes"] == refs["v1_classes"].tolist()
        np.testing.assert_allclose(
            doc["outputs"]["predictions"], refs["v1_predictions"], atol=TOLERANCE
        )


@needs_tf
def test_large_body_is_parsed_off_the_event_loop(
    server: Server, refs: dict[str, np.ndarray]
) -> None:
    """40 images (~640 kB of JSON): parsed in a thread, answered like any other request."""
    images = np.concatenate([refs["images"]] * 5)
    status, doc = http(
        "POST", f"{server.url}/v1/models/mnist:predict", {"instances": images.tolist()}
    )
    assert status == 200, doc
    assert [p["classes"] for p in doc["predictions"]] == refs["v1_classes"].tolist() * 5


# ------------------------------------------------------------- bad requests


@needs_tf
def test_malformed_json_is_400(server: Server) -> None:
    for raw in (b"{", b"", b"\xff\xfe\x00", b"[" * 100_000, b'{"instances": [1,]}'):
        status, doc = http("POST", f"{server.url}/v1/models/mnist:predict", raw=raw)
        assert status == 400, raw[:20]
        assert doc["error"].startswith("JSON Parse error"), doc


@needs_tf
def test_wrong_shape_or_dtype_is_400_naming_what_was_expected(server: Server) -> None:
    url = f"{server.url}/v1/models/mnist:predict"
    cases = {
        "got shape [1, 28, 27]": {"instances": np.zeros((1, 28, 27)).tolist()},
        "got shape [28, 28]": {"instances": np.zeros((28, 28)).tolist()},
        "got shape [1, 1, 28, 28]": {"inputs": {"x": np.zeros((1, 1, 28, 28)).tolist()}},
        "got nested lists of uneven length": {"instances": [[[0.0] * 28] * 28, [[0.0] * 28]]},
        "got strings": {"instances": [[["0.5"] * 28] * 28]},
        "got booleans": {"instances": [[[True] * 28] * 28]},
        "got a JSON object among the values": {"instances": [[[{"a": 1}] * 28] * 28]},
        "got a JSON null among the values": {"instances": [[[None] * 28] * 28]},
        "got 1e+40, out of float32's range": {"instances": [[[10**40] * 28] * 28]},
        "out of float32's range": {"instances": [[[1e300] * 28] * 28]},
    }
    for found, body in cases.items():
        status, doc = http("POST", url, body)
        assert status == 400, (found, doc)
        assert "expected DT_FLOAT (float32 numbers) [None, 28, 28]" in doc["error"], doc
        assert found in doc["error"], doc
    refusals = {
        "Missing 'inputs' or 'instances' key": {},
        "Not both 'instances' and 'inputs'": {"instances": [], "inputs": []},
        'Serving signature name: "nope" not found in signature def': {
            "signature_name": "nope",
            "instances": [],
        },
        "Missing named input: x in 'inputs' object.": {"inputs": {"y": []}},
        "must be a JSON object": [1, 2, 3],
        "'instances' must be a list": {"instances": 3},
    }
    for words, body in refusals.items():
        status, doc = http("POST", url, body)
        assert status == 400 and words in doc["error"], (words, doc)


@needs_tf
def test_oversize_body_is_413(server: Server) -> None:
    url = f"{server.url}/v1/models/mnist:predict"
    status, doc = http("POST", url, raw=b" " * 1_500_000)
    assert status == 413
    assert "limit of 1000000 bytes" in doc["error"] and "--max-body-bytes" in doc["error"]

    async def chunked() -> tuple[int, Any]:  # no Content-Length: caught while reading
        import aiohttp

        async def body() -> Any:
            for _ in range(30):
                yield b" " * 65536

        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body(), headers=JSON) as response:
                return response.status, await response.json()

    status, doc = asyncio.run(chunked())
    assert status == 413 and "--max-body-bytes" in doc["error"]
    assert http("GET", f"{server.url}/healthz")[0] == 200


@needs_tf
def test_unknown_model_or_version_is_404_in_tf_servings_words(server: Server) -> None:
    url = server.url
    expectations = [
        ("POST", "/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
        (
            "POST",
            "/v1/models/mnist/versions/7:predict",
            404,
            "Servable not found for request: Specific(mnist, 7)",
        ),
        (
            "GET",
            "/v1/models/mnist/versions/7/metadata",
            404,
            "Servable not found for request: Specific(mnist, 7)",
        ),
        ("GET", "/v1/models/nope", 404, "Could not find any versions of model nope"),
        ("GET", "/v1/models/mnist/versions/7", 404, "Could not find version 7 of model mnist"),
        ("GET", "/v1/models/mnist:predict", 405, "Malformed request: GET /v1/models/mnist:predict"),
        ("POST", "/v1/models/mnist:classify", 501, ":classify is not implemented"),
        ("GET", "/v2/models/mnist", 404, "Malformed request: GET /v2/models/mnist"),
    ]
    for method, path, code, words in expectations:
        body = {"instances": []} if method == "POST" else None
        status, doc = http(method, url + path, body)
        assert (status, doc) == (code, {"error": doc.get("error")}), (path, doc)
        assert words in doc["error"], (path, doc)


def _raw(url: str, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Any:
    """(status, JSON) of a request sent with exactly these headers (``Host`` included)."""
    import http.client

    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@needs_tf
def test_a_foreign_host_is_refused_against_dns_rebinding(
    server: Server, refs: dict[str, np.ndarray]
) -> None:
    """A page on attacker.example whose name resolves to 127.0.0.1 sends its own name as
    Host: refused, on every path; the server's own names and any IP address answer."""
    body = json.dumps({"instances": refs["images"][:1].tolist()}).encode()
    for path, method in [
        ("/v1/models/mnist/metadata", "GET"),
        ("/v1/models/mnist:predict", "POST"),
        ("/healthz", "GET"),
    ]:
        for host in ("attacker.example", f"attacker.example:{server.port}", "mnist.local"):
            headers = {"Host": host, **JSON}
            status, doc = _raw(server.url, method, path, headers, body if method == "POST" else b"")
            assert status == 403, (host, path, doc)
            assert "not a name this server answers" in doc["error"], doc
            assert "--allowed-hosts" in doc["error"], doc
    answered = [
        f"127.0.0.1:{server.port}",
        f"localhost:{server.port}",
        "localhost",
        f"[::1]:{server.port}",
        "10.244.1.7:8501",  # a kubelet probe sends the pod's IP
        "mnist.example.com",  # given with --allowed-hosts
        "a.models.example.org",  # under a domain given with --allowed-hosts
    ]
    for host in answered:
        headers = {"Host": host, **JSON}
        status, doc = _raw(server.url, "POST", "/v1/models/mnist:predict", headers, body)
        assert status == 200, (host, doc)
    # HTTP/1.0 clients may send no Host at all: no browser does.
    status, _ = _raw(server.url, "GET", "/v1/models/mnist", {})
    assert status == 200
    assert metric(server.url, "kfnb_serving_requests_total", outcome="forbidden") >= 9


@needs_tf
def test_a_post_body_must_be_sent_as_json(server: Server, refs: dict[str, np.ndarray]) -> None:
    """A web page can POST text/plain, a form or no type at all to any origin without a
    CORS preflight; only application/json is read, with a 415 saying what curl needs."""
    url = f"{server.url}/v1/models/mnist:predict"
    body = json.dumps({"instances": refs["images"][:1].tolist()}).encode()
    for given in (
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",  # curl -d
        "multipart/form-data; boundary=x",
        "application/jsonp",
        None,
    ):
        headers = {"Host": f"127.0.0.1:{server.port}"}
        if given is not None:
            headers["Content-Type"] = given
        status, doc = _raw(server.url, "POST", "/v1/models/mnist:predict", headers, body)
        assert status == 415, (given, doc)
        assert "Content-Type: application/json" in doc["error"], doc
        assert "add -H 'Content-Type: application/json'" in doc["error"], doc
    for given in ("application/json", "Application/JSON; charset=utf-8"):
        status, doc = http("POST", url, raw=body, headers={"Content-Type": given})
        assert status == 200, (given, doc)
        assert_rows(doc["predictions"], refs, 1)


def test_host_policy_names() -> None:
    """Loopback-bound: local names, IP addresses and given names. Bound beyond loopback
    (a pod): a cluster's names too, never a public one."""
    from kfnb.hostcheck import HostPolicy

    local = HostPolicy.for_server("127.0.0.1", ["mnist.example.com", ".corp.example"])
    for host in ("localhost", "LOCALHOST.:8501", "127.0.0.1:80", "[::1]:8501", "10.0.0.3",
                 "mnist.example.com", "corp.example", "a.b.corp.example:443", None):  # fmt: skip
        assert local.allows(host), host
    for host in ("attacker.example", "mnist", "mnist.ns.svc", "127.0.0.1.nip.io",
                 "corp.example.attacker.example", "a b", "localhost@x", "[::1", ""):  # fmt: skip
        assert not local.allows(host), host
    pod = HostPolicy.for_server("0.0.0.0")
    for host in ("mnist", "mnist:8501", "mnist.alice.svc", "mnist.alice.svc.cluster.local:8501",
                 "10.244.1.7:8501", "localhost"):  # fmt: skip
        assert pod.allows(host), host
    for host in ("attacker.example", "mnist.alice.svc.cluster.local.attacker.example",
                 "svc.attacker.example"):  # fmt: skip
        assert not pod.allows(host), host
    assert HostPolicy.for_server("127.0.0.1", ["*"]).allows("anything.example")


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 4 or roll < 0.35:
        return rng.choice(
            [
                rng.randint(-(10**30), 10**30),
                rng.uniform(-1e308, 1e308),
                rng.random(),
                10**400,
                "x" * rng.randint(0, 30),
                True,
                False,
                None,
                -0.0,
                1e-320,
            ]
        )
    if roll < 0.7:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["instances", "inputs", "signature_name", "x", "", "\u00e9\u0000"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _fuzz_request(rng: random.Random) -> tuple[str, str, bytes]:
    """A random (method, path, body): junk bytes, random JSON, near-misses of a good request."""
    path = rng.choice(
        ["/v1/models/mnist:predict"] * 8
        + [
            "/v1/models/mnist/versions/1:predict",
            "/v1/models/mnist/versions/99999999999:predict",
            "/v1/models/%00:predict",
            "/v1/models/mnist:",
            "/v1/models/mnist/metadata",
        ]
    )
    kind = rng.randrange(7)
    if kind == 0:
        return "POST", path, rng.randbytes(rng.randint(0, 3000))
    if kind == 1:
        return "POST", path, b""
    if kind == 2:
        return "POST", path, json.dumps(_random_json(rng)).encode()
    if kind == 3:
        depth = rng.choice([10, 63, 65, 1000, 50_000])
        return "POST", path, b'{"instances": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
    shape = rng.choice([(1, 28, 28), (2, 28, 28), (1, 28, 27), (28, 28), (0, 28, 28), (1, 1, 28)])
    values: Any = np.random.default_rng(rng.randrange(1000)).random(shape).tolist()
    if kind == 4 and values and isinstance(values[0], list):
        values[0][0] = rng.choice(["a", None, {"x": 1}, [1, 2], 1e400, -(10**50), True])
    key = rng.choice(["instances", "inputs"])
    doc: dict[str, Any] = {key: values if kind != 5 else {"x": values, "y": 1}}
    if kind == 6 and rng.random() < 0.5:
        doc["signature_name"] = rng.choice(
            ["serving_default", "", None, 3, "__saved_model_init_op"]
        )
    body = json.dumps(doc).encode()
    if kind == 6 and rng.random() < 0.5:
        body = body[: rng.randrange(len(body))]
    return "POST", path, body


@needs_tf
def test_a_thousand_fuzzed_requests_then_a_good_one(
    server: Server, refs: dict[str, np.ndarray]
) -> None:
    import aiohttp

    rng = random.Random(20240607)
    requests = [_fuzz_request(rng) for _ in range(1000)]

    async def send_all() -> list[tuple[int, Any]]:
        answers = []
        async with aiohttp.ClientSession() as session:
            for method, path, body in requests:
                async with session.request(
                    method, server.url + path, data=body, headers=JSON
                ) as response:
                    answers.append((response.status, await response.json(content_type=None)))
        return answers

    errors_before = metric(server.url, "kfnb_serving_requests_total", outcome="error")
    answers = asyncio.run(send_all())
    assert len(answers) == 1000
    for (_method, path, body), (status, doc) in zip(requests, answers, strict=True):
        assert status in (200, 400, 404, 405, 413), (path, body[:200], status, doc)
        assert isinstance(doc, dict), (path, body[:200], doc)
        if status != 200:
            assert isinstance(doc.get("error"), str) and doc["error"], (path, body[:200], doc)
    assert {s for s, _ in answers} >= {200, 400, 404}
    assert metric(server.url, "kfnb_serving_requests_total", outcome="error") == errors_before
    assert server.proc.poll() is None
    status, doc = http(
        "POST", f"{server.url}/v1/models/mnist:predict", {"instances": refs["images"].tolist()}
    )
    assert status == 200
    assert_rows(doc["predictions"], refs, 1)


# ------------------------------------------------------------- concurrency


@needs_tf
def test_concurrent_requests_are_batched_and_answered_correctly(
    server: Server, refs: dict[str, np.ndarray]
) -> None:
    import aiohttp

    n = 64
    url = f"{server.url}/v1/models/mnist:predict"
    bodies = [
        json.dumps({"instances": refs["images"][i % 8 : i % 8 + 1].tolist()}).encode()
        for i in range(n)
    ]

    async def burst() -> list[tuple[int, Any]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n)) as session:

            async def one(body: bytes) -> tuple[int, Any]:
                async with session.post(url, data=body, headers=JSON) as response:
                    return response.status, await response.json()

            return list(await asyncio.gather(*(one(b) for b in bodies)))

    calls_before = metric(server.url, "kfnb_serving_batches_total")
    answered_before = metric(server.url, "kfnb_serving_requests_total", api="predict", outcome="ok")
    answers = asyncio.run(burst())
    for i, (status, doc) in enumerate(answers):
        assert status == 200, doc
        (row,) = doc["predictions"]
        assert row["classes"] == int(refs["v1_classes"][i % 8])
        np.testing.assert_allclose(
            row["predictions"], refs["v1_predictions"][i % 8], atol=TOLERANCE
        )
    calls = metric(server.url, "kfnb_serving_batches_total") - calls_before
    answered = (
        metric(server.url, "kfnb_serving_requests_total", api="predict", outcome="ok")
        - answered_before
    )
    assert answered == n
    assert 1 <= calls < n, f"{calls} signature calls for {n} concurrent requests: no batching"


@needs_tf
def test_port_in_use_second_server_refuses_first_keeps_serving(
    server: Server, refs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    body = {"instances": refs["images"][:1].tolist()}
    answers: list[tuple[int, Any]] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            answers.append(http("POST", f"{server.url}/v1/models/mnist:predict", body))

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        started = time.monotonic()
        second = Server(server.base, tmp_path / "second.log", "--port", str(server.port))
        code, stderr = second.finish(60)
        elapsed = time.monotonic() - started
        refused_at = len(answers)
        deadline = time.monotonic() + 30  # then a few more answers, after the refusal
        while len(answers) < refused_at + 3:
            assert asker.is_alive() and time.monotonic() < deadline, "no answers after that"
            time.sleep(0.01)
    finally:
        stop.set()
        asker.join(60)
    assert code == EXIT_USAGE
    assert stderr.splitlines() == [
        f"{ERROR_PREFIX}port {server.port} on 127.0.0.1 is already in use (another model "
        "server?): pick another with --port, or --port 0 for a free one"
    ]
    assert elapsed < 30  # refused before TensorFlow is imported
    assert answers and all(status == 200 for status, _ in answers)
    for _, doc in answers:
        assert doc["predictions"][0]["classes"] == int(refs["v1_classes"][0])
    assert server.proc.poll() is None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True  # exited and reaped
        if state == "Z":
            return True  # exited, waiting for its new parent to reap it
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@needs_tf
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_model_process_dies_and_the_server_says_so(
    models: Path, refs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    import signal

    base = tmp_path / "model"
    shutil.copytree(models / "1", base / "1")
    server = Server(base, tmp_path / "server.log").wait_ready()
    try:
        # 256 images: a batch far larger than a socket's buffer, both ways.
        images = np.resize(refs["images"], (256, *refs["images"].shape[1:]))
        status, doc = http(
            "POST", f"{server.url}/v1/models/mnist:predict", {"instances": images.tolist()}
        )
        assert status == 200, doc
        assert [p["classes"] for p in doc["predictions"][:2]] == refs["v1_classes"][:2].tolist()
        assert len(doc["predictions"]) == 256
        # TensorFlow lives in the model process only, not in the HTTP process.
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
        assert "libtensorflow" not in maps
        (host,) = _children(server.proc.pid)
        assert "libtensorflow" in Path(f"/proc/{host}/maps").read_text()
        os.kill(host, signal.SIGKILL)
        code, stderr = server.finish(30)
    finally:
        server.stop()
    assert code == EXIT_MODEL_ERROR
    assert (
        f"{ERROR_PREFIX}the model process (TensorFlow) was killed by signal 9: restart the server"
        in stderr.splitlines()
    )


@needs_tf
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_stuck_model_process_gets_504_and_health_says_unready(
    models: Path, refs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """The model process stopped in a call (SIGSTOP, as a hung TensorFlow op): each request
    gets TF Serving's DEADLINE_EXCEEDED as a 504 after the timeout, /healthz says 503
    while it stays stuck, and both come back once it runs again."""
    import signal

    base = tmp_path / "model"
    shutil.copytree(models / "1", base / "1")
    server = Server(base, tmp_path / "server.log", "--request-timeout-seconds", "1").wait_ready()
    url = f"{server.url}/v1/models/mnist:predict"
    body = {"instances": refs["images"][:1].tolist()}
    try:
        assert http("POST", url, body)[0] == 200
        (host,) = _children(server.proc.pid)
        os.kill(host, signal.SIGSTOP)
        try:
            started = time.perf_counter()
            status, doc = http("POST", url, body)
            assert status == 504, doc
            assert doc["error"].startswith("Deadline Exceeded: the model did not answer within 1 s")
            assert 0.9 < time.perf_counter() - started < 10
            # Stuck once the model process's call is older than the timeout (the
            # request's own clock started a little before the call was sent).
            deadline = time.monotonic() + 5
            while (answer := http("GET", f"{server.url}/healthz"))[0] == 200:
                assert time.monotonic() < deadline, answer
                time.sleep(0.02)
            status, doc = answer
            assert status == 503 and doc["status"] == "stuck", doc
            assert "has been in one call for" in doc["error"], doc
            started = time.perf_counter()
            status, doc = http("POST", url, body)  # no use queueing behind it: at once
            assert status == 503 and "has been in one call" in doc["error"], doc
            assert time.perf_counter() - started < 0.9
            assert server.proc.poll() is None
        finally:
            os.kill(host, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while http("GET", f"{server.url}/healthz")[0] != 200:
            assert time.monotonic() < deadline, "health never came back"
            time.sleep(0.05)
        status, doc = http("POST", url, body)
        assert status == 200
        assert_rows(doc["predictions"], refs, 1)
        assert metric(server.url, "kfnb_serving_errors_total", kind="deadline") == 1
    finally:
        server.stop()
    assert "has been in one call for" in server.stderr()  # told once in its log


@needs_tf
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_server_leaves_no_model_process_behind(models: Path, tmp_path: Path) -> None:
    import signal

    base = tmp_path / "model"
    shutil.copytree(models / "1", base / "1")
    server = Server(base, tmp_path / "server.log").wait_ready()
    try:
        (host,) = _children(server.proc.pid)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
    finally:
        server.stop()
    assert _gone(host, 30), "the model process outlived its server"


def test_an_answer_read_awake_may_come_in_pieces() -> None:
    """The lone-client path reads the model process's socket itself: an answer
    larger than the socket's buffer arrives in pieces, and each piece goes through
    the same framing as the transport's reads; what is not there in time is left
    to the transport (here, the test's own reads)."""
    from kfnb.serving import model_host

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    host = model_host.ModelHost(asyncio.new_event_loop())
    host._sock = ours
    big = np.arange(150_000, dtype=np.float32)  # 600 kB: several socket buffers
    frame = model_host._frame((0, ("ok", big)))
    first = theirs.send(frame[:100_000])  # in the socket before the wait starts
    sender = threading.Thread(target=theirs.sendall, args=(frame[first:],))
    try:
        future: asyncio.Future[Any] = host.loop.create_future()
        host._waiting[0] = future
        sender.start()
        host._wait_awake(future)
        assert future.done() or len(host._buffer) >= first  # it read, at least the first piece
        while not future.done():  # a slow machine: the rest, as the transport reads it
            select.select([ours], [], [], 5)
            host.data_received(ours.recv(1 << 20))
        kind, value = future.result()
        assert kind == "ok" and np.array_equal(value, big)
        # Nothing comes: the wait gives up after AWAKE_SECONDS, the future still open.
        late = host.loop.create_future()
        host._waiting[1] = late
        started = time.perf_counter()
        host._wait_awake(late)
        assert not late.done()
        assert model_host.AWAKE_SECONDS <= time.perf_counter() - started < 1.0
    finally:
        sender.join(10)
        host.loop.close()
        ours.close()
        theirs.close()


# ------------------------------------------------------------ model versions


def _wait_for(url: str, version: int, state: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, doc = http("GET", f"{url}/v1/models/mnist")
        found = {s["version"]: s for s in doc.get("model_version_status", [])}
        entry = found.get(str(version))
        if entry and entry["state"] == state:
            return entry
        assert time.monotonic() < deadline, f"version {version} not {state}: {doc}"
        time.sleep(0.1)


@needs_tf
def test_new_versions_load_while_serving_and_a_corrupt_one_is_reported(
    models: Path, refs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    base = tmp_path / "model"
    shutil.copytree(models / "1", base / "1")
    server = Server(base, tmp_path / "server.log", "--poll-seconds", "0.3")
    try:
        server.wait_ready()
        predict = f"{server.url}/v1/models/mnist:predict"
        images = {"instances": refs["images"].tolist()}

        # Version 2 is published the way a job publishes it: staged, then renamed.
        shutil.copytree(models / "2", base / ".staging-2")
        (base / ".staging-2").rename(base / "2")
        _wait_for(server.url, 2, "AVAILABLE", timeout=20)
        assert_rows(http("POST", predict, images)[1]["predictions"], refs, 2)
        status, doc = http("POST", f"{server.url}/v1/models/mnist/versions/1:predict", images)
        assert status == 200
        assert_rows(doc["predictions"], refs, 1)
        assert (
            http("GET", f"{server.url}/v1/models/mnist/metadata")[1]["model_spec"]["version"] == "2"
        )

        # A corrupt version 3: reported in the status, version 2 keeps serving.
        (base / "3").mkdir()
        (base / "3" / "saved_model.pb").write_bytes(b"this is not a SavedModel")
        entry = _wait_for(server.url, 3, "END", timeout=20)
        assert entry["status"]["error_code"] == "DATA_LOSS", entry
        assert "saved_model.pb" in entry["status"]["error_message"], entry
        assert_rows(http("POST", predict, images)[1]["predictions"], refs, 2)
        assert http("GET", f"{server.url}/healthz")[1]["version"] == "2"
        assert "version 3 failed to load (DATA_LOSS" in server.stderr()

        # Fixed in place (a copy of version 1's files): retried because its files changed.
        shutil.rmtree(base / "3")
        shutil.copytree(models / "1", base / "3")
        _wait_for(server.url, 3, "AVAILABLE", timeout=20)
        assert_rows(http("POST", predict, images)[1]["predictions"], refs, 1)
        # Two versions are kept (--max-versions 2): version 1 was unloaded.
        assert _wait_for(server.url, 1, "END")["status"]["error_code"] == "OK"
        assert http("POST", f"{server.url}/v1/models/mnist/versions/1:predict", images)[0] == 404
        assert server.proc.poll() is None
    finally:
        server.stop()


# --------------------------------------------------------------- start-up


@needs_tf
def test_missing_model_at_start_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    code, stderr = Server(missing, tmp_path / "a.log").finish(60)
    assert code == EXIT_MODEL_ERROR
    (line,) = stderr.splitlines()
    assert line.startswith(ERROR_PREFIX) and str(missing) in line and "export" in line

    empty = tmp_path / "model"
    (empty / ".staging-1").mkdir(parents=True)
    code, stderr = Server(empty, tmp_path / "b.log").finish(60)
    assert code == EXIT_MODEL_ERROR
    (line,) = stderr.splitlines()
    assert "still being written by a job" in line and str(empty / ".staging-1") in line


@needs_tf
def test_version_directory_given_as_base_path_says_so(models: Path, tmp_path: Path) -> None:
    code, stderr = Server(models / "1", tmp_path / "a.log").finish(60)
    assert code == EXIT_MODEL_ERROR
    (line,) = stderr.splitlines()
    assert f"pass its parent, --model-base-path {models}" in line


@needs_tf
def test_corrupt_model_at_start_names_the_path(tmp_path: Path) -> None:
    base = tmp_path / "model"
    (base / "1" / "variables").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"\x00garbage")
    code, stderr = Server(base, tmp_path / "a.log").finish(120)
    assert code == EXIT_MODEL_ERROR
    last = stderr.strip().splitlines()[-1]  # TensorFlow may print its own lines before
    assert last.startswith(f"{ERROR_PREFIX}cannot serve {base / '1'}: DATA_LOSS"), stderr
    assert "export the model again" in last


@needs_serving
def test_the_server_module_imports_no_tensorflow() -> None:
    code = (
        "import sys, kfnb.serving.server, kfnb.serving.codec, kfnb.serving.loader, "
        "kfnb.serving.versions, kfnb.serving.batcher, kfnb.serving.model_host; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------ codec and batcher, in-process


TWO_IN_TWO_OUT = SignatureInfo(
    "serving_default",
    {"a": TensorInfo("a", "DT_FLOAT", (-1, 2)), "b": TensorInfo("b", "DT_INT64", (-1,))},
    {"sum": TensorInfo("sum", "DT_FLOAT", (-1,)), "b": TensorInfo("b", "DT_INT64", (-1,))},
)


def test_codec_multi_input_row_and_columnar() -> None:
    signatures = {"serving_default": TWO_IN_TWO_OUT}
    rows = decode_predict(
        parse_json(b'{"instances": [{"a": [1, 2], "b": 3}, {"a": [4, 5], "b": 6}]}'), signatures
    )
    assert rows.rows == 2 and rows.row_format
    assert rows.inputs["a"].dtype == np.float32 and rows.inputs["b"].dtype == np.int64
    outputs = {"sum": np.array([3.0, 9.0], np.float32), "b": np.array([3, 6])}
    assert encode_predict(outputs, rows) == {
        "predictions": [{"b": 3, "sum": 3.0}, {"b": 6, "sum": 9.0}]
    }
    columns = decode_predict({"inputs": {"a": [[1, 2]], "b": [3]}}, signatures)
    assert encode_predict(outputs, columns) == {"outputs": {"b": [3, 6], "sum": [3.0, 9.0]}}
    with pytest.raises(RequestError, match="must be a list of objects naming them"):
        decode_predict({"instances": [[1, 2]]}, signatures)
    with pytest.raises(RequestError, match="either every element is an object"):
        decode_predict({"instances": [{"a": [1, 2], "b": 3}, [1]]}, signatures)
    with pytest.raises(RequestError, match="got non-integer numbers"):
        decode_predict({"inputs": {"a": [[1, 2]], "b": [3.5]}}, signatures)
    for huge in (b"18446744073709551616", b"1" + b"0" * 40):  # parsed as floats by orjson
        body = b'{"inputs": {"a": [[1, 2]], "b": [' + huge + b"]}}"
        with pytest.raises(RequestError, match="got integers out of int64's range"):
            decode_predict(parse_json(body), signatures)
    # NaN and Infinity are accepted, as TF Serving accepts them.
    nan = decode_predict(parse_json(b'{"inputs": {"a": [[NaN, Infinity]], "b": [1]}}'), signatures)
    assert np.isnan(nan.inputs["a"][0, 0]) and np.isinf(nan.inputs["a"][0, 1])


def test_batcher_merges_queued_requests_and_isolates_a_failing_one() -> None:
    calls: list[int] = []

    def add(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(a))
        time.sleep(0.02)  # a slow model, so that requests queue behind a running call
        if (b < 0).any():
            raise ValueError("negative b")
        return {"sum": a.sum(axis=1) + b, "b": b}

    model = LoadedModel(1, Path("."), {"serving_default": TWO_IN_TWO_OUT}, {"serving_default": add})
    batches: list[tuple[int, int]] = []
    batcher = Batcher(max_batch_rows=8, on_batch=lambda m, n, rows, s: batches.append((n, rows)))

    async def main() -> list[Any]:
        jobs = []
        for i in range(20):
            b = np.array([-1 if i == 13 else i], np.int64)
            inputs = {"a": np.full((1, 2), i, np.float32), "b": b}
            jobs.append(batcher.run(model, PredictRequest("serving_default", inputs, 1, True)))
        return list(await asyncio.gather(*jobs, return_exceptions=True))

    try:
        results = asyncio.run(main())
    finally:
        batcher.close()
    for i, result in enumerate(results):
        if i == 13:
            assert isinstance(result, ValueError)
        else:
            assert isinstance(result, tuple), result
            outputs = result[1]
            assert outputs["sum"].tolist() == [3 * i] and outputs["b"].tolist() == [i]
    assert max(calls) <= 8  # the cap
    assert len(calls) < 20 + 8  # merged calls, plus the retries of the failing batch
    assert any(n > 1 for n, _ in batches)


def test_run_batch_checks_json_bodies_and_merges_them_with_checked_requests() -> None:
    calls: list[int] = []

    def add(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(a))
        return {"sum": a.sum(axis=1) + b, "b": b}

    model = LoadedModel(1, Path("."), {"serving_default": TWO_IN_TWO_OUT}, {"serving_default": add})
    checked = PredictRequest(
        "serving_default", {"a": np.ones((2, 2), np.float32), "b": np.array([1, 2])}, 2, False
    )
    requests: list[Any] = [
        b'{"instances": [{"a": [1, 2], "b": 10}]}',
        b'{"instances": [{"a": [1, 2]}]}',  # no b: refused alone
        checked,
        b"not json",
        b'{"inputs": {"a": [[5, 5], [6, 6], [7, 7]], "b": [0, 0, 0]}}',
    ]
    done = run_batch(model, requests, max_rows=4)
    for bad, words in ((1, "Missing named input: b"), (3, "JSON Parse error")):
        with pytest.raises(RequestError, match=words):
            done.answer(bad, requests[bad])
    first, third, fifth = (done.answer(i, requests[i]) for i in (0, 2, 4))
    assert first[0].row_format and first[0].rows == 1 and first[0].inputs == {}
    assert first[1]["sum"].tolist() == [13.0]
    assert third[0] is checked and third[1]["sum"].tolist() == [3.0, 4.0]
    assert fifth[1]["sum"].tolist() == [10.0, 12.0, 14.0] and not fifth[0].row_format
    # 6 rows in calls of at most 4: the first two requests (3 rows), then the last (3).
    assert calls == [3, 3]
    assert [(c.requests, c.rows) for c in done.calls] == [((0, 2), 3), ((4,), 3)]


def test_batcher_checks_queued_bodies_while_the_model_runs() -> None:
    """With an idle event loop, every body queued behind a running batch is checked
    here; the model gets them as one merged request, and bad ones never reach it."""
    seen: list[list[Any]] = []
    release = threading.Event()

    def add(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        release.wait(5)
        return {"sum": a.sum(axis=1) + b, "b": b}

    model = LoadedModel(1, Path("."), {"serving_default": TWO_IN_TWO_OUT}, {"serving_default": add})
    batcher = Batcher()

    async def remote(requests: list[Any], max_rows: int, awake: bool) -> Any:
        seen.append([r if isinstance(r, bytes) else r.rows for r in requests])
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, run_batch, model, requests, max_rows)

    model.remote = remote  # as if in the model process: bodies may travel unchecked

    async def until(condition: Callable[[], bool]) -> None:
        """Turns of the loop until ``condition``: its own work, never a clock, decides."""
        for _ in range(10_000):
            if condition():
                return
            await asyncio.sleep(0)
        raise AssertionError("the event loop never got there")

    async def main() -> list[Any]:
        first = asyncio.ensure_future(batcher.run(model, b'{"inputs": {"a": [[1, 1]], "b": [0]}}'))
        await until(lambda: len(seen) == 1)  # the first batch is out, its model call blocked
        later = [
            asyncio.ensure_future(batcher.run(model, b'{"inputs": {"a": [[%d, 0]], "b": [0]}}' % i))
            for i in range(5)
        ]
        bad = asyncio.ensure_future(batcher.run(model, b'{"inputs": {"a": [[1, 1]]}}'))
        # Bodies are checked oldest first: once the last one is refused, all are checked.
        await until(bad.done)
        assert len(seen) == 1 and not first.done()  # all of it while the first batch ran
        release.set()
        return list(await asyncio.gather(first, *later, bad, return_exceptions=True))

    try:
        results = asyncio.run(main())
    finally:
        batcher.close()
    assert seen == [[b'{"inputs": {"a": [[1, 1]], "b": [0]}}'], [5]]
    assert [r[1]["sum"].tolist() for r in results[1:6]] == [[float(i)] for i in range(5)]
    assert isinstance(results[6], RequestError) and "Missing named input: b" in str(results[6])


# ----------------------------------------------------------------------- gRPC

# Seed 001's mnist_client.py, as it talks to TF Serving: a PredictRequest for model
# "mnist", signature "serving_default", input "x" of shape [1, 28, 28], then
# ``result.outputs["classes"].int_val[0]``. Only the channel is created the way
# current grpcio does it (the seed's grpc.beta API was removed from grpcio).
SEED_CLIENT = r"""
import sys
import numpy as np
import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.apis import get_model_metadata_pb2

address, images = sys.argv[1], np.load(sys.argv[2])
channel = grpc.insecure_channel(address)
stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
for x in images[:3]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mnist"
    request.model_spec.signature_name = "serving_default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x, shape=[1, 28, 28]))
    result = stub.Predict(request, 10.0)
    print("Your model says the above number is... %d!" % result.outputs["classes"].int_val[0])
    print("probabilities", list(result.outputs["predictions"].float_val))
    print("version", result.model_spec.version.value)

meta = get_model_metadata_pb2.GetModelMetadataRequest()
meta.model_spec.name = "mnist"
meta.metadata_field.append("signature_def")
answer = stub.GetModelMetadata(meta, 10.0)
signatures = get_model_metadata_pb2.SignatureDefMap()
answer.metadata["signature_def"].Unpack(signatures)
print("signatures", sorted(signatures.signature_def))
print("input", signatures.signature_def["serving_default"].inputs["x"].dtype)

def code(request):
    try:
        stub.Predict(request, 10.0)
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"
    return "OK"

unknown = predict_pb2.PredictRequest()
unknown.model_spec.name = "nope"
unknown.inputs["x"].CopyFrom(tf.make_tensor_proto(images[:1]))
print("unknown model ->", code(unknown))
double = predict_pb2.PredictRequest()
double.model_spec.name = "mnist"
double.inputs["x"].CopyFrom(tf.make_tensor_proto(images[:1].astype("float64")))
print("float64 input ->", code(double))
shape = predict_pb2.PredictRequest()
shape.model_spec.name = "mnist"
shape.inputs["x"].CopyFrom(tf.make_tensor_proto(images[:1, :27]))
print("wrong shape ->", code(shape))
version = predict_pb2.PredictRequest()
version.model_spec.name = "mnist"
version.model_spec.version.value = 9
version.inputs["x"].CopyFrom(tf.make_tensor_proto(images[:1]))
print("version 9 ->", code(version))
# 40-odd bytes asking for 20000 images: tf.make_ndarray would repeat the one value.
tiny = predict_pb2.PredictRequest()
tiny.model_spec.name = "mnist"
tiny.inputs["x"].dtype = tf.float32.as_datatype_enum
for size in (20000, 28, 28):
    tiny.inputs["x"].tensor_shape.dim.add().size = size
tiny.inputs["x"].float_val.append(0.5)
print("tiny huge ->", code(tiny), tiny.ByteSize())
few = predict_pb2.PredictRequest()
few.model_spec.name = "mnist"
few.inputs["x"].CopyFrom(tiny.inputs["x"])
few.inputs["x"].tensor_shape.dim[0].size = 1
few.inputs["x"].float_val.extend([0.5, 0.5])
print("too few values ->", code(few))
short = predict_pb2.PredictRequest()
short.model_spec.name = "mnist"
short.inputs["x"].CopyFrom(tf.make_tensor_proto(images[:2]))
short.inputs["x"].tensor_content = short.inputs["x"].tensor_content[:100]
print("short content ->", code(short))
"""


@needs_tf
def test_grpc_prediction_service_answers_the_seed_client(
    models: Path, refs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    if importlib.util.find_spec("tensorflow_serving") is None:
        pytest.skip("needs tensorflow-serving-api (make setup installs it)")
    base = tmp_path / "model"
    shutil.copytree(models / "1", base / "1")
    server = Server(base, tmp_path / "server.log", "--grpc-port", "0")
    try:
        server.wait_ready()
        assert server.grpc.startswith("127.0.0.1:"), server.grpc
        np.save(tmp_path / "images.npy", refs["images"])
        done = subprocess.run(
            [sys.executable, "-c", SEED_CLIENT, server.grpc, str(tmp_path / "images.npy")],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out = done.stdout
        said = [int(n) for n in re.findall(r"number is\.\.\. (\d+)!", out)]
        assert said == refs["v1_classes"][:3].tolist()
        probabilities = [
            json.loads(line.split(" ", 1)[1].replace("'", '"'))
            for line in out.splitlines()
            if line.startswith("probabilities")
        ]
        np.testing.assert_allclose(probabilities, refs["v1_predictions"][:3], atol=TOLERANCE)
        assert "version 1" in out
        assert "signatures ['__saved_model_init_op', 'serving_default']" in out
        assert "input 1" in out  # DT_FLOAT
        assert "unknown model -> NOT_FOUND: Servable not found for request: Latest(nope)" in out
        assert "float64 input -> INVALID_ARGUMENT: input 'x' is DT_DOUBLE but" in out
        assert "wrong shape -> INVALID_ARGUMENT: input 'x': expected DT_FLOAT" in out
        assert "version 9 -> NOT_FOUND: Servable not found for request: Specific(mnist, 9)" in out
        tiny = re.search(r"tiny huge -> (.*) (\d+)$", out, re.M)
        assert tiny is not None and int(tiny[2]) < 64, out
        assert tiny[1].startswith(
            "RESOURCE_EXHAUSTED: input 'x' of shape [20000, 28, 28] (DT_FLOAT) takes 62720000 "
            "bytes, over this server's limit of 16777216 bytes"
        ), tiny[1]
        assert (
            "too few values -> INVALID_ARGUMENT: input 'x' of shape [1, 28, 28] (DT_FLOAT) "
            "needs 784 values in float_val, but carries 3" in out
        )
        assert (
            "short content -> INVALID_ARGUMENT: input 'x' of shape [2, 28, 28] (DT_FLOAT) "
            "needs 6272 bytes of tensor_content, but carries 100" in out
        )
        # Only the seed's three good requests reached the model.
        assert metric(server.url, "kfnb_serving_batches_total") == 3
        # gRPC requests are counted beside REST ones, and the REST side still answers.
        assert metric(server.url, "kfnb_serving_requests_total", api="grpc_predict") == 10
        status, doc = http(
            "POST",
            f"{server.url}/v1/models/mnist:predict",
            {"instances": refs["images"][:1].tolist()},
        )
        assert status == 200 and doc["predictions"][0]["classes"] == refs["v1_classes"][0]
    finally:
        server.stop()


@needs_serving
def test_grpc_port_in_use_fails_before_loading(tmp_path: Path) -> None:
    import socket

    if importlib.util.find_spec("tensorflow_serving") is None:
        pytest.skip("needs tensorflow-serving-api (make setup installs it)")
    (tmp_path / "model" / "1").mkdir(parents=True)
    (tmp_path / "model" / "1" / "saved_model.pb").write_bytes(b"")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        server = Server(tmp_path / "model", tmp_path / "server.log", "--grpc-port", str(port))
        started = time.perf_counter()
        code, stderr = server.finish(timeout=60)
        assert code == EXIT_USAGE
        assert f"port {port} on 127.0.0.1 is already in use" in stderr
        assert time.perf_counter() - started < 5  # TensorFlow was never imported
    finally:
        taken.close()


# ------------------------------------------------------------------- %serve


@needs_tf
def test_serve_magic_starts_lists_restarts_and_stops_a_server(
    shell: Any, models: Path, refs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    import signal

    from IPython.core.error import UsageError

    saved = tmp_path / "exported"
    shutil.copytree(models / "2", saved)  # one SavedModel, not a directory of versions
    served = shell.run_line_magic("serve", f"{saved} --port 0 --grpc-port 0")
    assert served.alive() and served.version == 1 and served.source == str(saved)
    body = {"instances": refs["images"][:2].tolist()}
    status, doc = http("POST", served.predict_url, body)
    assert status == 200
    assert_rows(doc["predictions"], refs, 2)  # version 2's weights, served as version 1

    with pytest.raises(UsageError, match="mnist is already served at http://127.0.0.1:"):
        shell.run_line_magic("serve", f"{saved} --port 0")
    listed = shell.run_line_magic("serve", "list")  # %kfnb's sub-command form
    assert listed is None

    os.kill(served.pid, signal.SIGKILL)  # the server dies under the notebook
    deadline = time.monotonic() + 10
    while served.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not served.alive()
    with pytest.raises(OSError):  # refused or reset: nobody answers
        http("POST", served.predict_url, body)
    restarted = shell.run_line_magic("serve", "restart mnist")
    assert restarted.alive() and restarted.pid != served.pid
    assert (restarted.url, restarted.grpc) == (served.url, served.grpc)  # same ports
    status, doc = http("POST", restarted.predict_url, body)
    assert status == 200 and len(doc["predictions"]) == 2

    shell.run_line_magic("serve", "stop mnist")
    assert not restarted.alive()
    with pytest.raises(UsageError, match="no model server named mnist"):
        shell.run_line_magic("serve", "--stop mnist")  # the flag form, kept as an alias


@needs_tf
def test_serve_binds_the_port_it_picks_and_hands_the_socket_over(
    kfnb_home: Path, models: Path, refs: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process trying to take the port while the server starts (between the pick
    and TensorFlow's start) cannot: the kernel holds it bound and the server inherits it."""
    from kfnb.serving import local

    spawn = local._spawn
    intruders: list[str] = []

    def spawn_with_an_intruder(argv: Any, log_file: Path, **kwargs: Any) -> Any:
        port = int(argv[list(argv).index("--port") + 1])
        intruder = socket.socket()
        try:
            intruder.bind(("127.0.0.1", port))
            intruder.listen()
            intruders.append("took the port")
        except OSError:
            intruders.append("refused")
        process = spawn(argv, log_file, **kwargs)
        time.sleep(0.5)  # the intruder listens while the server starts
        intruder.close()
        return process

    monkeypatch.setattr(local, "_spawn", spawn_with_an_intruder)
    serving = local.LocalServing()
    served = serving.start("mnist", models, "models", timeout=120)
    try:
        assert intruders == ["refused"]
        assert served.alive()
        status, doc = http(
            "POST", served.predict_url, {"instances": refs["images"][:1].tolist()}
        )
        assert status == 200, doc
        assert "--listen-fd" not in served.argv  # a restart binds the recorded port itself
        assert f"--port {served.url.rsplit(':', 1)[1]}" in " ".join(served.argv)
    finally:
        serving.stop("mnist")


@needs_serving
def test_serve_magic_bad_input_is_one_line(shell: Any, tmp_path: Path) -> None:
    from IPython.core.error import UsageError

    cases = {
        "nowhere": "no job or SavedModel named nowhere: give a job from `%kfnb list`",
        str(tmp_path): "is not a SavedModel (no saved_model.pb) nor a directory of numbered",
        f"{tmp_path} --replicas 2": "--replicas and --gpus apply to a Kubernetes server",
        f"{tmp_path} --canary other --percent 10": "--canary needs the Kubernetes backend",
        "": "%serve needs a job name or a SavedModel path",
    }
    for line, message in cases.items():
        with pytest.raises(UsageError) as caught:
            shell.run_line_magic("serve", line)
        assert message in str(caught.value), (line, caught.value)
        assert "\n" not in str(caught.value)


@needs_serving
def test_serve_magic_reports_why_a_server_did_not_start(shell: Any, tmp_path: Path) -> None:
    import socket

    from IPython.core.error import UsageError

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "saved_model.pb").write_bytes(b"\x00not a protobuf")
    if importlib.util.find_spec("tensorflow") is not None:
        with pytest.raises(UsageError, match="the model server did not start: cannot serve"):
            shell.run_line_magic("serve", f"{corrupt} --port 0 --grpc-port 0")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"port {port} on 127.0.0.1 is already in use"):
            shell.run_line_magic("serve", f"{corrupt} --port {port}")
    finally:
        taken.close()


@needs_tf
def test_serve_an_s3_url_downloads_the_newest_version(
    shell: Any, models: Path, refs: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against moto's S3 server on 127.0.0.1 (real HTTP, the minio client)."""
    pytest.importorskip("minio")
    pytest.importorskip("moto")
    from kfnb.backends.supervisor import free_port
    from kfnb.config import reset_settings, settings
    from kfnb.storage import open_store
    from tests.s3_server import start_moto

    port = free_port()
    moto: Any = start_moto(port)
    try:
        for key, value in {
            "S3_ENDPOINT": f"127.0.0.1:{port}",
            "S3_USE_HTTPS": "0",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }.items():
            monkeypatch.setenv(key, value)
        reset_settings()
        settings()
        store = open_store("s3://kfnb-serve/models/mnist")
        store.check()
        store.upload_dir(models / "1", "1")
        store.upload_dir(models / "2", "2")
        served = shell.run_line_magic("serve", "s3://kfnb-serve/models/mnist --port 0")
        assert served.version == 2
        body = {"instances": refs["images"][:2].tolist()}
        status, doc = http("POST", served.predict_url, body)
        assert status == 200
        assert_rows(doc["predictions"], refs, 2)
        shell.run_line_magic("serve", "--stop mnist")
        single = shell.run_line_magic("serve", "s3://kfnb-serve/models/mnist/1 --port 0")
        status, doc = http("POST", single.predict_url, body)
        assert status == 200
        assert_rows(doc["predictions"], refs, 1)
    finally:
        moto.stop()


@needs_serving
def test_tensorflow_threads_leave_a_core_to_the_http_side() -> None:
    from kfnb.serving.server import ServerConfig, thread_counts

    assert thread_counts(ServerConfig(Path(".")), cores=2) == (1, 1)
    assert thread_counts(ServerConfig(Path(".")), cores=16) == (15, 2)
    assert thread_counts(ServerConfig(Path(".")), cores=1) == (1, 1)
    asked = ServerConfig(Path("."), intra_op_threads=4, inter_op_threads=3)
    assert thread_counts(asked, cores=2) == (4, 3)


def test_batcher_runs_a_lone_quick_request_in_the_callers_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where a call runs follows from how long the signature's last lone call took.
    That time is read from a fake clock that only the model moves, by ``cost``: a
    quick call costs nothing, a slow one twice ``inline_seconds``, however busy the
    machine is."""
    from kfnb.serving import batch

    now = 0.0
    monkeypatch.setattr(batch, "time", SimpleNamespace(perf_counter=lambda: now))
    threads: list[str] = []
    cost = 0.0

    def add(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal now
        threads.append(threading.current_thread().name)
        now += cost
        if (b < 0).any():
            raise ValueError("negative b")
        return {"sum": a.sum(axis=1) + b, "b": b}

    model = LoadedModel(1, Path("."), {"serving_default": TWO_IN_TWO_OUT}, {"serving_default": add})
    batches: list[int] = []
    batcher = Batcher(on_batch=lambda m, n, rows, s: batches.append(n), inline_seconds=0.005)

    def inputs(b: int) -> PredictRequest:
        arrays = {"a": np.ones((1, 2), np.float32), "b": np.array([b], np.int64)}
        return PredictRequest("serving_default", arrays, 1, True)

    async def main() -> None:
        nonlocal cost

        async def run(request: PredictRequest, alone: bool = False) -> dict[str, np.ndarray]:
            return (await batcher.run(model, request, alone=alone))[1]

        # The first call's time is unknown, so it goes to the worker; then a lone
        # request runs here, and one that others may join goes to the worker.
        assert (await run(inputs(1), alone=True))["sum"] == [3]
        assert (await run(inputs(2), alone=True))["sum"] == [4]
        assert (await run(inputs(3)))["sum"] == [5]
        # A failure inline is the same exception the worker would give.
        with pytest.raises(ValueError, match="negative b"):
            await run(inputs(-1), alone=True)
        # A signature slower than inline_seconds stays on the worker, lone or not.
        cost = 2 * batcher.inline_seconds
        await run(inputs(4), alone=True)  # still here: the last call was quick
        await run(inputs(5), alone=True)
        assert model.single_call_seconds["serving_default"] == cost

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    here = threading.current_thread().name
    where = ["here" if t == here else t.rstrip("_0123456789") for t in threads]
    assert where == ["kfnb-batcher", "here", "kfnb-batcher", "here", "here", "kfnb-batcher"]
    assert batches == [1] * 6  # every call counted in the metrics, wherever it ran


FLAT_CALL = r"""
import sys
from pathlib import Path
import numpy as np
import tensorflow as tf
from kfnb.serving.loader import load_saved_model

class Diff(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="minuend"),
                                  tf.TensorSpec([None, 3], tf.float32, name="a_subtrahend")])
    def serve(self, minuend, a_subtrahend):
        return {"diff": minuend - a_subtrahend, "sum": tf.reduce_sum(minuend, axis=1)}

path = Path(sys.argv[1]) / "1"
module = Diff()
tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
model = load_saved_model(path, 1)
m = np.array([[5.0, 6.0, 7.0]], np.float32)
s = np.array([[1.0, 1.0, 2.0]], np.float32)
out = model.run("serving_default", {"minuend": m, "a_subtrahend": s})
print(model._functions["serving_default"].__name__, out["diff"].tolist(), out["sum"].tolist())
"""


@needs_tf
def test_signatures_are_called_by_the_flat_call_with_inputs_in_order(tmp_path: Path) -> None:
    """Inputs whose order matters (named so that sorted order differs from the
    function's): the quick flat call is chosen and gets each input in its place."""
    done = subprocess.run(
        [sys.executable, "-c", FLAT_CALL, str(tmp_path)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "flat"
    assert done.stdout.strip().endswith("[[4.0, 5.0, 5.0]] [18.0]")


def test_a_flat_call_that_answers_differently_is_not_used() -> None:
    info = SignatureInfo(
        "serving_default",
        {"a": TensorInfo("a", "DT_FLOAT", (-1, 2)), "b": TensorInfo("b", "DT_FLOAT", (-1, 2))},
        {"diff": TensorInfo("diff", "DT_FLOAT", (-1, 2))},
    )

    def public(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        return {"diff": a - b}

    def swapped(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        return {"diff": b - a}

    def failing(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
        raise TypeError("no such call")

    assert _same_answers(public, public, info)
    assert not _same_answers(public, swapped, info)
    assert not _same_answers(public, failing, info)
    unknown = SignatureInfo("s", {"a": TensorInfo("a", "DT_FLOAT", (-1, -1))}, info.outputs)
    assert not _same_answers(public, public, unknown)  # nothing to compare on
