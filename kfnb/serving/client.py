"""`Predictor`: a client for any TF Serving / KServe v1 REST endpoint.

    from kfnb.serving.client import Predictor
    answer = Predictor("http://127.0.0.1:8501").predict(images)   # (N, 28, 28)
    answer.labels, answer.probabilities, answer.latency

It speaks only the public REST API (``/v1/models/NAME[/versions/V]:predict``), so
it works the same against kfnb's local server, TF Serving and KServe's TF
predictor. Every failure is a `PredictorError` with one line that says what
happened and what to do. Importing this module is cheap: ``requests`` is
imported when the first `Predictor` is made, TensorFlow and the HTTP server never.

``python -m kfnb.serving.client`` is ``kfnb predict`` (see `kfnb.serving.predict_cli`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kfnb._util import first_line

__all__ = [
    "ModelStatus",
    "Prediction",
    "Predictor",
    "PredictorError",
    "VersionState",
    "to_pixels",
]

IMAGE_SHAPE = (28, 28)
# Output names that carry class probabilities, in the order they are looked for:
# the Kubeflow MNIST export's, then names other exports commonly use.
# A model name is one segment of /v1/models/NAME, as TF Serving routes it: nothing that
# would make the URL name another path ('/', '..'), a verb (':') or a query.
_MODEL_NAME = re.compile(r"[-_.~A-Za-z0-9]+")
_PROBABILITY_KEYS = ("predictions", "probabilities", "scores", "probs", "logits")
_LABEL_KEYS = ("classes", "class_ids", "labels")
_SERVE_HINT = "check `%serve list`, or start one with `%serve JOB`"


class PredictorError(RuntimeError):
    """A prediction that could not be made, in one line that names the fix.

    ``kind`` says which failure it was, so callers (the widget) can word their own:
    ``"unreachable"`` (nothing listens), ``"timeout"``, ``"http"`` (the server
    answered an error; ``status`` is its HTTP status), ``"answer"`` (an answer
    that is not a prediction) or ``"input"`` (the images given were wrong).
    """

    def __init__(self, message: str, kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def server_down(self) -> bool:
        """True when no server answered at all (as opposed to an answer with an error)."""
        return self.kind in ("unreachable", "timeout")


@dataclass(frozen=True, eq=False)
class Prediction:
    """What the model said about N images (arrays are read-only)."""

    labels: np.ndarray  # (N,) int64, the predicted digits
    probabilities: np.ndarray  # (N, classes) float32
    version: int | None  # the model version that answered, when known
    latency: float  # seconds from sending the request to the parsed answer

    @property
    def confidences(self) -> np.ndarray:
        """The probability of each predicted label, (N,)."""
        rows = np.arange(len(self.labels))
        return np.asarray(self.probabilities[rows, self.labels])

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class VersionState:
    version: int
    state: str  # TF Serving's: START, LOADING, AVAILABLE, UNLOADING, END
    error: str  # error_message, empty when fine


@dataclass(frozen=True)
class ModelStatus:
    """``GET /v1/models/NAME``: every version the server knows and its state."""

    model: str
    versions: tuple[VersionState, ...]

    @property
    def serving(self) -> int | None:
        """The version requests without a version get: the newest available one."""
        available = [v.version for v in self.versions if v.state == "AVAILABLE"]
        return max(available) if available else None


def to_pixels(images: Any) -> np.ndarray:
    """(N, 28, 28) float32 in [0, 1] from one image or a batch, uint8 0-255 or floats in [0, 1]."""
    try:
        array = np.asarray(images)
    except Exception as exc:
        raise PredictorError(f"images are not an array: {exc}", "input") from exc
    if array.shape == IMAGE_SHAPE:
        array = array[np.newaxis]
    if array.ndim != 3 or array.shape[1:] != IMAGE_SHAPE or len(array) == 0:
        raise PredictorError(
            f"images have shape {list(array.shape)}: give one 28x28 image or a batch (N, 28, 28)",
            "input",
        )
    if array.dtype == np.bool_ or array.dtype.kind not in "uif":
        raise PredictorError(
            f"images are {array.dtype}: give uint8 pixels 0-255 or floats in [0, 1]", "input"
        )
    if array.dtype.kind in "ui":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise PredictorError(
                f"integer pixels run from {low} to {high}: give uint8 pixels 0-255", "input"
            )
        return array.astype(np.float32) / np.float32(255.0)
    pixels = array.astype(np.float32)
    if not np.isfinite(pixels).all():
        raise PredictorError("images contain NaN or infinite pixels", "input")
    low_f, high_f = float(pixels.min()), float(pixels.max())
    if low_f < 0.0 or high_f > 1.0:
        raise PredictorError(
            f"float pixels run from {low_f:g} to {high_f:g}: scale them to [0, 1] "
            "(divide by 255) or pass uint8",
            "input",
        )
    return pixels


def _dumps(body: Mapping[str, Any]) -> bytes:
    """orjson writes float32 arrays directly and shortest (json writes each as a float64's repr)."""
    try:
        import orjson
    except ImportError:
        plain = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in body.items()}
        return json.dumps(plain).encode()
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


