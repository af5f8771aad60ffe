"""S3/MinIO access shared by the notebook (`kfnb.storage`) and the replicas (`runtime.py`).

Like ``runtime.py`` this file is shipped in every job's bundle and runs in a stock
TensorFlow container, so it imports only the standard library and the ``minio``
client (installed, or the copy the bundle ships under ``vendor/``). It never
imports the rest of kfnb, so the helpers it shares with kfnb (an atomic write, the
numbered-version test, a message's first line, the path-inside-a-directory test; see
``kfnb/_util.py``) are copies. ``runtime.py`` uses this file's `inside` and
`private_dir` rather than copies of its own.

Settings come from the variables TensorFlow and the Kubeflow MNIST examples use:
``S3_ENDPOINT`` (host:port, empty for AWS), ``S3_USE_HTTPS``, ``S3_VERIFY_SSL``,
``AWS_REGION``, and the keys ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
which are read from the environment only and never written anywhere.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_ENDPOINT = "s3.amazonaws.com"
SYNC_SECONDS = 3.0  # how often a replica uploads what changed (KFNB_SYNC_SECONDS)
FINAL_ATTEMPTS = 4  # passes over what is left when the cell ends, with backoff
# S3's rules for bucket names (the DNS-compatible ones every S3 server accepts).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_FALSE = ("0", "false", "no", "off")

_HINTS = {
    "SignatureDoesNotMatch": "the S3 server rejected the keys: check AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY in the notebook's environment",
    "InvalidAccessKeyId": "the S3 server does not know this access key: check "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the notebook's environment",
    "AccessDenied": "these keys may not do this: ask the storage admin for access, or use "
    "a bucket these keys own",
    "NoSuchBucket": "the bucket does not exist: create it, or use one that does",
    "SlowDown": "the S3 server is overloaded (503): kfnb retried; try again later",
    "ServiceUnavailable": "the S3 server is unavailable (503): kfnb retried; try again later",
}


class StoreError(RuntimeError):
    """Storage cannot do what was asked; the message is one line with the fix, no secrets."""


@dataclass(frozen=True)
class S3Config:
    """Where the S3 server is and how to talk to it. The keys never show in a repr."""

    endpoint: str = DEFAULT_ENDPOINT
    secure: bool = True
    verify: bool = True
    region: str = ""
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    retries: int = 2

    @classmethod
    def from_env(cls, env: Mapping[str, str], endpoint: str | None = None) -> S3Config:
        raw = (endpoint if endpoint is not None else env.get("S3_ENDPOINT", "")).strip()
        secure = env.get("S3_USE_HTTPS", "1").strip().lower() not in _FALSE
        if "://" in raw:  # AWS_ENDPOINT_URL style: the scheme decides unless S3_USE_HTTPS says
            scheme, raw = raw.split("://", 1)
            if "S3_USE_HTTPS" not in env:
                secure = scheme == "https"
        return cls(
            endpoint=raw.rstrip("/") or DEFAULT_ENDPOINT,
            secure=secure,
            verify=env.get("S3_VERIFY_SSL", "1").strip().lower() not in _FALSE,
            region=env.get("AWS_REGION", "") or env.get("AWS_DEFAULT_REGION", ""),
            access_key=env.get("AWS_ACCESS_KEY_ID", ""),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY", ""),
        )

    @property
    def display(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def replica_env(self) -> dict[str, str]:
        """The settings a replica needs, keys left out (they travel by env or Secret only)."""
        env = {
            "S3_ENDPOINT": self.endpoint,
            "S3_USE_HTTPS": "1" if self.secure else "0",
            "S3_VERIFY_SSL": "1" if self.verify else "0",
        }
        if self.region:
            env["AWS_REGION"] = self.region
        return env


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, "some/prefix"), the bucket name checked."""
    if not url.startswith("s3://"):
        raise StoreError(f"{url!r} is not an s3:// URL: write s3://bucket/prefix")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    check_bucket_name(bucket)
    return bucket, prefix.strip("/")


def check_bucket_name(bucket: str) -> None:
    if not _BUCKET.match(bucket) or ".." in bucket or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket):
        raise StoreError(
            f"{bucket!r} is not a valid S3 bucket name: use 3-63 lower-case letters, digits, "
            "'-' and '.', starting and ending with a letter or digit (e.g. s3://tfmnist/jobs)"
        )


