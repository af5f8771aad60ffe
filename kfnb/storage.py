"""Artifact stores: where jobs keep code, logs, TensorBoard events, models and status.

One URL names a store (``--storage``, ``%config Kfnb.storage``, ``KFNB_STORAGE``):
a local directory (the default), ``s3://bucket/prefix`` on S3 or MinIO, or
``pvc://CLAIM/PATH`` on a PersistentVolumeClaim, which pods mount and this notebook
reads where it has the same claim mounted (`PvcStore`). Every store has the same
layout, one prefix per job::

    <job>/code/  <job>/manifest.json  <job>/status.json  <job>/status/<replica>.json
    <job>/logs/<replica>.log  <job>/tensorboard/...  <job>/model/<version>/ (a SavedModel)

`open_store(url)` picks the store by the URL's scheme from a registry. The S3
store uses the ``minio`` client (``pip install kfnb[s3]``), imported on first use;
its settings and keys come from the environment (see `kfnb.artifact_sync`).
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kfnb._util import create_exclusive, inside, open_private, private_dir, write_atomic
from kfnb.artifact_sync import (
    S3Config,
    StoreError,
    describe_error,
    parse_url,
    storage_errors,
    targets,
)

__all__ = [
    "StoreError",
    "StoredObject",
    "Transfer",
    "Store",
    "LocalStore",
    "S3Store",
    "PvcStore",
    "PvcUrl",
    "parse_pvc",
    "StoreMirror",
    "open_store",
    "replica_env",
    "upload_dataset",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredObject:
    key: str  # relative to the store's root
    size: int


@dataclass(frozen=True)
class Transfer:
    """What an upload or download moved."""

    files: int
    bytes: int
    seconds: float


class Store(Protocol):
    url: str
    # The directory of a local store; None for a remote one.
    local_root: Path | None

    def check(self) -> None:
        """Raise StoreError now if the store cannot be written (creates a missing bucket)."""

    def read(self, key: str, offset: int = 0) -> bytes | None:
        """The object's bytes from ``offset`` (b"" past its end), None when it is missing."""

    def size(self, key: str) -> int | None: ...

    def write(self, key: str, data: bytes) -> None: ...

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if no object has it: False (nothing written) when one does.
        How a job name is reserved: of two kernels creating one key, one gets True."""

    def list(self, prefix: str = "") -> list[StoredObject]:
        """Every object under ``prefix`` (recursively), in key order."""

    def upload_dir(self, path: Path, prefix: str) -> Transfer: ...

    def download_dir(self, prefix: str, path: Path) -> Transfer: ...

    def delete_prefix(self, prefix: str) -> int: ...


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


class LocalStore:
    """A directory on this machine: the default store, and the fastest."""

    def __init__(self, root: str | Path) -> None:
        self.local_root: Path | None = Path(root).expanduser()
        self.root = self.local_root
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        """Where ``key`` is: inside the store's directory, or StoreError."""
        path = inside(self.root, key)
        if path is None:
            raise StoreError(
                f"key {key!r} leads outside the store {self.root}: use a path inside it"
            )
        return path

    def check(self) -> None:
        try:
            private_dir(self.root)
        except OSError as exc:
            raise StoreError(
                f"cannot create the storage directory {self.root} ({exc.strerror}): "
                "set %config Kfnb.storage to a directory you can write"
            ) from exc

    def read(self, key: str, offset: int = 0) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(offset)
                return f.read()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        private_dir(path.parent)
        write_atomic(path, data)

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        private_dir(path.parent)
        try:
            create_exclusive(path, data)
        except FileExistsError:
            return False
        return True

    def list(self, prefix: str = "") -> list[StoredObject]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return [
            StoredObject(p.relative_to(self.root).as_posix(), p.stat().st_size)
            for p in sorted(base.rglob("*"))
            if p.is_file()
        ]

    def upload_dir(self, path: Path, prefix: str) -> Transfer:
        start = time.perf_counter()
        target = self._path(prefix)
        shutil.copytree(path, target, dirs_exist_ok=True)
        files = [p for p in target.rglob("*") if p.is_file()]
        return Transfer(len(files), sum(p.stat().st_size for p in files), _since(start))

    def download_dir(self, prefix: str, path: Path) -> Transfer:
        start = time.perf_counter()
        shutil.copytree(self._path(prefix), path, dirs_exist_ok=True)
        files = [p for p in path.rglob("*") if p.is_file()]
        return Transfer(len(files), sum(p.stat().st_size for p in files), _since(start))

    def delete_prefix(self, prefix: str) -> int:
        objects = self.list(prefix)
        shutil.rmtree(self._path(prefix), ignore_errors=True)
        return len(objects)

    def __repr__(self) -> str:
        return f"<LocalStore {self.url}>"


