"""End to end on a REAL cluster: runs only when KFNB_E2E_KUBECONFIG names a kubeconfig
whose context has the Training Operator 1.9 and kfnb's Role (deploy/rbac.yaml).

    KFNB_E2E_KUBECONFIG=~/.kube/config .venv/bin/pytest tests/test_e2e_kubernetes.py

The MNIST notebook also runs there when KFNB_E2E_STORAGE names an s3:// store the
cluster's pods and this machine both reach (keys in AWS_ACCESS_KEY_ID/..., and the
Secret named by KFNB_S3_SECRET in the namespace), since the notebook serves the
model the cluster trained.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

KUBECONFIG = os.environ.get("KFNB_E2E_KUBECONFIG", "")
pytestmark = pytest.mark.skipif(not KUBECONFIG, reason="KFNB_E2E_KUBECONFIG is not set")


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(Path(KUBECONFIG).expanduser()))


def test_two_worker_job_on_a_real_cluster(cluster: None, shell: Any) -> None:
    cell = "import tensorflow as tf\nprint('workers', tfjob.num_workers, tf.__version__)\n"
    job = shell.run_cell_magic("tfjob", "--backend kubernetes --workers 2", cell)
    try:
        assert job.wait(timeout=900).phase == "Succeeded"
        assert "workers 2" in job.logs("worker-0")
    finally:
        job.backend.delete(job.name, purge=True)


@pytest.mark.skipif(
    not os.environ.get("KFNB_E2E_STORAGE"), reason="KFNB_E2E_STORAGE (s3://...) is not set"
)
def test_mnist_notebook_on_a_real_cluster(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "KUBECONFIG": str(Path(KUBECONFIG).expanduser()),
        "KFNB_BACKEND": "kubernetes",
        "KFNB_STORAGE": os.environ["KFNB_E2E_STORAGE"],
        "KFNB_HOME": str(tmp_path / "home"),
    }
    run = subprocess.run(
        [sys.executable, "notebooks/run_demo.py", "notebooks/mnist.ipynb", "-p", "epochs=2"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "(kubernetes): Succeeded" in run.stdout
    assert "Your model says the above number is..." in run.stdout


@pytest.mark.skipif(
    not os.environ.get("KFNB_E2E_ARGO"), reason="KFNB_E2E_ARGO=1 (Argo Workflows installed) unset"
)
def test_pipeline_as_an_argo_workflow_on_a_real_cluster(cluster: None, shell: Any) -> None:
    """Two trivial steps: a one-worker TFJob, then a %%step whose output gates a third."""
    shell.run_cell_magic("tfjob", "--step train --pipeline e2e --record-only", "print('train')\n")
    shell.run_cell_magic(
        "step", "evaluate --pipeline e2e --after train --record-only", "tfjob.output('ok', 1)\n"
    )
    shell.run_cell_magic(
        "step", "publish --pipeline e2e --when 'evaluate.ok == 1' --record-only", "print(1)\n"
    )
    run = shell.run_line_magic("kfnb", "pipeline run e2e --backend kubernetes")
    try:
        status = run.wait(timeout=1200)
        assert status.steps["evaluate"].outputs == {"ok": 1}
        assert status.steps["publish"].phase == "Succeeded"
    finally:
        run.delete()
