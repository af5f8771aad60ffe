"""Run every benchmark; each prints its ratio against a baseline measured in the same run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import failure_detection  # noqa: E402
import kube_backend  # noqa: E402
import launch_overhead  # noqa: E402
import load_ext  # noqa: E402
import multiworker  # noqa: E402
import provisioning  # noqa: E402
import s3_sync  # noqa: E402
import s3_transfer  # noqa: E402
import serving  # noqa: E402
import sweep_overhead  # noqa: E402
import widget  # noqa: E402

if __name__ == "__main__":
    load_ext.main()
    launch_overhead.main()
    multiworker.main()
    failure_detection.main()
    widget.main()
    serving.main()
    s3_transfer.main()
    s3_sync.main()
    kube_backend.main()
    provisioning.main()
    sweep_overhead.main()