class Predictor:
    """Predictions from a TF Serving compatible REST endpoint, over one keep-alive session.

    ``url`` is the server's root (``http://host:8501``); ``version`` pins a model
    version (default: the newest the server serves); ``signature`` names a
    signature other than ``serving_default``; ``timeout`` bounds each request.
    Not thread-safe: give each thread its own `Predictor`.
    """

    def __init__(
        self,
        url: str,
        model: str = "mnist",
        version: int | None = None,
        timeout: float = 10.0,
        signature: str | None = None,
    ) -> None:
        import requests  # here, not at import: `import kfnb` stays fast

        url = url.strip().rstrip("/")
        if "://" not in url:
            url = f"http://{url}"
        if not url.startswith(("http://", "https://")):
            raise PredictorError(f"{url} is not an http(s) URL: use http://HOST:PORT", "input")
        if not _MODEL_NAME.fullmatch(model) or model in (".", ".."):
            raise PredictorError(
                f"model name {model!r} is not one segment of /v1/models/NAME: give the name "
                "the server serves (letters, digits, '-', '_', '.'), e.g. mnist",
                "input",
            )
        self.url = url
        self.model = model
        self.version = version
        self.timeout = timeout
        self.signature = signature
        self._session = requests.Session()

    def __repr__(self) -> str:
        version = "" if self.version is None else f", version={self.version}"
        return f"Predictor({self.url!r}, model={self.model!r}{version})"

    @property
    def model_url(self) -> str:
        version = "" if self.version is None else f"/versions/{self.version}"
        return f"{self.url}/v1/models/{self.model}{version}"

    # -- the API

    def predict(self, images: Any) -> Prediction:
        """Labels and probabilities for one (28, 28) image or a batch (N, 28, 28)."""
        pixels = to_pixels(images)
        body: dict[str, Any] = {"instances": pixels}
        if self.signature:
            body["signature_name"] = self.signature
        data = _dumps(body)
        started = time.perf_counter()
        answer = self._request("POST", f"{self.model_url}:predict", data)
        labels, probabilities = _parse_predictions(answer, len(pixels), self.model_url)
        latency = time.perf_counter() - started
        version = self.version
        if version is None and isinstance(answer.get("model_version"), str | int):
            version = _int_or_none(answer["model_version"])  # KServe-style servers say so
        return Prediction(labels, probabilities, version, latency)

    def status(self) -> ModelStatus:
        """The versions the server knows (``GET /v1/models/NAME``)."""
        answer = self._request("GET", self.model_url)
        try:
            versions = tuple(
                VersionState(
                    int(entry["version"]),
                    str(entry["state"]),
                    str((entry.get("status") or {}).get("error_message", "")),
                )
                for entry in answer["model_version_status"]
            )
        except (KeyError, TypeError, ValueError) as err:
            raise _garbage(self.model_url, "no model_version_status list", answer) from err
        return ModelStatus(self.model, versions)

    def metadata(self) -> dict[str, Any]:
        """The model's signatures as the server reports them (``GET .../metadata``)."""
        return self._request("GET", f"{self.model_url}/metadata")

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- HTTP

    def _request(self, method: str, url: str, data: bytes | None = None) -> dict[str, Any]:
        import requests

        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            response = self._session.request(
                method, url, data=data, headers=headers, timeout=self.timeout
            )
        except requests.Timeout as err:
            raise PredictorError(
                f"the model server at {self.url} did not answer within {self.timeout:g} s: "
                "it may be overloaded or stuck; raise timeout= or check `%serve list`",
                "timeout",
            ) from err
        except requests.ConnectionError as err:
            raise PredictorError(
                f"no model server answers at {self.url}: {_SERVE_HINT}", "unreachable"
            ) from err
        except requests.RequestException as exc:
            raise PredictorError(f"request to {url} failed: {exc}", "unreachable") from exc
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code >= 400:
            if isinstance(answer, dict) and isinstance(answer.get("error"), str):
                reason = answer["error"]
            else:
                reason = first_line(response.text, 200) or response.reason or "no details"
            raise PredictorError(
                f"{method} {url} failed with HTTP {response.status_code}: {reason}",
                "http",
                response.status_code,
            )
        if not isinstance(answer, dict):
            raise _garbage(url, "not a JSON object", response.text)
        return answer