def _since(start: float) -> float:
    return time.perf_counter() - start


class S3Store:
    """``s3://bucket/prefix`` on S3 or MinIO, through the minio client."""

    local_root: Path | None = None

    def __init__(self, url: str, config: S3Config | None = None) -> None:
        self.bucket, self.prefix = parse_url(url.rstrip("/"))
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.config = config or _config_from_settings()
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from kfnb.artifact_sync import make_client

            self._client = make_client(self.config)
        return self._client

    def key(self, relative: str) -> str:
        """The object key of ``relative``; '.' and '..' segments are refused (S3 keeps them
        as they are, and a local copy of such a key would land elsewhere)."""
        if any(part in (".", "..") for part in relative.split("/")):
            raise StoreError(f"key {relative!r} has a '.' or '..' segment: use a plain path")
        return _join(self.prefix, relative)

    def _fail(self, exc: BaseException, what: str) -> StoreError:
        error = StoreError(describe_error(exc, self.config, what))
        log.debug("S3 call failed: %s", error)
        return error

    def _call(self, method: str, key: str, detail: str = "") -> None:
        """Log an S3 call at DEBUG: the method and the object, never keys or headers."""
        log.debug("S3 %s %s/%s at %s%s", method, self.bucket, key, self.config.display, detail)

    def check(self) -> None:
        """Reachable, keys accepted, bucket there: created when missing and allowed."""
        # A listing (GET), not bucket_exists (HEAD): an error reply to HEAD has no body,
        # so wrong keys would read as AccessDenied; a GET carries S3's own error code.
        try:
            self._call("list (check)", self.key(""))
            next(iter(self.client.list_objects(self.bucket, prefix=self.key("") or None)), None)
            return
        except storage_errors() as exc:
            if getattr(exc, "code", "") != "NoSuchBucket":
                raise self._fail(exc, f"checking bucket {self.bucket!r}") from exc
        try:
            self._call("make_bucket", "")
            self.client.make_bucket(self.bucket)
        except storage_errors() as exc:
            if getattr(exc, "code", "") in ("AccessDenied", "AllAccessDisabled"):
                raise StoreError(
                    f"bucket {self.bucket!r} does not exist at {self.config.display} and these "
                    "keys may not create it: ask the storage admin to create it, or use a "
                    "bucket you own in --storage"
                ) from exc
            if getattr(exc, "code", "") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return  # created meanwhile by another kernel
            raise self._fail(exc, f"creating bucket {self.bucket!r}") from exc

    def read(self, key: str, offset: int = 0) -> bytes | None:
        response = None
        try:
            self._call("get_object", self.key(key), f" from byte {offset}" if offset else "")
            response = self.client.get_object(self.bucket, self.key(key), offset=offset)
            return bytes(response.read())
        except storage_errors() as exc:
            code = getattr(exc, "code", "")
            if code in ("NoSuchKey", "NoSuchObject"):
                return None
            if code == "InvalidRange":  # offset at or past the end
                return b"" if self.size(key) is not None else None
            raise self._fail(exc, f"reading {self.url}/{key}") from exc
        finally:
            if response is not None:
                response.close()
                response.release_conn()

    def size(self, key: str) -> int | None:
        try:
            self._call("stat_object", self.key(key))
            return int(self.client.stat_object(self.bucket, self.key(key)).size)
        except storage_errors() as exc:
            if getattr(exc, "code", "") in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise self._fail(exc, f"reading {self.url}/{key}") from exc

    def write(self, key: str, data: bytes) -> None:
        try:
            self._call("put_object", self.key(key), f" ({len(data)} bytes)")
            self.client.put_object(self.bucket, self.key(key), io.BytesIO(data), len(data))
        except storage_errors() as exc:
            raise self._fail(exc, f"writing {self.url}/{key}") from exc

    def create(self, key: str, data: bytes) -> bool:
        """A conditional put (``If-None-Match: *``), after a check that the key is free.

        S3 (since August 2024), MinIO and moto refuse the put when the object exists
        (412 PreconditionFailed; S3 says 409 ConditionalRequestConflict while another
        conditional put of the key is in flight), so one of two writers wins. A server
        that ignores the header writes anyway, and one that rejects it (501) gets a plain
        put: there only the check guards, and two writers between the check and the put
        both win. That window, a round trip, is what remains on stores without
        conditional writes.
        """
        if self.size(key) is not None:
            return False
        name = self.key(key)
        headers = {"If-None-Match": "*", "Content-Type": "application/octet-stream"}
        try:
            self._call("put_object (if none)", name, f" ({len(data)} bytes)")
            # put_object sends headers it does not know as user metadata (x-amz-meta-*):
            # _put_object is its PutObject call, which sends them as they are.
            self.client._put_object(self.bucket, name, data, headers=headers)
        except storage_errors() as exc:
            code = getattr(exc, "code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            if code != "NotImplemented":
                raise self._fail(exc, f"writing {self.url}/{key}") from exc
            self.write(key, data)
        return True

    def list(self, prefix: str = "") -> list[StoredObject]:
        base = self.key(prefix)
        base = f"{base}/" if base else ""
        strip = len(self.key("")) + 1 if self.prefix else 0
        try:
            self._call("list_objects", base)
            items = self.client.list_objects(self.bucket, prefix=base, recursive=True)
            return sorted(
                (StoredObject(item.object_name[strip:], int(item.size or 0)) for item in items),
                key=lambda o: o.key,
            )
        except storage_errors() as exc:
            raise self._fail(exc, f"listing {self.url}/{prefix}") from exc

    def upload_dir(self, path: Path, prefix: str) -> Transfer:
        start, total = time.perf_counter(), 0
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == "saved_model.pb")  # see Syncer.upload_tree
        for file in files:
            key = self.key(_join(prefix, file.relative_to(path).as_posix()))
            try:
                self._call("fput_object", key)
                self.client.fput_object(self.bucket, key, str(file))
            except storage_errors() as exc:
                raise self._fail(exc, f"uploading {file}") from exc
            total += file.stat().st_size
        return Transfer(len(files), total, _since(start))

    def download_dir(self, prefix: str, path: Path) -> Transfer:
        from kfnb.artifact_sync import download

        start, total = time.perf_counter(), 0
        objects = self.list(prefix)
        where = targets([obj.key for obj in objects], prefix.strip("/"), Path(path))
        for obj, (_, target) in zip(objects, where, strict=True):
            try:
                self._call("fget_object", self.key(obj.key))
                download(self.client, self.bucket, self.key(obj.key), target)
            except storage_errors() as exc:
                raise self._fail(exc, f"downloading {self.url}/{obj.key}") from exc
            total += obj.size
        return Transfer(len(objects), total, _since(start))

    def delete_prefix(self, prefix: str) -> int:
        from minio.deleteobjects import DeleteObject

        objects = self.list(prefix)
        try:
            self._call("remove_objects", self.key(prefix), f" ({len(objects)} objects)")
            errors = self.client.remove_objects(
                self.bucket, [DeleteObject(self.key(o.key)) for o in objects]
            )
            for error in errors:
                raise StoreError(f"deleting {self.url}/{prefix}: {error.code}")
        except storage_errors() as exc:
            raise self._fail(exc, f"deleting {self.url}/{prefix}") from exc
        return len(objects)

    def __repr__(self) -> str:
        return f"<S3Store {self.url} at {self.config.display}>"


