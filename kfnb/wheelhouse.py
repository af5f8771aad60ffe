"""Wheelhouses: the wheels a job's replicas install, kept in the job's store.

The notebook fills one per set of pins (`PackagePlan.key`) with ``pip download``
for the replicas' platform and Python, once; every later job with the same pins,
and every replica of a job, installs from it with the index switched off. So a
cluster without internet works, and a 2-worker job downloads nothing twice.

Layout: ``<root>/<key>/<wheel files>`` and ``index.json`` (file → sha256 and
size), written last; the root is ``<store>/wheelhouse`` unless ``--wheelhouse``
names another directory or ``s3://`` prefix. A wheelhouse without its index was interrupted while it
was filled and is never used; two notebooks filling one at once write the same
bytes under the same names, so either finishing is a complete wheelhouse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from kfnb.install_packages import WHEELHOUSE_INDEX
from kfnb.packages import PackageError, PackagePlan, _pip_error, pip_platform_args
from kfnb.storage import Store, StoreError

PREFIX = "wheelhouse"  # under the job store
log = logging.getLogger(__name__)


def default_root(store_url: str) -> str:
    return f"{store_url.rstrip('/')}/{PREFIX}"


def choose_root(setting: str, store_url: str, local: bool) -> str:
    """Where replicas take their wheels: a wheelhouse root, or ``off`` (the package index).

    ``auto`` is a wheelhouse in the job's store where the replicas can read it (local
    replicas, an ``s3://`` store, or the claim of a ``pvc://`` store, which every pod
    mounts), else the index; a directory serves local replicas only. Pods read an
    ``s3://`` wheelhouse with the store's settings and Secret, so only beside such a store.
    """
    if setting == "auto":
        shared = local or store_url.startswith(("s3://", "pvc://"))
        return default_root(store_url) if shared else "off"
    if setting == "off" or local:
        return setting
    if setting.startswith("s3://") and not store_url.startswith("s3://"):
        raise PackageError(
            f"--wheelhouse {setting}: pods read an s3:// wheelhouse with the s3:// store's "
            "settings and Secret: use --storage s3://..., or --wheelhouse auto or off"
        )
    if setting.startswith("pvc://") and _claim(setting) != _claim(store_url):
        raise PackageError(
            f"--wheelhouse {setting}: pods mount only the store's claim: put the wheelhouse "
            f"on {_claim(store_url) or 'a pvc:// store'}, or use --wheelhouse auto or off"
        )
    if not setting.startswith(("s3://", "pvc://")):
        raise PackageError(
            f"--wheelhouse {setting}: pods cannot read a directory of this machine: "
            "use an s3:// prefix, or off to install from the package index"
        )
    return setting


def _claim(url: str) -> str:
    return url.removeprefix("pvc://").split("/")[0] if url.startswith("pvc://") else ""


def missing(store: Store, plan: PackagePlan) -> list[str] | None:
    """Files the wheelhouse lacks; None when it has no index (never filled, or interrupted)."""
    data = store.read(f"{plan.key}/{WHEELHOUSE_INDEX}")
    if data is None:
        return None
    index = json.loads(data)
    sizes: dict[str, int] = index.get("sizes", {})
    return [name for name in index["files"] if store.size(f"{plan.key}/{name}") != sizes.get(name)]


def download(plan: PackagePlan, directory: Path) -> list[Path]:
    """``pip download`` the plan's exact pins for the replicas' platform into ``directory``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    command += ["--disable-pip-version-check", "-d", str(directory)]
    command += pip_platform_args(plan.python) + plan.requirements
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise PackageError(
            f"cannot fill the wheelhouse: {_pip_error(done.stderr)} (the notebook needs the "
            "package index; --wheelhouse off installs from the index in each replica instead)"
        )
    return sorted(directory.glob("*.whl"))


def fill(store: Store, plan: PackagePlan) -> str | None:
    """Make the wheelhouse of ``plan`` complete in ``store`` (its root); returns what was
    done, None when it was complete already."""
    try:
        absent = missing(store, plan)
    except StoreError as err:
        raise PackageError(f"cannot read the wheelhouse in {store}: {err}") from err
    if absent == []:
        return None
    base = plan.key
    with tempfile.TemporaryDirectory(prefix="kfnb-wheels-") as tmp:
        wheels = download(plan, Path(tmp))
        files = {w.name: hashlib.sha256(w.read_bytes()).hexdigest() for w in wheels}
        sizes = {w.name: w.stat().st_size for w in wheels}
        try:
            for wheel in wheels:
                if absent is None or wheel.name in absent:
                    store.write(f"{base}/{wheel.name}", wheel.read_bytes())
            index = {"files": files, "sizes": sizes, "requirements": plan.requirements}
            index["python"] = plan.python
            store.write(f"{base}/{WHEELHOUSE_INDEX}", json.dumps(index, indent=1).encode())
        except StoreError as err:
            raise PackageError(f"cannot fill the wheelhouse in {store}: {err}") from err
    total = sum(sizes.values())
    log.info("filled wheelhouse %s: %d wheels, %.1f MB", base, len(files), total / 1e6)
    return f"filled wheelhouse {plan.key}: {len(files)} wheels, {total / 1e6:.0f} MB"
