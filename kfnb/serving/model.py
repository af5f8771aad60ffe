"""What the model server serves: versions on disk, loaded SavedModels, the JSON codec, batching.

Nothing here imports TensorFlow or aiohttp at module level. TensorFlow is imported
in the loader thread (``load_saved_model``) and used in the batching worker thread,
never in the event loop, so a bad request is refused without touching TensorFlow
and ``import kfnb.serving.model`` stays cheap for clients and tests.

The layout is TF Serving's: ``<base>/<N>/saved_model.pb`` for each version N.
Directories that are not all digits (``model/.staging-2`` while a job writes it)
are ignored, so a half-written model is never loaded.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_SIGNATURE",
    "Batcher",
    "LoadedModel",
    "ModelLoadError",
    "ModelManager",
    "PredictRequest",
    "RequestError",
    "SignatureInfo",
    "TensorInfo",
    "VersionStatus",
    "check_base_path",
    "decode_predict",
    "encode_predict",
    "load_saved_model",
    "parse_json",
    "scan_versions",
]

log = logging.getLogger("kfnb.serving")

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"

# TF DataType names -> the numpy dtype a JSON value is converted to. Kept here
# (rather than asked of TensorFlow) so requests are checked without TensorFlow.
_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "DT_FLOAT": np.dtype(np.float32),
    "DT_DOUBLE": np.dtype(np.float64),
    "DT_HALF": np.dtype(np.float16),
    "DT_INT8": np.dtype(np.int8),
    "DT_INT16": np.dtype(np.int16),
    "DT_INT32": np.dtype(np.int32),
    "DT_INT64": np.dtype(np.int64),
    "DT_UINT8": np.dtype(np.uint8),
    "DT_UINT16": np.dtype(np.uint16),
    "DT_UINT32": np.dtype(np.uint32),
    "DT_UINT64": np.dtype(np.uint64),
    "DT_BOOL": np.dtype(np.bool_),
    "DT_STRING": np.dtype(np.object_),
}

# TensorFlow's canonical error codes (tensorflow/core/protobuf/error_codes.proto),
# the words TF Serving puts in a version's status.
_ERROR_CODES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


# ---------------------------------------------------------------- signatures


@dataclass(frozen=True)
class TensorInfo:
    """One named input or output of a signature, as its SignatureDef describes it."""

    key: str
    dtype: str  # TF's DataType name, e.g. "DT_FLOAT"
    shape: tuple[int, ...] | None  # -1 for a dimension of any size; None: unknown rank
    name: str = ""  # the graph tensor, e.g. "serving_default_x:0"

    @property
    def numpy_dtype(self) -> np.dtype[Any] | None:
        """What JSON values become; None for dtypes JSON cannot carry (resources, variants)."""
        return _NUMPY_DTYPES.get(self.dtype)

    @property
    def shape_text(self) -> str:
        if self.shape is None:
            return "of any shape"
        return "[" + ", ".join("None" if d < 0 else str(d) for d in self.shape) + "]"

    def to_json(self) -> dict[str, Any]:
        """TF Serving's JSON for a TensorInfo (sizes are strings: protobuf's int64 mapping)."""
        dims = [{"size": str(d), "name": ""} for d in (self.shape or ())]
        return {
            "dtype": self.dtype,
            "tensor_shape": {"dim": dims, "unknown_rank": self.shape is None},
            "name": self.name,
        }


@dataclass(frozen=True)
class SignatureInfo:
    """A signature's inputs and outputs: what requests are checked against before queuing."""

    name: str
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]
    method_name: str = PREDICT_METHOD

    @property
    def batchable(self) -> bool:
        """Whether requests can be concatenated: every tensor's 0-th dimension is the batch."""
        tensors = [*self.inputs.values(), *self.outputs.values()]
        return bool(self.inputs) and all(t.shape and t.shape[0] < 0 for t in tensors)

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": {k: v.to_json() for k, v in self.inputs.items()},
            "outputs": {k: v.to_json() for k, v in self.outputs.items()},
            "method_name": self.method_name,
        }


