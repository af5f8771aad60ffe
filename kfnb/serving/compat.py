"""Which TF Serving release can load what a job's TensorFlow exported, and why.

TensorFlow promises that a newer TensorFlow loads SavedModels of older ones, not the
reverse: a graph may use ops or attributes its exporter's TensorFlow added
(``DisableCopyOnRead``, the ``debug_name`` attribute of ``VarHandleOp``), and an older
server then fails with "Op type not registered". KServe's ``kserve-tensorflow-serving``
runtime defaults to ``tensorflow/serving:2.6.2``, which predates both, so kfnb always
names the release. The rule, one for KServe and the TF Serving Deployment: the TF
Serving release of the job's TensorFlow (major.minor), else the newest release that
is not newer, else the oldest known one (newer TensorFlow loads older exports). When
the job's TensorFlow is newer than every release (2.21: tensorflow-serving-api 2.21.0
is on PyPI, but the newest ``tensorflow/serving`` image is 2.20.0), the newest release
is chosen and the SavedModel's ops and attributes are checked against that release's
op registry (`check_ops`), recorded from the TensorFlow wheel of the same version.

Nothing here imports TensorFlow except `registered_ops`; graphs are read with
tensorboard's copies of TensorFlow's protos.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "TF_SERVING_RELEASES",
    "ServingRelease",
    "check_ops",
    "graph_ops",
    "image_tf_version",
    "kernel_tf_version",
    "load_registry",
    "registered_ops",
    "serving_release",
]

# Tags of the tensorflow/serving image (CPU; each has a "-gpu" twin tag), oldest first.
# 2.20.0 is the newest (there is no 2.21 image, per the survey in issue 18); the list
# is kept short on purpose: every entry is a tag kfnb may put in a manifest.
TF_SERVING_RELEASES = ("2.18.0", "2.19.0", "2.20.0")
REGISTRY_DIR = Path(__file__).with_name("op_registry")
_VERSION = re.compile(r"^(\d+)\.(\d+)")
_TF_IMAGE = re.compile(r"^(?:docker\.io/)?tensorflow/tensorflow:(\d+\.\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class ServingRelease:
    """The TF Serving release chosen for a model, and the reason in words."""

    tag: str  # e.g. "2.20.0": KServe's runtimeVersion, the image tag
    tf_version: str  # the job's TensorFlow, "" when unknown
    why: str
    forward: bool = False  # the release is older than the exporter: ops must be checked

    def image(self, gpus: int = 0) -> str:
        return f"tensorflow/serving:{self.runtime_version(gpus)}"

    def runtime_version(self, gpus: int = 0) -> str:
        """KServe's TensorFlow runtime takes the image tag as runtimeVersion (``-gpu`` for GPUs)."""
        return self.tag + ("-gpu" if gpus else "")


def _minor(version: str) -> tuple[int, int]:
    match = _VERSION.match(version)
    if match is None:
        raise ValueError(f"not a TensorFlow version: {version!r}")
    return int(match[1]), int(match[2])


def image_tf_version(image: str) -> str | None:
    """The TensorFlow version in an official ``tensorflow/tensorflow:X.Y.Z`` image tag."""
    match = _TF_IMAGE.match(image)
    return match[1] if match else None


def kernel_tf_version() -> str | None:
    """This kernel's TensorFlow, without importing it (kfnb's default image matches it)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def serving_release(tf_version: str | None, exporter: str = "the job") -> ServingRelease:
    """The TF Serving release that loads what TensorFlow ``tf_version`` exported.

    ``exporter`` says where the version comes from, for the reason's words."""
    newest = TF_SERVING_RELEASES[-1]
    if not tf_version:
        why = f"{exporter}'s TensorFlow is unknown; {newest} is the newest TF Serving image"
        return ServingRelease(newest, "", why)
    wanted = _minor(tf_version)
    said = f"{exporter} exports with TensorFlow {tf_version}"
    same = [tag for tag in TF_SERVING_RELEASES if _minor(tag) == wanted]
    if same:
        return ServingRelease(same[-1], tf_version, f"{said}, the same release")
    older = [tag for tag in TF_SERVING_RELEASES if _minor(tag) < wanted]
    if older:
        why = (
            f"{said}, newer than every tensorflow/serving image ({older[-1]} is the newest); "
            f"{older[-1]} loads the model if its graph uses no op or attribute newer than it"
        )
        return ServingRelease(older[-1], tf_version, why, forward=True)
    oldest = TF_SERVING_RELEASES[0]
    return ServingRelease(oldest, tf_version, f"{said}; newer TensorFlow loads older exports")


