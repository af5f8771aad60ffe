"""The demo's training cell on a **twin of the stock TensorFlow image**.

The official ``tensorflow/tensorflow`` image is Python 3.11 with ``pip install
tensorflow`` and nothing else (tensorflow/build's runtime Dockerfiles): no tf-keras,
no tensorboard, no mlxtend. The twin is a virtual environment made the same way
(``tensorflow-cpu`` of the kernel's version, nothing else), built here from the
package index once and cached in ``.venv-stock-twin``; it is used as
``Kfnb.python``, so local replicas start as a pod on the stock image would.
It is a twin, not the image: same Python packages, not the same operating system.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import kfnb
from kfnb.backends import BackendError
from kfnb.config import reset_settings, settings
from kfnb.job import Job

REPO = Path(__file__).resolve().parent.parent
TWIN = REPO / ".venv-stock-twin"
TF_VERSION = metadata.version("tensorflow-cpu")
CELL = (
    "metrics = train(epochs=1, batch_size=32, model_dir=tfjob.model_dir,\n"
    "                callbacks=[tfjob.tensorboard()])\n"
)
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def stock_twin() -> Path:
    """The twin's interpreter, built on first use (about a minute from a warm pip cache)."""
    python = TWIN / "bin" / "python"
    ready = TWIN / f".tensorflow-cpu-{TF_VERSION}"
    if not ready.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(TWIN)], check=True)
        install = [str(python), "-m", "pip", "install", "--quiet", f"tensorflow-cpu=={TF_VERSION}"]
        done = subprocess.run(install, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"cannot build the stock-image twin: {done.stderr[-500:]}")
        ready.touch()
    return python


@pytest.fixture
def on_twin(stock_twin: Path) -> Path:
    settings().python = str(stock_twin)
    settings().backend = "local"
    return stock_twin


def train_function() -> object:
    sys.path.insert(0, str(REPO))
    try:
        from model.mnist import train
    finally:
        sys.path.remove(str(REPO))
    return train


def test_the_twin_is_made_like_the_stock_image(stock_twin: Path) -> None:
    probe = "import importlib.util as u; print([m for m in {} if u.find_spec(m)])"
    wanted = ["tensorflow", "keras", "tf_keras", "tensorboard", "mlxtend"]
    done = subprocess.run(
        [str(stock_twin), "-c", probe.format(wanted)], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "['tensorflow', 'keras']"


def test_without_installing_packages_the_demo_cell_cannot_run_there(on_twin: Path) -> None:
    settings().install_packages = False
    with pytest.raises(BackendError, match="tf-keras"):
        kfnb.submit(CELL, workers=2, names={"train": train_function()})


def _run(wheelhouse: str) -> Job:
    job = kfnb.submit(CELL, workers=2, names={"train": train_function()}, wheelhouse=wheelhouse)
    status = job.wait(timeout=1100)
    assert status.phase == "Succeeded", job.logs()
    return job


def _installer_log(job: Job) -> str:
    return (Path(settings().storage) / job.name / "logs" / "kfnb-packages.log").read_text()


def _installed(job: Job) -> Path:
    """The packages cache the job's init container installed into."""
    plan = json.loads((Path(settings().storage) / job.name / "code" / "packages.json").read_text())
    return Path(settings().home) / "packages" / plan["key"]


def test_the_demo_cell_runs_there_with_packages_from_the_index(on_twin: Path) -> None:
    job = _run("off")
    said = _installer_log(job)
    assert "installed" in said and "from the wheelhouse" not in said
    for module in ("tf_keras", "tensorboard", "mlxtend"):
        assert (_installed(job) / module).is_dir()
    job_dir = Path(settings().storage) / job.name
    assert list((job_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert job.latest_model() is not None
    # The next job with the same pins reuses the installed set: nothing downloaded.
    again = _run("off")
    assert "packages already installed" in _installer_log(again)


def test_the_demo_cell_runs_there_from_a_wheelhouse_with_the_index_off(
    on_twin: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kfnb.api import _fill_wheelhouse

    prepared = kfnb.prepare(CELL, workers=2, names={"train": train_function()}, wheelhouse="auto")
    assert prepared.packages is not None and prepared.packages.wheelhouse
    _fill_wheelhouse(prepared.packages)  # the notebook reaches the index; the replicas won't
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # nor pip.conf's find-links
    monkeypatch.setenv("KFNB_HOME", str(tmp_path / "fresh-home"))  # an empty packages cache
    storage = settings().storage
    reset_settings()
    settings().python, settings().backend, settings().storage = str(on_twin), "local", storage
    job = _run("auto")
    said = _installer_log(job)
    assert f"from the wheelhouse {prepared.packages.wheelhouse}" in said
    assert "installed" in said and (_installed(job) / "tf_keras").is_dir()