# ------------------------------------------------------------------- requests


class RequestError(Exception):
    """A refused request: ``status`` is its HTTP status, the message TF Serving's error."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class PredictRequest:
    """A checked predict request: numpy inputs of the signature's dtypes and shapes."""

    signature: str
    inputs: dict[str, np.ndarray]
    rows: int | None  # the inputs' shared 0-th dimension; None when they share none
    row_format: bool  # "instances" (answer "predictions") or "inputs" (answer "outputs")


def parse_json(body: bytes) -> Any:
    """The body as JSON (NaN and Infinity allowed, as TF Serving allows them)."""
    try:
        return json.loads(body)
    except RecursionError:
        raise RequestError("JSON Parse error: the document is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise RequestError(f"JSON Parse error: {exc}") from None


def decode_predict(doc: Any, signatures: Mapping[str, SignatureInfo]) -> PredictRequest:
    """Check a parsed ``:predict`` body against the signature and convert it to numpy.

    Row format (``instances``: a list of instances, or of objects naming the inputs)
    and columnar format (``inputs``: a value, or an object naming the inputs), as in
    TF Serving's REST API. Everything that could fail in TensorFlow because of the
    request's form (dtype, rank, fixed dimensions) fails here with a 400 instead.
    """
    if not isinstance(doc, dict):
        raise RequestError(
            "the request body must be a JSON object with 'instances' or 'inputs', "
            f"not a JSON {_json_kind(doc)}"
        )
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise RequestError("'signature_name' must be a string")
    name = name or DEFAULT_SIGNATURE  # "" means the default, as in TF Serving
    signature = signatures.get(name)
    if signature is None:
        raise RequestError(f'Serving signature name: "{name}" not found in signature def')
    if "instances" in doc and "inputs" in doc:
        raise RequestError("Not both 'instances' and 'inputs': send one of them")
    if "instances" in doc:
        inputs = _decode_rows(doc["instances"], signature)
        row_format = True
    elif "inputs" in doc:
        inputs = _decode_columns(doc["inputs"], signature)
        row_format = False
    else:
        raise RequestError("Missing 'inputs' or 'instances' key")
    firsts = {a.shape[0] if a.ndim else None for a in inputs.values()}
    rows = firsts.pop() if len(firsts) == 1 else None
    return PredictRequest(name, inputs, rows, row_format)


def _decode_rows(instances: Any, signature: SignatureInfo) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise RequestError(
            f"'instances' must be a list with one element per instance, "
            f"not a JSON {_json_kind(instances)}"
        )
    if instances and isinstance(instances[0], dict):
        columns: dict[str, list[Any]] = {key: [] for key in signature.inputs}
        for index, row in enumerate(instances):
            if not isinstance(row, dict):
                raise RequestError(
                    f"'instances' element {index} is a JSON {_json_kind(row)}: either every "
                    "element is an object naming the inputs, or none is"
                )
            _check_names(row, signature, f"'instances' element {index}")
            for key in columns:
                columns[key].append(row[key])
        return {
            key: _to_array(values, signature.inputs[key], f"'instances' input '{key}'")
            for key, values in columns.items()
        }
    if len(signature.inputs) != 1:
        raise RequestError(
            f"signature '{signature.name}' takes {len(signature.inputs)} inputs "
            f"({_names(signature.inputs)}): 'instances' must be a list of objects naming them, "
            "or send 'inputs' as an object"
        )
    ((key, info),) = signature.inputs.items()
    return {key: _to_array(instances, info, "'instances'")}


def _decode_columns(value: Any, signature: SignatureInfo) -> dict[str, np.ndarray]:
    if isinstance(value, dict):
        _check_names(value, signature, "'inputs' object")
        return {
            key: _to_array(value[key], info, f"'inputs' input '{key}'")
            for key, info in signature.inputs.items()
        }
    if len(signature.inputs) != 1:
        raise RequestError(
            f"signature '{signature.name}' takes {len(signature.inputs)} inputs "
            f"({_names(signature.inputs)}): 'inputs' must be an object naming them"
        )
    ((key, info),) = signature.inputs.items()
    return {key: _to_array(value, info, "'inputs'")}


def _check_names(given: Mapping[str, Any], signature: SignatureInfo, where: str) -> None:
    for key in signature.inputs:
        if key not in given:
            raise RequestError(f"Missing named input: {key} in {where}.")
    for key in given:
        if key not in signature.inputs:
            raise RequestError(
                f"{where} names input '{key}', which signature '{signature.name}' does not "
                f"take (it takes {_names(signature.inputs)})"
            )


def _names(tensors: Mapping[str, TensorInfo]) -> str:
    return ", ".join(f"'{k}'" for k in tensors)


def _to_array(value: Any, info: TensorInfo, where: str) -> np.ndarray:
    """``value`` as an array of the input's dtype, or a RequestError saying what was expected."""
    target = info.numpy_dtype
    if target is None:
        raise RequestError(f"{where}: this server cannot take {info.dtype} values as JSON")
    kind_words = "strings" if target.kind == "O" else f"{target.name} numbers"
    if target.kind == "b":
        kind_words = "booleans"
    expected = f"expected {info.dtype} ({kind_words}) {info.shape_text}"
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        if "maximum number of dimension" in str(exc) or isinstance(exc, RecursionError):
            raise RequestError(f"{where}: {expected}; got lists nested too deeply") from None
        raise RequestError(f"{where}: {expected}; got nested lists of uneven length") from None
    kind = array.dtype.kind
    accepted = {"f": "fiu", "c": "fiu", "i": "iu", "u": "iu", "b": "b", "O": "U"}[target.kind]
    if kind not in accepted or array.dtype.hasobject:
        raise RequestError(f"{where}: {expected}; got {_found(array)}")
    if info.shape is not None:
        fits = array.ndim == len(info.shape) and all(
            want < 0 or want == got for want, got in zip(info.shape, array.shape, strict=True)
        )
        if not fits:
            raise RequestError(f"{where}: {expected}; got shape {list(array.shape)}")
    if target.kind == "O":
        return np.char.encode(array, "utf-8")
    if target.kind in "iu" and array.size and array.dtype != target:
        limits = np.iinfo(target)
        if array.min() < limits.min or array.max() > limits.max:
            raise RequestError(f"{where}: {expected}; got integers out of {target.name}'s range")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(target, copy=False)
    if target.kind == "f" and not np.isfinite(converted).all():
        overflow = ~np.isfinite(converted) & np.isfinite(array)
        if overflow.any():
            raise RequestError(
                f"{where}: {expected}; got {array[overflow].flat[0]!r}, "
                f"out of {target.name}'s range"
            )
    return converted


def _found(array: np.ndarray) -> str:
    """What a client sent instead, in words."""
    kinds = {
        "U": "strings",
        "b": "booleans (true/false)",
        "f": "non-integer numbers",
        "i": "integers",
        "u": "integers",
    }
    if array.dtype.kind in kinds:
        return kinds[array.dtype.kind]
    for item in array.flat:
        if isinstance(item, int) and not isinstance(item, bool):
            return "integers too large for any number type"
        if not isinstance(item, (float, int)):
            return f"a JSON {_json_kind(item)} among the values"
    return f"values of type {array.dtype}"


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def encode_predict(outputs: Mapping[str, np.ndarray], request: PredictRequest) -> dict[str, Any]:
    """The answer TF Serving gives: ``predictions`` for row format, ``outputs`` for columnar.

    One output: its value alone. Several: row format answers a list with one object
    per instance (``{"classes": 7, "predictions": [...]}``), columnar format an
    object of output name to value. Outputs are ordered by name.
    """
    keys = sorted(outputs)
    if not request.row_format:
        if len(keys) == 1:
            return {"outputs": _jsonable(keys[0], outputs[keys[0]])}
        return {"outputs": {k: _jsonable(k, outputs[k]) for k in keys}}
    for key in keys:
        shape = outputs[key].shape
        if not shape or shape[0] != request.rows:
            raise RequestError(
                f"output '{key}' has shape {list(shape)}, not one row per instance: "
                "send the request in columnar format ('inputs')"
            )
    if len(keys) == 1:
        return {"predictions": _jsonable(keys[0], outputs[keys[0]])}
    columns = [_jsonable(k, outputs[k]) for k in keys]
    return {
        "predictions": [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]
    }


def _jsonable(key: str, array: np.ndarray) -> Any:
    """Nested lists; bytes as text, or as ``{"b64": ...}`` for outputs named ``*_bytes``."""
    if array.dtype.kind not in "SO":
        return array.tolist()
    binary = key.endswith("_bytes")

    def text(item: Any) -> Any:
        if not isinstance(item, bytes):
            return item
        if binary:
            return {"b64": base64.b64encode(item).decode("ascii")}
        return item.decode("utf-8", errors="replace")

    return np.vectorize(text, otypes=[object])(array).tolist() if array.size else array.tolist()


# ---------------------------------------------------------------- SavedModels


class ModelLoadError(Exception):
    """A version that cannot be served; ``error_code`` is TF's canonical code name."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


class LoadedModel:
    """One loaded version: its signatures and the functions that run them.

    ``functions`` take and return numpy arrays; ``run`` is only called from the
    batching worker thread. Kept TensorFlow-free so tests can serve a fake model.
    """

    def __init__(
        self,
        version: int,
        path: Path,
        signatures: Mapping[str, SignatureInfo],
        functions: Mapping[str, Callable[..., Mapping[str, np.ndarray]]],
        signature_defs: Mapping[str, Any] | None = None,
        handle: Any = None,
    ) -> None:
        self.version = version
        self.path = path
        self.signatures = dict(signatures)
        self._functions = dict(functions)
        # Every SignatureDef of the MetaGraph, as TF Serving's metadata lists them
        # (including ``__saved_model_init_op``, which cannot be called).
        self.signature_defs = dict(
            signature_defs or {name: info.to_json() for name, info in self.signatures.items()}
        )
        self._handle = handle  # keeps the loaded SavedModel (and its variables) alive

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self._functions[signature](**inputs).items()}

    def __repr__(self) -> str:
        return f"<LoadedModel version {self.version} at {self.path}>"


def load_saved_model(path: Path, version: int) -> LoadedModel:
    """Load one version with TensorFlow (call it off the event loop) and warm it up.

    Raises ModelLoadError with the code TF Serving would report: NOT_FOUND when
    there is no saved_model.pb, DATA_LOSS when the files are corrupt.
    """
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ModelLoadError(
            "FAILED_PRECONDITION",
            f"TensorFlow cannot be imported ({exc}): pip install 'kfnb[tensorflow]'",
        ) from None
    if not (path / "saved_model.pb").is_file() and not (path / "saved_model.pbtxt").is_file():
        raise ModelLoadError(
            "NOT_FOUND",
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}",
        )
    try:
        meta_graph = _read_meta_graph(path)
        handle = tf.saved_model.load(str(path), tags=["serve"])
    except ModelLoadError:
        raise
    except Exception as exc:  # TensorFlow raises many kinds for corrupt files
        raise ModelLoadError(_error_code(exc), _first_line(exc)) from None
    signatures: dict[str, SignatureInfo] = {}
    functions: dict[str, Callable[..., Mapping[str, np.ndarray]]] = {}
    defs = meta_graph.signature_def
    for name in handle.signatures.keys():
        if name in defs:
            signatures[name] = _signature_info(name, defs[name])
            functions[name] = _numpy_function(tf, handle.signatures[name])
    signature_defs = {name: _signature_info(name, defs[name]).to_json() for name in defs}
    model = LoadedModel(version, path, signatures, functions, signature_defs, handle)
    _warm_up(model)
    return model


def _read_meta_graph(path: Path) -> Any:
    """The ``serve`` MetaGraphDef, read directly: its SignatureDefs are what TF Serving shows."""
    from tensorflow.core.protobuf import saved_model_pb2

    text_format: Any = importlib.import_module("google.protobuf.text_format")

    saved = saved_model_pb2.SavedModel()
    binary = path / "saved_model.pb"
    source = binary if binary.is_file() else path / "saved_model.pbtxt"
    try:
        if source is binary:
            saved.ParseFromString(binary.read_bytes())
        else:
            text_format.Parse(source.read_text(), saved)
    except OSError as exc:
        raise ModelLoadError(_error_code(exc), f"cannot read {source}: {exc}") from None
    except Exception as exc:  # protobuf's DecodeError and ParseError
        raise ModelLoadError("DATA_LOSS", f"cannot parse {source}: {_first_line(exc)}") from None
    for meta_graph in saved.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ModelLoadError("NOT_FOUND", f"the SavedModel at {path} has no MetaGraph tagged 'serve'")


def _signature_info(name: str, proto: Any) -> SignatureInfo:
    from tensorflow.core.framework import types_pb2

    def tensor(key: str, info: Any) -> TensorInfo:
        shape = info.tensor_shape
        dims = None if shape.unknown_rank else tuple(int(d.size) for d in shape.dim)
        return TensorInfo(key, types_pb2.DataType.Name(info.dtype), dims, info.name)

    return SignatureInfo(
        name,
        {k: tensor(k, v) for k, v in sorted(proto.inputs.items())},
        {k: tensor(k, v) for k, v in sorted(proto.outputs.items())},
        proto.method_name,
    )


def _numpy_function(tf: Any, concrete: Any) -> Callable[..., Mapping[str, np.ndarray]]:
    def call(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        result = concrete(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    return call


def _warm_up(model: LoadedModel) -> None:
    """Run each signature once on zeros, so the first request does not pay for tracing."""
    for name, info in model.signatures.items():
        shapes = [t.shape for t in info.inputs.values()]
        if not info.batchable or any(s is None or min(s[1:], default=0) < 0 for s in shapes):
            continue
        try:
            model.run(
                name,
                {
                    k: np.zeros((1, *(t.shape or ())[1:]), dtype=t.numpy_dtype or np.float32)
                    for k, t in info.inputs.items()
                },
            )
        except Exception as exc:  # a model may reject zeros; real requests will tell
            log.warning(
                "version %s: warm-up of %s failed: %s", model.version, name, _first_line(exc)
            )


def _error_code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)
    if isinstance(code, int) and code in _ERROR_CODES:
        return _ERROR_CODES[code]
    if isinstance(exc, FileNotFoundError):
        return "NOT_FOUND"
    if isinstance(exc, (OSError, IndexError, EOFError)) or "DecodeError" in type(exc).__name__:
        return "DATA_LOSS"
    return "UNKNOWN"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:500]


# ------------------------------------------------------------------- versions


def scan_versions(base: Path) -> dict[int, Path] | None:
    """Numbered version directories under ``base``; None when ``base`` cannot be read.

    Only all-digit names count: ``.staging-3`` (a model still being written) is not a version.
    """
    try:
        entries = list(os.scandir(base))
    except OSError:
        return None
    versions: dict[int, Path] = {}
    for entry in entries:
        if entry.name.isascii() and entry.name.isdigit() and entry.is_dir():
            versions.setdefault(int(entry.name), Path(entry.path))
    return versions


def check_base_path(base: Path) -> str | None:
    """Why ``base`` cannot be served, with what to do; None when it has a version to load.

    Checked before TensorFlow is imported, so a wrong path fails in a fraction of a second.
    """
    if not base.exists():
        return (
            f"no model at {base}: the directory does not exist; export a SavedModel to "
            f"{base / '1'} (numbered version directories, as TF Serving expects) "
            "or fix --model-base-path"
        )
    if not base.is_dir():
        return f"no model at {base}: it is a file, not the directory of versions"
    if (base / "saved_model.pb").is_file():
        if base.name.isdigit():
            hint = f"pass its parent, --model-base-path {base.parent}"
        else:
            hint = f"move it to {base / '1'}"
        return f"{base} is a SavedModel, not a directory of numbered versions: {hint}"
    versions = scan_versions(base)
    if versions is None:
        return f"no model at {base}: the directory cannot be read (check its permissions)"
    if not versions:
        staging = sorted(p.name for p in base.glob(".staging-*"))
        if staging:
            return (
                f"no model at {base} yet: {base / staging[0]} is still being written by a job; "
                "start the server when the job has finished"
            )
        return (
            f"no model at {base}: it has no numbered version directory ({base / '1'}, ...); "
            "train and export a model there first"
        )
    return None


def fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and times of a version's files: a failed version is retried when it changes."""
    found: list[tuple[str, int, int]] = []
    try:
        for root, _dirs, files in os.walk(path):
            for name in files:
                full = os.path.join(root, name)
                stat = os.stat(full)
                found.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
    except OSError as exc:
        found.append((f"unreadable: {exc}", 0, 0))
    return tuple(sorted(found))


@dataclass(frozen=True)
class VersionStatus:
    """A version's state, in TF Serving's words (ModelVersionStatus)."""

    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str = "OK"
    error_message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": str(self.version),
            "state": self.state,
            "status": {"error_code": self.error_code, "error_message": self.error_message},
        }


