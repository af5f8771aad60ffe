"""Installs what a replica needs beyond its image, before the cell runs.

Shipped in every job's bundle beside ``runtime.py`` and, like it, standard library
only (the image may hold nothing but Python and TensorFlow). On Kubernetes it runs
as the ``kfnb-packages`` init container of the replica's own image, installing into
an ``emptyDir`` that the ``tensorflow`` container has on ``PYTHONPATH``; the local
backend runs the same init container into a cache directory shared by later jobs.

``python install_packages.py TARGET`` reads ``packages.json`` (`kfnb.packages`)
from the code directory. Wheels come from a **wheelhouse** (a directory, or an
``s3://`` prefix fetched with the bundle's minio client) when the plan names one,
with pip's index switched off; otherwise from the package index the pod's
``PIP_INDEX_URL`` names, probed first so an unreachable one fails in seconds.
Every install is ``--no-deps`` of exact pins (the notebook resolved them), and
``--no-compile``: compiling 400 MB of scipy and friends would triple the time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

MARKER = ".kfnb-packages.json"  # written last: a target without it is incomplete
WHEELHOUSE_INDEX = "index.json"  # written last by the notebook that filled it
DEFAULT_INDEX = "https://pypi.org/simple"
PROBE_SECONDS = 5.0


class InstallError(RuntimeError):
    """The replica cannot get its packages; the message is one line with the fix."""


def say(message: str) -> None:
    print(f"kfnb: {message}", flush=True)


def missing_here(packages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For an image kfnb does not know: leave out what it already has."""
    wanted = []
    for package in packages:
        try:
            importlib.metadata.version(package["name"])
        except importlib.metadata.PackageNotFoundError:
            wanted.append(package)
    return wanted


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_wheelhouse(directory: Path, where: str) -> dict[str, Any]:
    """The wheelhouse's index, once every file it lists is there with its checksum."""
    index_file = directory / WHEELHOUSE_INDEX
    if not index_file.is_file():
        raise InstallError(
            f"the wheelhouse {where} is not complete (no {WHEELHOUSE_INDEX}: its filling "
            "was interrupted): submit the job again from the notebook, which refills it"
        )
    index = json.loads(index_file.read_text())
    for name, digest in index["files"].items():
        path = directory / name
        if not path.is_file():
            raise InstallError(
                f"the wheelhouse {where} is missing {name}: submit again from the notebook "
                "(it refills what is missing), or delete the wheelhouse"
            )
        if _sha256(path) != digest:
            raise InstallError(f"{name} in the wheelhouse {where} is damaged: delete it, resubmit")
    return dict(index)


def fetch_wheelhouse(url: str, scratch: Path) -> Path:
    """A local directory holding the wheelhouse at ``url``: downloaded from S3, or on the
    pvc:// store's claim, which the pod mounts at ``KFNB_PVC_ROOT``."""
    if url.startswith("pvc://"):
        root = os.environ.get("KFNB_PVC_ROOT")
        if not root:
            raise InstallError(f"the wheelhouse {url} is on a claim this pod does not mount")
        return Path(root) / url.removeprefix("pvc://").partition("/")[2]
    if not url.startswith("s3://"):
        return Path(url)
    code_dir = Path(__file__).resolve().parent
    sys.path.append(str(code_dir / "vendor"))  # the bundle's minio client
    spec = importlib.util.spec_from_file_location(
        "kfnb_artifact_sync", code_dir / "artifact_sync.py"
    )
    assert spec is not None and spec.loader is not None, "the bundle lacks artifact_sync.py"
    sync = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = sync  # dataclasses look their module up while defining
    spec.loader.exec_module(sync)

    config = sync.S3Config.from_env(os.environ)
    client = sync.make_client(config)
    bucket, prefix = sync.parse_url(url)
    local = scratch / "wheelhouse"
    try:
        index = client.get_object(bucket, f"{prefix}/{WHEELHOUSE_INDEX}")
        data = index.read()
        index.close()
    except sync.storage_errors() as err:
        raise InstallError(
            f"cannot read the wheelhouse {url} at {config.display}: "
            f"{sync.describe_error(err, config, 'read it')}; submit again from the notebook"
        ) from err
    local.mkdir(parents=True)
    (local / WHEELHOUSE_INDEX).write_bytes(data)
    for name in json.loads(data)["files"]:
        try:
            sync.download(client, bucket, f"{prefix}/{name}", local / name)
        except sync.storage_errors():
            break  # verify_wheelhouse names the missing file
    return local