def make_client(config: S3Config) -> Any:
    """A ``minio.Minio`` client with short connect timeouts and few retries.

    minio's default pool retries a refused connection five times with backoff;
    an unreachable endpoint should say so within seconds, and the replica's
    own sync loop retries later anyway.
    """
    try:
        import certifi
        import urllib3
        from minio import Minio
    except ImportError as exc:
        raise StoreError(
            f"s3:// storage needs the minio client ({exc}): pip install kfnb[s3]"
        ) from exc
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.read_timeout),
        maxsize=16,
        cert_reqs="CERT_REQUIRED" if config.verify else "CERT_NONE",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=config.retries,
            backoff_factor=0.2,
            status_forcelist=[500, 502, 503, 504],
            allowed_methods=None,  # S3 PUTs of whole objects are idempotent
            raise_on_status=False,  # the last reply reaches minio, which reads S3's error code
        ),
    )
    return Minio(
        config.endpoint,
        access_key=config.access_key or None,
        secret_key=config.secret_key or None,
        secure=config.secure,
        region=config.region or None,
        http_client=http,
    )


_storage_errors: tuple[type[BaseException], ...] | None = None


def storage_errors() -> tuple[type[BaseException], ...]:
    """What the S3 client raises when storage fails: the exceptions to catch, and no others.

    minio's own (an S3 error reply, a reply it cannot read), urllib3's (the HTTP
    connection: refused, reset, retries used up) and OSError (sockets, and the local
    file of an upload or download). Anything else (a TypeError, a KeyError) is a bug
    in kfnb and must surface as itself, never dressed as a storage error.
    """
    global _storage_errors
    if _storage_errors is None:
        found: list[type[BaseException]] = [OSError]
        try:
            from minio.error import MinioException

            found.append(MinioException)
        except ImportError:  # make_client says so in its own words
            pass
        try:
            from urllib3.exceptions import HTTPError

            found.append(HTTPError)
        except ImportError:
            pass
        _storage_errors = tuple(found)
    return _storage_errors


def describe_error(exc: BaseException, config: S3Config, what: str) -> str:
    """One line saying what failed and what to do; the secret key never appears."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:  # minio.error.S3Error
        hint = _HINTS.get(code) or _first_line(getattr(exc, "message", "") or "", 200)
        text = f"{what}: {config.display} answered {code}: {hint}"
    elif _is_connection_error(exc):
        reason = _first_line(getattr(exc, "reason", "") or exc, 160)
        text = (
            f"{what}: cannot reach the S3 endpoint {config.display} ({reason}): check "
            "S3_ENDPOINT (or %config Kfnb.s3_endpoint) and S3_USE_HTTPS"
        )
    else:
        detail = _first_line(exc, 200)
        text = f"{what}: {type(exc).__name__}{': ' + detail if detail else ''}"
    return scrub(text, config)


def _first_line(message: object, limit: int) -> str:
    """kfnb._util.first_line's copy (this file runs where the rest of kfnb is not)."""
    return next((ln.strip() for ln in str(message).splitlines() if ln.strip()), "")[:limit]


def scrub(text: str, config: S3Config) -> str:
    """Defence in depth: no message kfnb writes may carry the secret key."""
    return text.replace(config.secret_key, "***") if config.secret_key else text


def _is_connection_error(exc: BaseException) -> bool:
    try:
        import urllib3.exceptions as errors
    except ImportError:
        return isinstance(exc, OSError)
    return isinstance(exc, (errors.MaxRetryError, errors.NewConnectionError, OSError)) or (
        isinstance(exc, errors.HTTPError) and "Connection" in type(exc).__name__
    )


def model_versions(client: Any, bucket: str, prefix: str) -> list[int]:
    """Numeric version directories under ``prefix/model/`` in the bucket."""
    base = f"{prefix}/model/" if prefix else "model/"
    found = []
    for item in client.list_objects(bucket, prefix=base):
        name = item.object_name[len(base) :].strip("/")
        if name.isascii() and name.isdigit():  # kfnb._util.version_number's test
            found.append(int(name))
    return found


@dataclass
class _Watched:
    path: Path
    key: str
    is_dir: bool
    mirror: bool = False  # files removed here are removed from the bucket too
    last: tuple[str, ...] = ()  # names uploaded after the rest of a pass