# -- the op-registry check ---------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _meta_graphs(saved_model: bytes) -> list[bytes]:
    """The MetaGraphDefs of a SavedModel proto (field 2), read from the wire format so that
    no TensorFlow import is needed (tensorboard has MetaGraphDef, not SavedModel)."""
    graphs, pos = [], 0
    while pos < len(saved_model):
        key, pos = _varint(saved_model, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(saved_model, pos)
        elif wire == 2:
            size, pos = _varint(saved_model, pos)
            if field == 2:
                graphs.append(saved_model[pos : pos + size])
            pos += size
        else:
            raise ValueError(f"not a SavedModel proto (wire type {wire})")
    return graphs


def graph_ops(saved_model: bytes) -> dict[str, set[str]]:
    """Each op in a ``saved_model.pb``'s graphs and function library, with the attributes
    its nodes set (internal ``_`` attributes left out: TensorFlow does not check them)."""
    from tensorboard.compat.proto.meta_graph_pb2 import (  # type: ignore[import-untyped]
        MetaGraphDef,
    )

    ops: dict[str, set[str]] = {}
    for data in _meta_graphs(saved_model):
        graph = MetaGraphDef.FromString(data).graph_def
        nodes = [*graph.node]
        for function in graph.library.function:
            nodes.extend(function.node_def)
        defined = {function.signature.name for function in graph.library.function}
        for node in nodes:
            if node.op in defined:  # a call of a function the graph itself defines
                continue
            attrs = ops.setdefault(node.op, set())
            attrs.update(name for name in node.attr if not name.startswith("_"))
    return ops


def registered_ops() -> dict[str, set[str]]:
    """The running TensorFlow's op registry: op name -> its attribute names."""
    from tensorboard.compat.proto.op_def_pb2 import OpList  # type: ignore[import-untyped]
    from tensorflow.python.client import pywrap_tf_session as c_api

    buffer = c_api.TF_GetAllOpList()
    try:
        op_list = OpList.FromString(c_api.TF_GetBuffer(buffer))
    finally:
        c_api.TF_DeleteBuffer(buffer)
    return {op.name: {attr.name for attr in op.attr} for op in op_list.op}


def load_registry(tag: str) -> dict[str, set[str]] | None:
    """A TF Serving release's op registry, as kfnb ships it (None when it ships none)."""
    path = REGISTRY_DIR / f"tensorflow-{'.'.join(tag.split('.')[:2])}.json.gz"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(gzip.decompress(path.read_bytes()))
    return {op: set(attrs) for op, attrs in data["ops"].items()}


def check_ops(model: dict[str, set[str]], registry: dict[str, set[str]]) -> list[str]:
    """What the model's graph uses that the registry lacks, in words ([] when it loads)."""
    problems = []
    for op in sorted(model):
        if op not in registry:
            problems.append(f"op {op}")
            continue
        problems.extend(f"attribute {attr} of {op}" for attr in sorted(model[op] - registry[op]))
    return problems


def write_registry(directory: Path = REGISTRY_DIR) -> Path:
    """Record the running TensorFlow's op registry where `load_registry` finds it.

    Run in the TF Serving twin (a virtual environment with the TensorFlow wheel of the
    version a ``tensorflow/serving`` image embeds): ``.venv-tfserving-twin/bin/python
    kfnb/serving/compat.py``. The file is gzipped JSON, sorted, so it diffs stably.
    """
    import tensorflow as tf

    ops = {op: sorted(attrs) for op, attrs in sorted(registered_ops().items())}
    version = ".".join(tf.__version__.split(".")[:2])
    record = {"tensorflow": tf.__version__, "ops": ops}
    path = directory / f"tensorflow-{version}.json.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(json.dumps(record, indent=0).encode(), mtime=0))
    return path


if __name__ == "__main__":
    print(write_registry())
