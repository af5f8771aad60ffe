"""TF Serving's gRPC ``PredictionService`` (Predict, GetModelMetadata) beside the REST API.

Seed 001's ``mnist_client.py`` and every other TF Serving gRPC client speak the
protos of the ``tensorflow-serving-api`` package; this answers them from the same
``ModelServer``: the same versions, the same request checks and the same batching
worker, so a gRPC request and a REST request can share one signature call.

The protos import TensorFlow, so this module is imported only once the first
version is loaded (TensorFlow is then already in the process) and never by the
rest of kfnb.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import grpc
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from kfnb.serving.codec import DEFAULT_SIGNATURE, RequestError, decode_tensors

if TYPE_CHECKING:
    from kfnb.serving.server import ModelServer

__all__ = ["PredictionService", "start_grpc"]

# The REST status a RequestError carries -> the gRPC code TF Serving answers with.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    """Predict and GetModelMetadata; Classify, Regress and MultiInference say UNIMPLEMENTED."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    async def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802 (the proto's name)
        deadline = context.time_remaining()  # the client's own deadline; None without one

        async def predict(request: Any) -> Any:
            return await self._predict(request, deadline)

        return await self._answer("grpc_predict", request, context, predict)

    async def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return await self._answer("grpc_metadata", request, context, self._metadata)

    async def _predict(self, request: Any, deadline: float | None = None) -> Any:
        model = self.server.servable(request.model_spec.name, _version(request.model_spec))
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        signature = model.signatures.get(name)
        if signature is None:
            raise RequestError(f'Serving signature name: "{name}" not found in signature def')
        budget = self.server.config.max_body_bytes
        for key, proto in request.inputs.items():
            budget -= check_tensor_proto(key, proto, budget, self.server.config.max_body_bytes)
        try:
            inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        except Exception as exc:  # a TensorProto whose content does not match its shape
            raise RequestError(f"cannot read the request's tensors: {exc}") from exc
        dtypes = {key: types_pb2.DataType.Name(p.dtype) for key, p in request.inputs.items()}
        checked = decode_tensors(inputs, signature, dtypes)
        _, outputs = await self.server.call_model(model, checked, seconds=deadline)
        wanted = list(request.output_filter) or sorted(outputs)
        unknown = [key for key in wanted if key not in outputs]
        if unknown:
            raise RequestError(f"output_filter names {unknown[0]!r}, which is not an output")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.server.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = name
        for key in wanted:
            response.outputs[key].CopyFrom(_tensor_proto(outputs[key]))
        return response

    async def _metadata(self, request: Any) -> Any:
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise RequestError("metadata_field must be exactly ['signature_def'], as in TF Serving")
        model = self.server.servable(request.model_spec.name, _version(request.model_spec))
        if model.signature_protos is None:
            raise RequestError("this model has no SignatureDef protos to describe", 501)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, proto in model.signature_protos.items():
            if isinstance(proto, bytes):  # as the model process sends them
                signature_map.signature_def[key].ParseFromString(proto)
            else:
                signature_map.signature_def[key].CopyFrom(proto)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.server.name
        response.model_spec.version.value = model.version
        response.metadata["signature_def"].Pack(signature_map)
        return response

    async def _answer(self, api: str, request: Any, context: Any, handle: Any) -> Any:
        """Run ``handle``; a RequestError becomes TF Serving's status code and message."""
        started = time.perf_counter()
        status = 200
        try:
            return await handle(request)
        except RequestError as exc:
            status = exc.status
            await context.abort(_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            status = 500
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            model = request.model_spec.name
            label = model if model == self.server.name else "other"
            self.server.metrics.observe_request(label, api, status, time.perf_counter() - started)


# DataType -> the TensorProto field its values come in, and how many values an element takes.
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: ("float_val", 1),
    types_pb2.DT_DOUBLE: ("double_val", 1),
    types_pb2.DT_INT32: ("int_val", 1),
    types_pb2.DT_INT16: ("int_val", 1),
    types_pb2.DT_INT8: ("int_val", 1),
    types_pb2.DT_UINT8: ("int_val", 1),
    types_pb2.DT_UINT16: ("int_val", 1),
    types_pb2.DT_INT64: ("int64_val", 1),
    types_pb2.DT_UINT32: ("uint32_val", 1),
    types_pb2.DT_UINT64: ("uint64_val", 1),
    types_pb2.DT_BOOL: ("bool_val", 1),
    types_pb2.DT_STRING: ("string_val", 1),
    types_pb2.DT_HALF: ("half_val", 1),
    types_pb2.DT_BFLOAT16: ("half_val", 1),
    types_pb2.DT_COMPLEX64: ("scomplex_val", 2),
    types_pb2.DT_COMPLEX128: ("dcomplex_val", 2),
}