class Syncer:
    """Uploads a replica's logs, events and status to ``s3://bucket/prefix`` as they change.

    A background thread looks every ``interval`` seconds for files whose size or
    mtime changed and uploads each whole (S3 has no append; logs and event
    files are small). Training never waits on it: the thread only reads files.
    A failed upload is kept and tried again on the next pass; ``close()`` makes a
    few last passes and returns what still could not be uploaded, with why.
    """

    def __init__(
        self,
        client: Any,
        config: S3Config,
        bucket: str,
        prefix: str,
        interval: float = SYNC_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.config = config
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.interval = interval
        self._sleep = sleep
        self._watched: list[_Watched] = []
        self._uploaded: dict[str, tuple[int, int]] = {}
        self._paths: dict[str, Path] = {}  # every file ever tried, so a failure can be retried
        self.failed: dict[str, str] = {}
        self.uploads = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def versions(self) -> list[int]:
        """Model versions already in the bucket, so a new one never overwrites them."""
        return model_versions(self.client, self.bucket, self.prefix)

    def watch(
        self, path: Path, relative: str, mirror: bool = False, last: tuple[str, ...] = ()
    ) -> None:
        """Keep ``path`` (a file, or a directory and everything under it) uploaded.

        ``mirror``: a file removed here is removed from the bucket (a checkpoint
        manager deletes old checkpoints). ``last``: files so named go after the
        others of a pass, as a checkpoint's index file must follow its data.
        """
        watched = _Watched(path, relative.strip("/"), path.is_dir(), mirror, last)
        with self._lock:
            self._watched.append(watched)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="kfnb-sync", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync()

    def _files(self, only: str | None = None) -> list[tuple[Path, str]]:
        files = []
        for watched in self._watched:
            if only is not None and watched.key != only:
                continue
            if watched.is_dir or watched.path.is_dir():
                for path in sorted(watched.path.rglob("*")):
                    if path.is_file() and not path.name.startswith("."):
                        rel = path.relative_to(watched.path).as_posix()
                        files.append((path, f"{watched.key}/{rel}"))
            elif watched.path.is_file():
                files.append((watched.path, watched.key))
        lasts = {name for watched in self._watched for name in watched.last}
        return sorted(files, key=lambda item: item[0].name in lasts)  # a stable sort

    def sync(self, only: str | None = None) -> None:
        """One pass: upload every watched file that changed since its last upload, then
        remove from the bucket what a mirrored directory no longer has. ``only``: the
        watch with that key alone (a checkpoint just written, from the training thread)."""
        with self._lock:
            files = self._files(only)
            for path, relative in files:
                try:
                    stat = path.stat()
                except OSError:
                    continue
                signature = (stat.st_size, stat.st_mtime_ns)
                if self._uploaded.get(relative) == signature and relative not in self.failed:
                    continue
                self.upload_file(path, relative, signature)
            self._remove_deleted({relative for _, relative in files}, only)

    def _remove_deleted(self, present: set[str], only: str | None) -> None:
        mirrored = [w.key for w in self._watched if w.mirror and only in (None, w.key)]
        for relative in list(self._uploaded):
            gone = relative not in present and not self._paths[relative].exists()
            if gone and any(relative.startswith(f"{key}/") for key in mirrored):
                try:
                    self.client.remove_object(self.bucket, self.key(relative))
                except storage_errors():
                    continue  # a stale file in the bucket is harmless: try again next pass
                del self._uploaded[relative]

    def upload_file(
        self, path: Path, relative: str, signature: tuple[int, int] | None = None
    ) -> bool:
        """Upload one file now; on failure remember why (and try again next pass)."""
        import io

        self._paths[relative] = path
        try:
            data = path.read_bytes()  # one consistent snapshot of a file still being written
            self.client.put_object(self.bucket, self.key(relative), io.BytesIO(data), len(data))
        except storage_errors() as exc:  # every failure is recorded, none stops training
            self.failed[relative] = describe_error(exc, self.config, f"upload of {relative}")
            return False
        if signature is None:
            stat = path.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
        self._uploaded[relative] = signature
        self.failed.pop(relative, None)
        self.uploads += 1
        return True

    def upload_tree(self, root: Path, relative: str, last: tuple[str, ...] = ()) -> None:
        """Upload a directory (a SavedModel); files named in ``last`` go last.

        TF Serving and KServe pick a version up once ``saved_model.pb`` is there,
        so it is written after the variables it points to.
        """
        files = sorted(p for p in root.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name in last)
        with self._lock:
            for path in files:
                self.upload_file(path, f"{relative}/{path.relative_to(root).as_posix()}")

    def close(self, attempts: int = FINAL_ATTEMPTS) -> dict[str, str]:
        """Stop the thread, upload what is left (retrying), return {key: why} still missing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for attempt in range(attempts):
            self.sync()
            self._retry_failed()
            if not self.failed:
                break
            if attempt + 1 < attempts:
                self._sleep(min(0.5 * 2**attempt, 4.0))
        return dict(self.failed)

    def _retry_failed(self) -> None:
        """Failed files that no watch covers (a model version) are retried by their path."""
        with self._lock:
            for relative in list(self.failed):
                path = self._paths.get(relative)
                if path is not None and path.is_file():
                    self.upload_file(path, relative)


def private_dir(path: Path) -> Path:
    """kfnb._util.private_dir's copy (runtime.py uses this one): ``path`` and the parents
    it lacks made 0700."""
    missing, parent = [], path
    while not parent.is_dir() and parent.parent != parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise
    return path


def inside(root: Path, relative: str) -> Path | None:
    """kfnb._util.inside's copy: ``root / relative`` when it resolves inside ``root``."""
    path = root / relative
    base = os.path.realpath(root)
    return path if os.path.commonpath([base, os.path.realpath(path)]) == base else None


def targets(keys: list[str], base: str, dest: Path) -> list[tuple[str, Path]]:
    """(key, local path) of each of ``keys`` under ``base/`` in ``dest``; StoreError
    naming the first whose path would lead outside ``dest``, before anything is written."""
    found = []
    for key in keys:
        relative = key[len(base) + 1 :] if base else key
        path = inside(dest, relative)
        if path is None:
            raise StoreError(
                f"object {key!r} would be written outside {dest}: nothing was downloaded; "
                "delete or rename that object"
            )
        found.append((key, path))
    return found


def download(client: Any, bucket: str, key: str, dest: Path) -> Path:
    """Download one object to ``dest``: whole or not at all, 0600 when new. See `fetch`."""
    fetch(client, bucket, key, dest)
    return dest


def fetch(client: Any, bucket: str, key: str, dest: Path) -> tuple[int, str]:
    """Download one object to ``dest``; the size and ETag of what was downloaded.

    kfnb._util.write_atomic's copy, for a download: a temporary of its own beside
    ``dest`` (0600, a unique name, so two replicas fetching one object at once never
    write into one file), renamed over ``dest`` once complete.
    """
    private_dir(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    response = None
    try:
        with os.fdopen(fd, "wb") as out:
            response = client.get_object(bucket, key)
            size = 0
            for chunk in response.stream(1 << 20):
                out.write(chunk)
                size += len(chunk)
        expected = response.headers.get("Content-Length")
        if expected is not None and int(expected) != size:
            raise OSError(f"s3://{bucket}/{key}: got {size} of {expected} bytes")
        os.replace(tmp, dest)
        return size, str(response.headers.get("ETag", "")).strip('"')
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if response is not None:
            response.close()
            response.release_conn()


def fetch_cached(client: Any, bucket: str, key: str, dest: Path) -> Path:
    """``dest`` holding the object, downloaded only when the copy there is not the
    object's current one: the size and ETag recorded at its download (in a file beside
    it) must be the object's now. A copy changed since, or not downloaded by kfnb, is
    downloaded again."""
    record = dest.with_name(f".{dest.name}.kfnb-object")
    stat = client.stat_object(bucket, key)
    current = {"size": int(stat.size), "etag": str(stat.etag or "").strip('"')}
    try:
        recorded = json.loads(record.read_text())
        if recorded == current and dest.stat().st_size == current["size"]:
            return dest
    except (OSError, ValueError):
        pass
    size, etag = fetch(client, bucket, key, dest)
    fd, tmp = tempfile.mkstemp(prefix=f"{record.name}.", suffix=".tmp", dir=dest.parent)
    with os.fdopen(fd, "w") as out:
        json.dump({"size": size, "etag": etag}, out)
    os.replace(tmp, record)
    return dest


def download_newer(client: Any, bucket: str, prefix: str, dest: Path) -> list[Path]:
    """Download the objects under ``prefix/`` that ``dest`` lacks or has an older or
    different-sized copy of; nothing local is removed. What was downloaded.

    How a replica picks up the job's checkpoints when it starts: in a fresh pod all
    of them; where its files survived (the same pod, the local backend) only those
    the chief has uploaded since.
    """
    base = prefix.strip("/")
    items = {
        item.object_name: item
        for item in client.list_objects(bucket, prefix=f"{base}/", recursive=True)
        if not item.object_name.endswith("/")
    }
    got = []
    for key, target in targets(list(items), base, dest):
        if not _is_current(target, items[key]):
            got.append(download(client, bucket, key, target))
    return got


def _is_current(path: Path, item: Any) -> bool:
    try:
        stat = path.stat()
    except OSError:
        return False
    modified = item.last_modified.timestamp() if item.last_modified else 0.0
    return stat.st_size == item.size and stat.st_mtime >= modified
