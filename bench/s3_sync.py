"""Training wall time of the local 2-worker MNIST job with S3 sync on vs off (target <= 1.05).

Both go through ``%%tfjob --workers 2 --wait``; "on" adds ``--storage s3://...``,
so the replicas upload logs and events every few seconds and the model at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import alternate, private_home, report, shell
from s3_common import start_s3

HERE = Path(__file__).resolve().parent


def main(runs: int = 3, epochs: int = 3) -> float:
    private_home()
    server = start_s3()
    from kfnb.storage import open_store

    open_store("s3://bench-sync").check()
    ip = shell()
    ip.run_cell(f"import sys; sys.path.insert(0, {str(HERE)!r}); from workload import mnist")
    counter = iter(range(1000))
    cell = f"mnist({epochs}, tfjob.model_dir)\n"
    include = f"--include {HERE.parent / 'model'}"

    def run(storage: str) -> None:
        line = f"--name sync-{next(counter)} --workers 2 --wait {include} {storage}"
        job = ip.run_cell_magic("tfjob", line, cell)
        assert job.status().phase == "Succeeded"
        assert not job.status().not_uploaded, job.status().message

    times = alternate(runs, **{
        "S3 sync on": lambda: run("--storage s3://bench-sync/jobs"),
        "S3 sync off (local dir)": lambda: run(""),
    })
    ratio = report(f"2-worker MNIST, {epochs} epochs, S3 sync on vs off", times,
                   "S3 sync off (local dir)", 1.05)
    server.stop()
    return ratio


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
