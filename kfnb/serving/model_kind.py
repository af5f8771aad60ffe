"""Which kind of model a version directory holds: a TensorFlow SavedModel or a scikit-learn
forest saved with joblib (``model/mnist_sklearn.py``).

One test for every place that must tell them apart (the cluster manifests now, the local
server's runners later): ``saved_model.pb`` is TensorFlow, ``model.joblib`` scikit-learn,
in the version directory itself (``model/<N>/``), on this machine or in a store.
Standard library only; the store is opened on first use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kfnb._util import newest_version

__all__ = [
    "MODEL_FILES",
    "ModelKind",
    "StoredModel",
    "UnknownModel",
    "kind_of_files",
    "model_kind",
    "newest_stored_model",
]

ModelKind = Literal["tensorflow", "sklearn"]
MODEL_FILES: dict[str, ModelKind] = {"saved_model.pb": "tensorflow", "model.joblib": "sklearn"}


class UnknownModel(ValueError):
    """A directory that holds no model kfnb knows, or two; the message is one line."""


def kind_of_files(names: Iterable[str], where: str) -> ModelKind:
    """The kind of the version directory ``where`` whose files are ``names``."""
    kinds = sorted({MODEL_FILES[name] for name in names if name in MODEL_FILES})
    if len(kinds) == 1:
        return kinds[0]
    if kinds:
        return _raise(f"{where} holds both saved_model.pb and model.joblib: keep one model "
                      "per version directory")  # fmt: skip
    return _raise(
        f"{where} holds no model: a version directory needs saved_model.pb (a TensorFlow "
        "SavedModel) or model.joblib (scikit-learn, model/mnist_sklearn.py's save)"
    )


def _raise(message: str) -> ModelKind:
    raise UnknownModel(message)


def model_kind(version_dir: str | Path) -> ModelKind:
    """``"tensorflow"`` or ``"sklearn"``: what the version directory on this machine holds."""
    path = Path(version_dir)
    try:
        names = os.listdir(path)
    except OSError as exc:
        raise UnknownModel(f"cannot read {path}: {exc.strerror or exc}") from exc
    return kind_of_files(names, str(path))


@dataclass(frozen=True)
class StoredModel:
    """The model a store URL names: its kind, and the URL of the version directory."""

    kind: ModelKind
    version_uri: str  # ``<base>/<N>``, or the URL given when it was a version directory
    version: str  # "N", or "" when the URL given was a version directory itself


def newest_stored_model(uri: str) -> StoredModel | None:
    """The newest numbered version under ``uri`` (``s3://``, ``pvc://`` or a directory) and
    its kind; ``uri`` may also name one version directory. None while there is no version
    (a job still to train it); UnknownModel when the newest holds no model kfnb knows; the
    store's own `StoreError` when it cannot be read."""
    from kfnb.storage import open_store

    base = uri.rstrip("/")
    files: dict[str, set[str]] = {}  # version -> the files directly in it
    top: set[str] = set()
    for obj in open_store(base).list(""):
        first, _, rest = obj.key.partition("/")
        if not rest:
            top.add(first)
        elif "/" not in rest:
            files.setdefault(first, set()).add(rest)
        else:
            files.setdefault(first, set())
    if top & MODEL_FILES.keys():
        return StoredModel(kind_of_files(top, base), base, "")
    newest = newest_version(files)
    if newest is None:
        return None
    where = f"{base}/{newest}"
    return StoredModel(kind_of_files(files[newest], where), where, newest)
