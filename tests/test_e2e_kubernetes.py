"""End to end on a REAL cluster: runs only when KFNB_E2E_KUBECONFIG names a kubeconfig
whose context has the Training Operator 1.9 and kfnb's Role (deploy/rbac.yaml).

    KFNB_E2E_KUBECONFIG=~/.kube/config .venv/bin/pytest tests/test_e2e_kubernetes.py
"""

from __future__ import annotations

import os
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