def _parse_predictions(answer: Mapping[str, Any], rows: int, url: str) -> tuple[Any, Any]:
    """(labels, probabilities) from row format (``predictions``) or columnar (``outputs``).

    Either holds one output (the probability vectors) or several by name: the
    probabilities are found by name, the labels are ``classes`` if given, else
    the argmax.
    """
    if "predictions" in answer:
        payload = answer["predictions"]
        if isinstance(payload, list) and payload and all(isinstance(r, dict) for r in payload):
            columns = {key: [row.get(key) for row in payload] for key in payload[0]}
            return _from_columns(columns, rows, url, answer)
        return _from_columns({"": payload}, rows, url, answer)
    if "outputs" in answer:
        payload = answer["outputs"]
        if isinstance(payload, dict):
            return _from_columns(payload, rows, url, answer)
        return _from_columns({"": payload}, rows, url, answer)
    raise _garbage(url, "neither 'predictions' nor 'outputs'", answer)


def _from_columns(
    columns: Mapping[str, Any], rows: int, url: str, answer: Any
) -> tuple[np.ndarray, np.ndarray]:
    key = next((k for k in ("", *_PROBABILITY_KEYS) if k in columns), None)
    if key is None:
        matrices = [k for k, v in columns.items() if np.asarray(v, dtype=object).ndim == 2]
        if len(matrices) != 1:
            raise _garbage(url, f"no probabilities among outputs {sorted(columns)}", answer)
        key = matrices[0]
    try:
        probabilities = np.asarray(columns[key], dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise _garbage(url, f"output {key or 'predictions'!r} is not numbers", answer) from err
    if probabilities.ndim != 2 or len(probabilities) != rows or probabilities.shape[1] < 2:
        raise _garbage(
            url,
            f"probabilities of shape {list(probabilities.shape)} for {rows} images",
            answer,
        )
    label_key = next((k for k in _LABEL_KEYS if k in columns), None)
    labels = probabilities.argmax(axis=1).astype(np.int64)
    if label_key is not None:
        try:
            given = np.asarray(columns[label_key], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError) as err:
            raise _garbage(url, f"output {label_key!r} is not integers", answer) from err
        if given.shape != (rows,):
            raise _garbage(url, f"{len(given)} {label_key} for {rows} images", answer)
        labels = given
    probabilities.setflags(write=False)
    labels.setflags(write=False)
    return labels, probabilities


def _garbage(url: str, what: str, answer: Any) -> PredictorError:
    sample = answer if isinstance(answer, str) else json.dumps(answer, default=str)
    return PredictorError(
        f"the answer from {url} is not a TF Serving prediction ({what}): {sample[:120]!r}; "
        "is this a TF Serving or KServe v1 endpoint?",
        "answer",
    )


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _main(argv: Sequence[str] | None = None) -> int:
    from kfnb.serving.predict_cli import main

    return main(argv)


if __name__ == "__main__":
    raise SystemExit(_main())
