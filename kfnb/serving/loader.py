"""SavedModel loading: one version directory in, a ``LoadedModel`` out.

TensorFlow is imported inside ``load_saved_model`` (called in the loader thread,
off the event loop), never at module level, so importing this module is cheap.
``LoadedModel`` itself is TensorFlow-free, so tests can serve a fake model. Kept
apart from the version manager, which decides what to load and when.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kfnb._util import first_line
from kfnb.serving.codec import SignatureInfo, TensorInfo

if TYPE_CHECKING:
    from kfnb.serving.batch import Batch, Request

__all__ = ["LoadedModel", "ModelLoadError", "load_saved_model"]

log = logging.getLogger("kfnb.serving")

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


class ModelLoadError(Exception):
    """A version that cannot be served; ``error_code`` is TF's canonical code name."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


class LoadedModel:
    """One loaded version: its signatures and the functions that run them.

    ``functions`` take and return numpy arrays; ``run`` is called by
    ``batch.run_batch``, in the batcher's worker thread or, for a lone request,
    in the event loop's thread. A version loaded in the model process
    (``model_host``) has ``remote`` instead: a coroutine function that runs a
    batch there (``remote(requests, max_rows, awake) -> batch.Batch``), which the
    batcher awaits in the event loop. Kept TensorFlow-free so tests can serve a
    fake model.
    """

    def __init__(
        self,
        version: int,
        path: Path,
        signatures: Mapping[str, SignatureInfo],
        functions: Mapping[str, Callable[..., Mapping[str, np.ndarray]]],
        signature_defs: Mapping[str, Any] | None = None,
        handle: Any = None,
        signature_protos: Any = None,
        remote: Callable[[list[Request], int, bool], Awaitable[Batch]] | None = None,
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
        # The MetaGraph's SignatureDef protos (their bytes, from the model process), for
        # gRPC's GetModelMetadata (None in fakes).
        self.signature_protos = signature_protos
        self.remote = remote
        # Seconds of the last call made for a single request, per signature (the
        # batcher's, to decide whether a lone request may skip the worker thread).
        self.single_call_seconds: dict[str, float] = {}

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
        ) from exc
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
        raise ModelLoadError(_error_code(exc), first_line(exc)) from exc
    signatures: dict[str, SignatureInfo] = {}
    functions: dict[str, Callable[..., Mapping[str, np.ndarray]]] = {}
    defs = meta_graph.signature_def
    for name in handle.signatures.keys():
        if name in defs:
            signatures[name] = _signature_info(name, defs[name])
            functions[name] = _numpy_function(tf, handle.signatures[name], signatures[name])
    signature_defs = {name: _signature_info(name, defs[name]).to_json() for name in defs}
    model = LoadedModel(version, path, signatures, functions, signature_defs, handle, defs)
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
        raise ModelLoadError(_error_code(exc), f"cannot read {source}: {exc}") from exc
    except Exception as exc:  # protobuf's DecodeError and ParseError
        raise ModelLoadError("DATA_LOSS", f"cannot parse {source}: {first_line(exc)}") from exc
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


def _numpy_function(
    tf: Any, concrete: Any, info: SignatureInfo
) -> Callable[..., Mapping[str, np.ndarray]]:
    """The signature as a function of numpy arrays, by its quickest call that gives
    the same answers.

    The public call binds and checks its arguments in Python every time, a large
    part of a batch-1 call of a small model, all of it holding the GIL the event
    loop needs. Requests are already checked against the
    signature (codec.py), so where this TensorFlow has the flat call of its
    ``ConcreteFunction`` (inputs in sorted key order, as the public call flattens
    them) it is used, once it has answered random inputs as the public call does.
    """

    def public(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        result = concrete(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    call_flat = getattr(concrete, "_call_flat", None)
    captured = getattr(concrete, "captured_inputs", None)
    keys = sorted(info.inputs)
    if call_flat is None or captured is None:
        return public

    def flat(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        result = call_flat([tf.constant(inputs[k]) for k in keys], captured)
        return {k: v.numpy() for k, v in result.items()}

    return flat if _same_answers(public, flat, info) else public


def _same_answers(
    public: Callable[..., dict[str, np.ndarray]],
    flat: Callable[..., dict[str, np.ndarray]],
    info: SignatureInfo,
) -> bool:
    """Whether ``flat`` answers random inputs (two rows) as ``public`` does."""
    rng = np.random.default_rng(0)
    sample: dict[str, np.ndarray] = {}
    for key, tensor in info.inputs.items():
        dtype, shape = tensor.numpy_dtype, tensor.shape
        if dtype is None or dtype.kind not in "fiub" or shape is None:
            return False  # no inputs to compare on: keep the public call
        if min(shape[1:], default=1) < 0:
            return False
        dims = (2, *shape[1:]) if shape and shape[0] < 0 else shape
        sample[key] = (rng.random(dims) * 10).astype(dtype)
    try:
        expected, got = public(**sample), flat(**sample)
    except Exception:
        return False
    return expected.keys() == got.keys() and all(_close(expected[k], got[k]) for k in expected)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal, up to the rounding of TensorFlow's parallel kernels for numbers."""
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))
    return bool(np.array_equal(a, b))


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
                "version %s: warm-up of %s failed: %s", model.version, name, first_line(exc)
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