def _config_from_settings() -> S3Config:
    """The notebook's S3 settings: ``Kfnb.s3_endpoint`` (S3_ENDPOINT) and the environment."""
    from kfnb.config import settings

    return S3Config.from_env(os.environ, endpoint=settings().s3_endpoint)


POD_PVC_ROOT = "/mnt/kfnb-store"  # where every pod of a pvc:// store mounts the claim
_CLAIM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a DNS-1123 subdomain
PVC_MOUNTS_FIX = (
    "mount the claim in this notebook server (Kubeflow: a data volume), or tell kfnb where it "
    "is mounted with %config Kfnb.pvc_mounts = {{'{claim}': '/home/jovyan/...'}}"
)


@dataclass(frozen=True)
class PvcUrl:
    """``pvc://CLAIM/PATH``: a PersistentVolumeClaim of the namespace and a directory on it."""

    claim: str
    path: str  # inside the claim, without leading or trailing "/"; "" for its root

    @property
    def url(self) -> str:
        return f"pvc://{self.claim}" + (f"/{self.path}" if self.path else "")

    def pod_path(self, *parts: str) -> str:
        """The absolute path in a pod that mounts the claim at `POD_PVC_ROOT`."""
        return "/" + _join(POD_PVC_ROOT, self.path, *parts)


def parse_pvc(url: str) -> PvcUrl:
    """The claim and path of ``pvc://CLAIM/PATH``; StoreError naming what is wrong."""
    claim, _, path = url.removeprefix("pvc://").partition("/")
    parts = [p for p in path.split("/") if p]
    if not _CLAIM_NAME.match(claim):
        raise StoreError(
            f"storage {url!r}: {claim!r} is not a PersistentVolumeClaim name (lower-case "
            "letters, digits, '-' and '.'): write pvc://CLAIM/PATH"
        )
    if any(p in (".", "..") for p in parts):
        raise StoreError(f"storage {url!r}: the path on the claim may not hold '.' or '..'")
    return PvcUrl(claim, "/".join(parts))