def check_tensor_proto(key: str, proto: Any, budget: int, limit: int) -> int:
    """The bytes input ``key`` takes as an array, checked before the array is built.

    ``tf.make_ndarray`` repeats a tensor's last value to fill its ``tensor_shape``,
    so a 40-byte request could ask for an array of any size, and the model to run on
    it. Its shape must fit in ``budget`` bytes (what is left of the body limit,
    ``limit``, after the inputs before it: 413 otherwise), and it must carry exactly
    one value per element (400 otherwise).
    """
    shape = proto.tensor_shape
    dims = [d.size for d in shape.dim]
    if shape.unknown_rank or any(d < 0 for d in dims):
        raise RequestError(f"input '{key}': a request's tensor_shape must be fully known")
    name = (
        types_pb2.DataType.Name(proto.dtype)
        if proto.dtype in types_pb2.DataType.values()
        else str(proto.dtype)
    )
    field = _VALUE_FIELDS.get(proto.dtype)
    if field is None:
        raise RequestError(f"input '{key}': this server cannot take {name} tensors")
    elements = int(math.prod(dims))
    size = 1 if proto.dtype == types_pb2.DT_STRING else int(tf.as_dtype(proto.dtype).size)
    nbytes = elements * size
    if nbytes > budget:
        raise RequestError(
            f"input '{key}' of shape {dims} ({name}) takes {nbytes} bytes, over this "
            f"server's limit of {limit} bytes for a request: send fewer instances per "
            "request, or start the server with a larger --max-body-bytes",
            413,
        )
    if proto.tensor_content and proto.dtype != types_pb2.DT_STRING:
        carried = len(proto.tensor_content)
        if carried != nbytes:
            raise RequestError(
                f"input '{key}' of shape {dims} ({name}) needs {nbytes} bytes of "
                f"tensor_content, but carries {carried}"
            )
        return nbytes
    values = len(getattr(proto, field[0]))
    if values != elements * field[1]:
        raise RequestError(
            f"input '{key}' of shape {dims} ({name}) needs {elements * field[1]} values in "
            f"{field[0]}, but carries {values}: send one value per element"
        )
    return nbytes


# dtype -> the TensorProto field TF Serving fills (it answers with typed repeated
# fields, not tensor_content, so clients reading ``float_val``/``int_val`` work).
_FIELDS = {
    "float32": "float_val",
    "float64": "double_val",
    "int32": "int_val",
    "int16": "int_val",
    "int8": "int_val",
    "uint8": "int_val",
    "uint16": "int_val",
    "int64": "int64_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
    "bool": "bool_val",
    "object": "string_val",
    "bytes": "string_val",
}


def _tensor_proto(array: Any) -> Any:
    field = _FIELDS.get("bytes" if array.dtype.kind == "S" else array.dtype.name)
    if field is None:  # float16, complex...: TensorFlow's own packing
        return tf.make_tensor_proto(array)
    proto = tf.make_tensor_proto([], dtype=tf.as_dtype(array.dtype), shape=array.shape)
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


def _version(spec: Any) -> int | None:
    return int(spec.version.value) if spec.HasField("version") else None


async def start_grpc(server: ModelServer, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """A started gRPC server on ``host:port`` (0 picks a free port) and the port it took."""
    grpc_server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", server.config.max_body_bytes),
            ("grpc.so_reuseport", 0),  # a port in use must fail, not be shared
        ]
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(server), grpc_server
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = grpc_server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise OSError(f"cannot listen for gRPC on {address} (port in use?)")
    await grpc_server.start()
    return grpc_server, bound
