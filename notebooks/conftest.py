"""The environment of the notebooks' kernels when pytest runs them with nbval.

nbval starts a notebook's kernel from this process's environment, outside any fixture: the
kernel gets a kfnb home of its own, and `!kfnb ...` cells find this environment's commands,
as in an activated environment (`.venv/bin/pytest` does not put them on PATH). The kernels
see no Kubernetes cluster and no S3 settings, whatever the developer's machine has: the saved
outputs of notebooks/kubeflow.ipynb are those of the local backend, and a test run must never
submit jobs to a real cluster or write to a real bucket. Here rather than in
tests/conftest.py so that `pytest notebooks/mnist.ipynb` alone works the same.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

_home: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _home
    if not (config.option.nbval_lax or config.option.nbval):
        return
    _home = Path(tempfile.mkdtemp(prefix="kfnb-notebooks-"))
    os.environ["KFNB_HOME"] = str(_home)
    for name in ("KFNB_STORAGE", "KFNB_BACKEND", "KFNB_NAMESPACE", "KUBERNETES_SERVICE_HOST",
                 "S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.pop(name, None)
    os.environ["KUBECONFIG"] = ""  # an empty list of kubeconfig files: no cluster configured
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _home is None:
        return
    # A notebook that failed half-way may leave a job or a model server running.
    from kfnb.backends.local import LocalBackend
    from kfnb.serving.local import LocalServing

    backend = LocalBackend(storage=_home / "jobs")
    for status in backend.list_jobs():
        if not status.finished:
            backend.delete(status.name)
    serving = LocalServing(_home)
    for served in serving.list():
        serving.stop(served.name)
    shutil.rmtree(_home, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The notebooks' cells run real TensorFlow jobs: `-m "not tensorflow"` leaves them out."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.tensorflow)