class ModelManager:
    """The versions of one model: which are loaded, which failed, which to serve.

    Lives in the event loop; scanning and loading run in one loader thread, so
    requests keep being served by the loaded versions while a new one loads. The
    newest ``max_versions`` loadable versions are kept (TF Serving's
    ``latest {num_versions}`` policy); a version that fails to load is reported in
    its status and retried only when its files change, and never displaces the
    version being served. Switching to a new version is one assignment in the
    event loop, so each request sees either the old or the new version.
    """

    def __init__(
        self,
        name: str,
        base_path: Path,
        max_versions: int = 2,
        loader: Callable[[Path, int], LoadedModel] = load_saved_model,
        on_change: Callable[[VersionStatus, float], None] | None = None,
    ) -> None:
        if max_versions < 1:
            raise ValueError("max_versions must be at least 1")
        self.name = name
        self.base_path = base_path
        self.max_versions = max_versions
        self._loader = loader
        self._on_change = on_change
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kfnb-loader")
        self._loaded: dict[int, LoadedModel] = {}
        self._newest: LoadedModel | None = None
        self._status: dict[int, VersionStatus] = {}
        self._failed: dict[int, tuple[tuple[str, int, int], ...]] = {}
        self._lock = asyncio.Lock()
        self._missing_base_logged = False

    # -- what requests see (event loop only)

    @property
    def newest(self) -> LoadedModel | None:
        """The version that requests without a version go to."""
        return self._newest

    def get(self, version: int) -> LoadedModel | None:
        return self._loaded.get(version)

    @property
    def loaded_versions(self) -> list[int]:
        return sorted(self._loaded, reverse=True)

    def statuses(self) -> list[VersionStatus]:
        """Every version seen, newest first (TF Serving lists unloaded and failed ones too)."""
        return [self._status[v] for v in sorted(self._status, reverse=True)]

    def status(self, version: int) -> VersionStatus | None:
        return self._status.get(version)

    # -- loading

    def preload(self) -> None:
        """Start importing TensorFlow in the loader thread, while the server starts."""
        self._executor.submit(_import_tensorflow)

    async def refresh(self) -> None:
        """Scan the base path once; load new versions, unload old or removed ones."""
        async with self._lock:
            await self._refresh()

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        failed = dict(self._failed)
        scan = await loop.run_in_executor(self._executor, _scan, self.base_path, failed)
        if scan is None:
            if not self._missing_base_logged:
                log.warning(
                    "%s: cannot read %s; still serving what is loaded", self.name, self.base_path
                )
                self._missing_base_logged = True
            return
        self._missing_base_logged = False
        on_disk, prints = scan
        for version, old in failed.items():
            if prints.get(version) != old:  # changed or removed: worth another try
                self._failed.pop(version, None)
        while True:
            candidates = sorted(
                {v for v in on_disk if v not in self._failed} | set(self._loaded), reverse=True
            )[: self.max_versions]
            missing = [v for v in candidates if v not in self._loaded]
            if not missing:
                break
            await self._load(missing[0], on_disk[missing[0]])
        self._unload(on_disk)

    async def _load(self, version: int, path: Path) -> None:
        loop = asyncio.get_running_loop()
        self._set(VersionStatus(version, "LOADING"), 0.0)
        before = await loop.run_in_executor(self._executor, fingerprint, path)
        started = time.perf_counter()
        try:
            model = await loop.run_in_executor(self._executor, self._loader, path, version)
        except ModelLoadError as exc:
            self._failed[version] = before
            self._set(
                VersionStatus(version, "END", exc.error_code, exc.message),
                time.perf_counter() - started,
            )
            return
        except Exception as exc:  # a loader bug must not stop the watcher
            self._failed[version] = before
            self._set(
                VersionStatus(version, "END", "UNKNOWN", _first_line(exc)),
                time.perf_counter() - started,
            )
            return
        loaded = dict(self._loaded)
        loaded[version] = model
        self._publish(loaded)
        self._set(VersionStatus(version, "AVAILABLE"), time.perf_counter() - started)

    def _unload(self, on_disk: Mapping[int, Path]) -> None:
        keep = sorted(self._loaded, reverse=True)
        present = [v for v in keep if v in on_disk]
        # A version removed from disk is unloaded, unless it is all that is left to serve.
        keep = (present or keep[:1])[: self.max_versions]
        dropped = [v for v in self._loaded if v not in keep]
        if not dropped:
            return
        self._publish({v: m for v, m in self._loaded.items() if v in keep})
        for version in dropped:
            self._set(VersionStatus(version, "END"), 0.0)

    def _publish(self, loaded: dict[int, LoadedModel]) -> None:
        self._loaded = loaded
        self._newest = loaded[max(loaded)] if loaded else None

    def _set(self, status: VersionStatus, seconds: float) -> None:
        self._status[status.version] = status
        if self._on_change is not None:
            self._on_change(status, seconds)

    async def watch(self, interval: float) -> None:
        """Poll the base path forever (cancel to stop); a failing scan is logged, never fatal."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:  # keep watching whatever happens
                log.exception("%s: scanning %s failed", self.name, self.base_path)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _import_tensorflow() -> None:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass  # reported when a version is loaded


def _scan(
    base: Path, failed: Mapping[int, Any]
) -> tuple[dict[int, Path], dict[int, tuple[tuple[str, int, int], ...]]] | None:
    versions = scan_versions(base)
    if versions is None or not base.is_dir():
        return None
    prints = {v: fingerprint(versions[v]) for v in failed if v in versions}
    return versions, prints


# ------------------------------------------------------------------- batching


@dataclass
class _Job:
    model: LoadedModel
    signature: str
    inputs: dict[str, np.ndarray]
    rows: int | None
    future: asyncio.Future[dict[str, np.ndarray]]
    loop: asyncio.AbstractEventLoop


BatchListener = Callable[[LoadedModel, int, int, float], None]


class Batcher:
    """Runs every model call in one background thread, merging what queued meanwhile.

    Requests queue; the worker takes everything that queued while the previous
    call ran (up to ``max_batch_rows`` rows), makes one signature call on the
    concatenation and splits the results back. At one client this is batch size
    1 with no added wait; under load batches grow with the load. Waiting a fixed
    time to fill a batch was measured to cost latency at low load and gain nothing.
    A merged call that fails is retried request by request, so one bad request
    cannot fail its neighbours. ``on_batch(model, requests, rows, seconds)`` is
    called from the worker thread after each signature call.
    """

    def __init__(self, max_batch_rows: int = 256, on_batch: BatchListener | None = None) -> None:
        if max_batch_rows < 1:
            raise ValueError("max_batch_rows must be at least 1")
        self.max_batch_rows = max_batch_rows
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="kfnb-batcher", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    @property
    def pending(self) -> int:
        """Requests queued and not yet taken by the worker (approximate)."""
        return self._queue.qsize()

    async def run(
        self, model: LoadedModel, signature: str, inputs: dict[str, np.ndarray], rows: int | None
    ) -> dict[str, np.ndarray]:
        """The signature's outputs for these inputs, computed in the worker thread."""
        self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        self._queue.put(_Job(model, signature, inputs, rows, future, loop))
        return await future

    def close(self, timeout: float = 5.0) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout)

    # -- the worker thread

    def _work(self) -> None:
        held: _Job | None = None
        while True:
            job = held if held is not None else self._queue.get()
            held = None
            if job is None:
                return
            jobs, rows, stop = [job], job.rows or 1, False
            while rows < self.max_batch_rows:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    stop = True
                    break
                if rows + (following.rows or 1) > self.max_batch_rows:
                    held = following
                    break
                jobs.append(following)
                rows += following.rows or 1
            self._process(jobs)
            if stop:
                return

    def _process(self, jobs: Sequence[_Job]) -> None:
        groups: dict[Any, list[_Job]] = {}
        for job in jobs:
            batchable = job.rows is not None and job.model.signatures[job.signature].batchable
            key = (id(job.model), job.signature) if batchable else id(job)
            groups.setdefault(key, []).append(job)
        done: list[tuple[_Job, dict[str, np.ndarray] | BaseException]] = []
        for group in groups.values():
            done.extend(self._run_group(group))
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for job, outcome in done:
            by_loop.setdefault(job.loop, []).append((job.future, outcome))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, results)
            except RuntimeError:  # the loop has closed: nobody is waiting any more
                pass

    def _run_group(
        self, jobs: list[_Job]
    ) -> list[tuple[_Job, dict[str, np.ndarray] | BaseException]]:
        if len(jobs) == 1:
            return [(jobs[0], self._call(jobs[0].model, jobs[0].signature, jobs[0].inputs, 1))]
        first = jobs[0]
        merged = {k: np.concatenate([j.inputs[k] for j in jobs]) for k in first.inputs}
        total = sum(j.rows or 0 for j in jobs)
        outcome = self._call(first.model, first.signature, merged, len(jobs))
        if isinstance(outcome, dict) and all(
            v.ndim and v.shape[0] == total for v in outcome.values()
        ):
            results: list[tuple[_Job, dict[str, np.ndarray] | BaseException]] = []
            start = 0
            for job in jobs:
                end = start + (job.rows or 0)
                results.append((job, {k: v[start:end] for k, v in outcome.items()}))
                start = end
            return results
        # The merged call failed (or did not keep rows apart): each request on its own.
        return [(j, self._call(j.model, j.signature, j.inputs, 1)) for j in jobs]

    def _call(
        self, model: LoadedModel, signature: str, inputs: dict[str, np.ndarray], requests: int
    ) -> dict[str, np.ndarray] | BaseException:
        started = time.perf_counter()
        try:
            outcome: dict[str, np.ndarray] | BaseException = model.run(signature, inputs)
        except Exception as exc:
            outcome = _prediction_error(exc)
        if self._on_batch is not None:
            rows = max((len(v) if v.ndim else 1 for v in inputs.values()), default=0)
            try:
                self._on_batch(model, requests, rows, time.perf_counter() - started)
            except Exception:  # metrics must never break serving
                log.exception("batch listener failed")
        return outcome


def _prediction_error(exc: Exception) -> BaseException:
    """TensorFlow's INVALID_ARGUMENT is the request's fault (400); anything else is ours."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "InvalidArgumentError" in names:
        return RequestError(_first_line(exc), 400)
    return exc


def _deliver(results: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in results:
        if future.done():  # the client went away
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