def pvc_directory(pvc: PvcUrl) -> Path:
    """Where this notebook sees ``pvc``'s directory: the claim's mount from
    ``Kfnb.pvc_mounts``, else (in a pod) from the notebook pod's own spec."""
    from kfnb.config import settings

    mounts = settings().pvc_mounts
    if pvc.claim in mounts:
        return Path(mounts[pvc.claim]).expanduser() / pvc.path
    from kfnb.backends.kube_api import in_cluster

    if in_cluster():
        from kfnb.backends.kube_pvc import notebook_directory

        return notebook_directory(pvc)
    raise StoreError(
        f"storage {pvc.url}: this notebook does not know where claim {pvc.claim} is mounted: "
        + PVC_MOUNTS_FIX.format(claim=pvc.claim)
    )


class PvcStore(LocalStore):
    """``pvc://CLAIM/PATH``: a local directory here (the claim's mount), the claim in pods.

    Pods write to it directly, so the notebook reads logs, events and models from its
    own mount of the same claim, as it reads a local store.
    """

    def __init__(self, url: str) -> None:
        self.pvc = parse_pvc(url)
        super().__init__(pvc_directory(self.pvc))
        self.url = self.pvc.url

    def check(self) -> None:
        mount = self.root
        for _ in self.pvc.path.split("/") if self.pvc.path else ():
            mount = mount.parent
        if not mount.is_dir():
            raise StoreError(
                f"storage {self.url}: claim {self.pvc.claim} is said to be mounted at {mount}, "
                "which is not a directory here: " + PVC_MOUNTS_FIX.format(claim=self.pvc.claim)
            )
        super().check()

    def __repr__(self) -> str:
        return f"<PvcStore {self.url} at {self.root}>"


# scheme -> factory. A bare path (no scheme) and file:// are local directories.
_STORES: dict[str, Callable[[str], Store]] = {
    "": LocalStore,
    "file": lambda url: LocalStore(url.removeprefix("file://")),
    "s3": S3Store,
    "pvc": PvcStore,
}


def open_store(url: str | Path) -> Store:
    """The store named by ``url``: a directory, ``file://dir``, ``s3://bucket/prefix`` or
    ``pvc://CLAIM/PATH``."""
    text = str(url)
    scheme = text.split("://", 1)[0] if "://" in text else ""
    factory = _STORES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in _STORES if s)
        raise StoreError(
            f"storage {text!r}: unknown scheme {scheme}://, use a directory or {known}"
        )
    return factory(text)


def replica_env(store: Store, job: str) -> dict[str, str]:
    """What a job's replicas need to write to ``store`` (never keys): {} for local stores.

    ``KFNB_STORE`` is the job's own URL; keys reach replicas from the environment
    (locally) or a Secret reference (Kubernetes), never through this dict.
    """
    if not isinstance(store, S3Store):
        return {}
    return {"KFNB_STORE": f"{store.url}/{job}", **store.config.replica_env()}


def upload_dataset(store: Store | str, name: str, **arrays: Any) -> str:
    """Upload arrays once as ``data/<name>.npz`` (e.g. MNIST's), return the object's URL.

    Workers read it back with ``tfjob.fetch(url)`` (see `model.mnist.load_mnist`).
    """
    import numpy as np

    store = open_store(store) if isinstance(store, str) else store
    store.check()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    key = f"data/{name}.npz"
    store.write(key, buffer.getvalue())
    return f"{store.url}/{key}"


class StoreMirror:
    """Keeps a local copy of a store prefix up to date, downloading only what is new.

    Event files only grow, so a longer object is fetched from the local copy's
    size on (a ranged GET) and appended: tensorboard's reader, which remembers
    its offset, then reads just the new records. A record cut short (the replica
    uploaded mid-write) stays incomplete locally until the rest arrives.
    """

    def __init__(self, store: Store, prefix: str, local: Path) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self.local = local

    def pull(self) -> int:
        """Fetch what changed; the number of bytes downloaded."""
        fetched = 0
        objects = self.store.list(self.prefix)
        where = targets([obj.key for obj in objects], self.prefix, self.local)
        for obj, (_, path) in zip(objects, where, strict=True):
            have = path.stat().st_size if path.exists() else 0
            if have == obj.size:
                continue
            if have > obj.size:  # replaced by a shorter file: start again
                path.unlink()
                have = 0
            data = self.store.read(obj.key, offset=have)
            if not data:
                continue
            with open_private(private_dir(path.parent) / path.name) as f:
                f.write(data)
            fetched += len(data)
        return fetched
