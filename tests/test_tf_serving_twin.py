"""The TF Serving TWIN: does the TF Serving release kfnb picks load what the kernel exports?

No ``tensorflow/serving`` image runs here. Its twin is a virtual environment with the
TensorFlow wheel of the version that image embeds (``tensorflow-cpu`` of
`serving_release`'s tag), built in ``.venv-tfserving-twin`` on first use and kept
between runs. The demo's SavedModel is exported with the kernel's TensorFlow (as a job
exports it), then loaded and called by the twin's TensorFlow in a subprocess, and its
graph's ops and attributes are checked against the twin's op registry. A twin, not TF
Serving itself: TF Serving links the same TensorFlow core ops and kernels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kfnb.serving.compat import (
    check_ops,
    graph_ops,
    image_tf_version,
    load_registry,
    serving_release,
)

ROOT = Path(__file__).resolve().parents[1]
TWIN = ROOT / ".venv-tfserving-twin"
COMPAT = ROOT / "kfnb" / "serving" / "compat.py"
# pip's words when the package index cannot be reached (the only reason to skip).
UNREACHABLE = ("NewConnectionError", "Temporary failure in name resolution",
               "Network is unreachable", "Max retries exceeded", "ConnectTimeout")  # fmt: skip


def _kernel_tf() -> str:
    from importlib.metadata import version

    return version("tensorflow-cpu") if _has("tensorflow-cpu") else version("tensorflow")


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
    except PackageNotFoundError:
        return False
    return True


def _twin_version(python: Path) -> str | None:
    if not python.exists():
        return None
    code = "from importlib.metadata import version; print(version('tensorflow-cpu'))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


@pytest.fixture(scope="session")
def twin_python() -> Path:
    """The twin's Python, built once with ``tensorflow-cpu`` of the chosen release."""
    pytest.importorskip("tensorflow")
    tag = serving_release(_kernel_tf()).tag
    minor = ".".join(tag.split(".")[:2])
    python = TWIN / "bin" / "python"
    if (_twin_version(python) or "").startswith(minor + "."):
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", TWIN], check=True)
    pip = [python, "-m", "pip", "install", "--quiet", f"tensorflow-cpu=={minor}.*"]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        if any(word in done.stderr for word in UNREACHABLE):
            pytest.skip(f"the package index is unreachable, so no TF {minor} twin: {pip}")
        pytest.fail(f"building the TF Serving twin failed: {done.stderr[-2000:]}")
    return python


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, np.ndarray]:
    """The demo's SavedModel, exported with the kernel's TensorFlow as a job exports it,
    with test images and the kernel's own answers for them."""
    pytest.importorskip("tensorflow")
    sys.path.insert(0, str(ROOT))
    from model.mnist import build_model, export_serving

    path = tmp_path_factory.mktemp("exported") / "model" / "1"
    model = build_model()
    export_serving(model, str(path))
    images = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    return path, images, np.asarray(model(images, training=False))


TWIN_CALL = """
import json, sys
import numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
out = model.signatures["serving_default"](x=tf.constant(images))
print(json.dumps({"tf": tf.__version__, "classes": out["classes"].numpy().tolist(),
                  "predictions": out["predictions"].numpy().tolist()}))
"""


def test_the_chosen_release_loads_and_answers_in_the_twin(
    twin_python: Path, exported: tuple[Path, Any, np.ndarray], tmp_path: Path
) -> None:
    path, images, expected = exported
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run(
        [twin_python, "-c", TWIN_CALL, path, tmp_path / "images.npy"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["tf"].startswith(serving_release(_kernel_tf()).tag.rsplit(".", 1)[0])
    np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-4, atol=1e-6)
    assert answer["classes"] == expected.argmax(axis=1).tolist()


def _twin_registry(twin_python: Path) -> dict[str, set[str]]:
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('compat', {str(COMPAT)!r})\n"
        "compat = sys.modules['compat'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(compat)\n"
        "print(json.dumps({k: sorted(v) for k, v in compat.registered_ops().items()}))\n"
    )
    done = subprocess.run([twin_python, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {op: set(attrs) for op, attrs in json.loads(done.stdout.splitlines()[-1]).items()}


def test_graph_ops_are_in_the_twins_registry_and_kfnb_ships_that_registry(
    twin_python: Path, exported: tuple[Path, Any, np.ndarray]
) -> None:
    path, _, _ = exported
    ops = graph_ops((path / "saved_model.pb").read_bytes())
    # What 2.6 lacks is there: the check has something to check.
    assert "DisableCopyOnRead" in ops and "debug_name" in ops["VarHandleOp"]
    twin = _twin_registry(twin_python)
    assert check_ops(ops, twin) == []
    # The registry %serve --dry-run checks against is the twin's, as recorded.
    assert load_registry(serving_release(_kernel_tf()).tag) == twin


def test_check_ops_names_what_an_older_registry_lacks(
    exported: tuple[Path, Any, np.ndarray],
) -> None:
    path, _, _ = exported
    ops = graph_ops((path / "saved_model.pb").read_bytes())
    registry = load_registry("2.20.0")
    assert registry is not None
    # A registry without what TF 2.6 lacks (DisableCopyOnRead; VarHandleOp's debug_name).
    older = {op: set(attrs) for op, attrs in registry.items() if op != "DisableCopyOnRead"}
    older["VarHandleOp"] -= {"debug_name"}
    assert check_ops(ops, older) == ["op DisableCopyOnRead", "attribute debug_name of VarHandleOp"]


@pytest.mark.parametrize(
    ("tf_version", "tag", "forward"),
    [
        ("2.21.0", "2.20.0", True),  # no tensorflow/serving 2.21: the newest, checked
        ("2.20.1", "2.20.0", False),
        ("2.19.1", "2.19.0", False),
        ("2.15.0", "2.18.0", False),  # newer TensorFlow loads older exports
        (None, "2.20.0", False),
    ],
)
def test_one_rule_picks_the_release(tf_version: str | None, tag: str, forward: bool) -> None:
    release = serving_release(tf_version)
    assert (release.tag, release.forward) == (tag, forward)
    assert release.image(gpus=1) == f"tensorflow/serving:{tag}-gpu"
    assert release.why


def test_image_tf_version() -> None:
    assert image_tf_version("tensorflow/tensorflow:2.21.0-gpu") == "2.21.0"
    assert image_tf_version("docker.io/tensorflow/tensorflow:2.19.1") == "2.19.1"
    assert image_tf_version("tensorflow/tensorflow:latest") is None
    assert image_tf_version("example.com/custom:2.21.0") is None
