"""A 50 MB SavedModel up and down: kfnb's S3 store vs the plain minio client (mc's peer).

Throughput ratio = kfnb's MB/s / plain minio's MB/s, both timed in this run,
interleaved, against the same S3 server (target >= 0.9).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from common import alternate, private_home
from s3_common import start_s3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MB = 1024 * 1024


def fake_saved_model(root: Path, size_mb: int = 50) -> int:
    """A SavedModel's layout and sizes: a graph, a variables shard and its index."""
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(os.urandom(1 * MB))
    shard = root / "variables" / "variables.data-00000-of-00001"
    shard.write_bytes(os.urandom((size_mb - 1) * MB))
    (root / "variables" / "variables.index").write_bytes(os.urandom(4096))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main(runs: int = 5) -> tuple[float, float]:
    private_home()
    server = start_s3()
    from minio import Minio

    from kfnb.storage import open_store

    work = Path(tempfile.mkdtemp(prefix="kfnb-bench-s3-"))
    model = work / "model"
    total = fake_saved_model(model)
    store = open_store("s3://bench-transfer/models")
    store.check()
    plain = Minio(os.environ["S3_ENDPOINT"], "bench", "bench-secret", secure=False,
                  region="us-east-1")
    files = sorted(p for p in model.rglob("*") if p.is_file())

    def kfnb_up() -> None:
        store.upload_dir(model, "kfnb/1")

    def plain_up() -> None:
        for path in files:
            key = f"models/plain/1/{path.relative_to(model).as_posix()}"
            plain.fput_object("bench-transfer", key, str(path))

    def kfnb_down() -> None:
        target = work / "down-kfnb"
        shutil.rmtree(target, ignore_errors=True)
        store.download_dir("kfnb/1", target)

    def plain_down() -> None:
        target = work / "down-plain"
        shutil.rmtree(target, ignore_errors=True)
        for path in files:
            key = f"models/plain/1/{path.relative_to(model).as_posix()}"
            plain.fget_object("bench-transfer", key, str(target / path.relative_to(model)))

    ratios = []
    for direction, ours, theirs in (("upload", kfnb_up, plain_up),
                                     ("download", kfnb_down, plain_down)):
        times = alternate(runs, **{"kfnb S3Store": ours, "plain minio": theirs})
        medians = {name: statistics.median(values) for name, values in times.items()}
        print(f"\n== {direction} of a {total / MB:.0f} MB SavedModel ({runs} runs each)")
        for name, values in times.items():
            rate = total / MB / medians[name]
            shown = ", ".join(f"{v:.3f}" for v in values)
            print(f"  {name:<14} median {medians[name]:.3f} s = {rate:7.1f} MB/s   [{shown}]")
        ratio = medians["plain minio"] / medians["kfnb S3Store"]
        verdict = "  (ok)" if ratio >= 0.9 else "  (UNDER 0.9)"
        print(f"  throughput ratio kfnb/plain: {ratio:.3f}{verdict}")
        ratios.append(ratio)
    server.stop()
    shutil.rmtree(work, ignore_errors=True)
    return ratios[0], ratios[1]


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
