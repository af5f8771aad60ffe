"""The JSON <-> tensor codec: signatures, request checking, answers in TF Serving's JSON.

Pure numpy: no TensorFlow, no HTTP server, no model. A request is checked against its
signature's dtypes and shapes here (in the event loop or in the model process, see
``batcher``), so a bad one is refused with a 400 without touching TensorFlow. Kept apart from the
loader and the batcher so clients and tests can check and build requests alone.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

__all__ = [
    "DEFAULT_SIGNATURE",
    "PredictRequest",
    "RequestError",
    "SignatureInfo",
    "TensorInfo",
    "decode_body",
    "decode_predict",
    "decode_tensors",
    "encode_predict",
    "parse_json",
]

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

    @functools.cached_property
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
    """The body as JSON (NaN and Infinity allowed, as TF Serving allows them).

    orjson parses an image many times quicker than ``json``, whose parsing would be
    most of a request's cost. It refuses NaN, Infinity and integers beyond 64 bits, which
    TF Serving accepts, so those bodies (and broken ones, for the error message)
    go through ``json``.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except RecursionError as err:
        raise RequestError("JSON Parse error: the document is nested too deeply") from err
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise RequestError(f"JSON Parse error: {exc}") from exc


def decode_body(body: bytes, signatures: Mapping[str, SignatureInfo]) -> PredictRequest:
    """A ``:predict`` request's JSON body, parsed and checked (see ``decode_predict``)."""
    return decode_predict(parse_json(body), signatures)


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


def decode_tensors(
    inputs: Mapping[str, np.ndarray], signature: SignatureInfo, dtypes: Mapping[str, str]
) -> PredictRequest:
    """Check a gRPC ``PredictRequest``'s tensors (already numpy) against the signature.

    ``dtypes`` are the tensors' own DataType names: typed tensors must match the
    signature exactly, as TF Serving requires, instead of being converted.
    """
    _check_names(inputs, signature, "request inputs")
    for key, array in inputs.items():
        info = signature.inputs[key]
        if dtypes[key] != info.dtype:
            raise RequestError(
                f"input '{key}' is {dtypes[key]} but signature '{signature.name}' expects "
                f"{info.dtype} {info.shape_text}"
            )
        if info.shape is not None and not _fits(array.shape, info.shape):
            raise RequestError(
                f"input '{key}': expected {info.dtype} {info.shape_text}; "
                f"got shape {list(array.shape)}"
            )
    firsts = {a.shape[0] if a.ndim else None for a in inputs.values()}
    rows = firsts.pop() if len(firsts) == 1 else None
    return PredictRequest(signature.name, dict(inputs), rows, row_format=False)


def _fits(shape: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    return len(shape) == len(wanted) and all(
        want < 0 or want == got for want, got in zip(wanted, shape, strict=True)
    )


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


_ACCEPTED_KINDS = {"f": "fiu", "c": "fiu", "i": "iu", "u": "iu", "b": "b", "O": "U"}


def _expected(info: TensorInfo, target: np.dtype[Any]) -> str:
    words = {"O": "strings", "b": "booleans"}.get(target.kind, f"{target.name} numbers")
    return f"expected {info.dtype} ({words}) {info.shape_text}"


def _to_array(value: Any, info: TensorInfo, where: str) -> np.ndarray:
    """``value`` as an array of the input's dtype, or a RequestError saying what was expected.

    Runs for every request: the words of an error are only put together on failure.
    """
    target = info.numpy_dtype
    if target is None:
        raise RequestError(f"{where}: this server cannot take {info.dtype} values as JSON")

    def refuse(found: str) -> RequestError:
        return RequestError(f"{where}: {_expected(info, target)}; got {found}")

    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        if "maximum number of dimension" in str(exc) or isinstance(exc, RecursionError):
            raise refuse("lists nested too deeply") from exc
        raise refuse("nested lists of uneven length") from exc
    kind = array.dtype.kind
    if target.kind in "iu" and kind == "f" and _whole(array):
        # orjson reads integers beyond 64 bits as floats: name them as integers.
        raise refuse(f"integers out of {target.name}'s range")
    if kind not in _ACCEPTED_KINDS[target.kind] or array.dtype.hasobject:
        raise refuse(_found(array))
    if info.shape is not None and not _fits(array.shape, info.shape):
        raise refuse(f"shape {list(array.shape)}")
    if target.kind == "O":
        return np.char.encode(array, "utf-8")
    if target.kind in "iu" and array.size and array.dtype != target:
        limits = np.iinfo(target)
        if array.min() < limits.min or array.max() > limits.max:
            raise refuse(f"integers out of {target.name}'s range")
    if array.dtype == target:
        return array
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(target)
    if target.kind == "f" and not np.isfinite(converted).all():
        overflow = ~np.isfinite(converted) & np.isfinite(array)
        if overflow.any():
            raise refuse(f"{array[overflow].flat[0].item()!r}, out of {target.name}'s range")
    return converted


def _whole(array: np.ndarray) -> bool:
    """Whether every value is a whole number too large for int64 (so JSON had an integer)."""
    finite = array[np.isfinite(array)]
    return (
        bool(finite.size)
        and bool((np.abs(finite) >= 2**63).any())
        and bool((finite == np.floor(finite)).all())
    )


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
