"""Two-worker MultiWorkerMirroredStrategy MNIST: through kfnb vs started by hand with TF_CONFIG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from common import alternate, private_home, report, shell

HERE = Path(__file__).resolve().parent


def tf_config(ports: list[int], index: int) -> str:
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def by_hand(args: list[str], workers: int = 2) -> list[subprocess.Popen[bytes]]:
    """What a user does without kfnb: one process per worker, TF_CONFIG set for each."""
    from kfnb.backends.supervisor import free_ports

    ports = free_ports(workers)
    return [
        subprocess.Popen(
            [sys.executable, str(HERE / "workload.py"), *args],
            env={**os.environ, "TF_CONFIG": tf_config(ports, i), "TF_USE_LEGACY_KERAS": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]


def main(runs: int = 3, epochs: int = 3) -> float:
    private_home()
    ip = shell()
    ip.run_cell(f"import sys; sys.path.insert(0, {str(HERE)!r}); from workload import mnist")
    counter = iter(range(1000))

    def through_kfnb() -> None:
        line = f"--name mw-{next(counter)} --workers 2 --wait --include {HERE.parent / 'model'}"
        ip.run_cell_magic("tfjob", line,
                          f"mnist({epochs}, tfjob.model_dir)\n")

    def started_by_hand() -> None:
        for process in by_hand(["mnist", str(epochs)]):
            assert process.wait() == 0

    times = alternate(runs, **{"kfnb %%tfjob --workers 2": through_kfnb,
                               "by hand with TF_CONFIG": started_by_hand})
    return report(f"2-worker MWMS MNIST, {epochs} epochs", times, "by hand with TF_CONFIG", 1.1)


if __name__ == "__main__":
    main()