def _index_url(env: dict[str, str]) -> str:
    return env.get("PIP_INDEX_URL") or DEFAULT_INDEX


def probe_index(url: str) -> None:
    """Fail in seconds, naming the host, when the pod cannot reach the package index.

    An HTTP request, not a bare connect: a proxy that accepts every connection and
    answers none is unreachable too. Any HTTP answer (even 404) means it is there.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return
    where = parts.netloc.rpartition("@")[2]  # never print credentials
    probe = url.rstrip("/") + "/pip/"
    try:
        urllib.request.urlopen(urllib.request.Request(probe, method="HEAD"), timeout=PROBE_SECONDS)
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise InstallError(
            f"cannot reach the package index {parts.scheme}://{where} from here ({reason}): "
            "fill a wheelhouse from the notebook (--wheelhouse, the default with s3:// storage), "
            "or set PIP_INDEX_URL to a mirror this cluster reaches"
        ) from err


def pip_install(requirements: list[str], target: Path, wheelhouse: Path | None) -> None:
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile"]
    command += ["--disable-pip-version-check", "--no-cache-dir", "--no-warn-script-location"]
    command += ["--target", str(target), "--quiet"]
    env = dict(os.environ)
    env.setdefault("HOME", tempfile.gettempdir())  # pip writes there; a pod's HOME may be /
    if wheelhouse is not None:
        # Only the wheelhouse: neither the index nor a pip.conf's find-links.
        command += ["--no-index", "--find-links", str(wheelhouse)]
        env["PIP_CONFIG_FILE"] = os.devnull
    else:
        command += ["--timeout", "20", "--retries", "2"]
    done = subprocess.run(command + requirements, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")] or [
            ln for ln in done.stderr.splitlines() if ln.strip()
        ]
        raise InstallError(f"pip could not install the packages: {(lines or ['?'])[0][:300]}")


def install(plan: dict[str, Any], target: Path) -> str:
    """Install the plan into ``target``; returns what it did, in words."""
    marker = target / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("key") == plan["key"]:
        return f"packages already installed in {target}"
    packages = plan["packages"]
    if plan.get("check_image"):
        packages = missing_here(packages)
    if not packages:
        return "nothing to install: the image has every package the job needs"
    requirements = [p["requirement"] for p in packages]
    started = time.monotonic()
    names = ", ".join(p["name"] for p in packages[:6]) + (", ..." if len(packages) > 6 else "")
    with tempfile.TemporaryDirectory(prefix="kfnb-install-") as tmp:
        source = plan.get("wheelhouse") or ""
        wheelhouse: Path | None = None
        if source:
            say(f"installing {len(packages)} packages ({names}) from the wheelhouse {source}")
            wheelhouse = fetch_wheelhouse(source, Path(tmp))
            verify_wheelhouse(wheelhouse, source)
        else:
            index = _index_url(dict(os.environ))
            say(f"installing {len(packages)} packages ({names}) from {index}")
            probe_index(index)
        into = target
        if os.path.ismount(target):  # a pod's emptyDir: in place, after a failed try's leftovers
            _empty(target)
        elif not _is_empty_dir(target):  # a cache path: install beside it, then rename
            into = target.with_name(f".{target.name}.{os.getpid()}")
        try:
            pip_install(requirements, into, wheelhouse)
        except InstallError:
            if into != target:
                shutil.rmtree(into, ignore_errors=True)
            raise
        (into / MARKER).write_text(json.dumps({"key": plan["key"], "requirements": requirements}))
        if into != target:
            try:  # another job may have installed the same set meanwhile: keep theirs
                os.rename(into, target)
            except OSError:
                shutil.rmtree(into, ignore_errors=True)
    return f"installed {len(packages)} packages in {time.monotonic() - started:.1f} s"


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _empty(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: install_packages.py TARGET", file=sys.stderr)
        return 2
    code_dir = Path(os.environ.get("KFNB_CODE_DIR") or Path(__file__).resolve().parent)
    plan = json.loads((code_dir / "packages.json").read_text())
    try:
        say(install(plan, Path(argv[1])))
    except InstallError as err:
        print(f"kfnb: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
