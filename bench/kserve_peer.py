"""The peer for bench/serving.py: KServe's own Python ``ModelServer`` on the same SavedModel.

A custom ``kserve.Model`` (what KServe's docs show for a Python predictor) that
answers TF Serving's v1 ``instances`` with the same ``classes``/``predictions``
rows as kfnb's server. Run with the Python of an environment that has
``kserve`` and TensorFlow (``make bench-env`` builds ``.venv-kserve``):

    .venv-kserve/bin/python bench/kserve_peer.py MODEL_DIR PORT WORKERS

KServe is set up in its fastest configuration for this load: no gRPC server, no
per-request latency log lines, no access log.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

# KServe reads its flags from sys.argv when imported. Its fastest set-up here logs
# nothing per request: no latency lines, and with several workers (which configure
# logging themselves, from --log_config_file) uvicorn's access log at WARNING only.
_QUIET = Path(tempfile.gettempdir()) / "kfnb-bench-kserve-logging.json"
_QUIET.write_text(
    json.dumps(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {
                name: {"level": "WARNING"}
                for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.access")
            },
        }
    )
)
sys.argv[1:] = [
    *sys.argv[1:4],
    "--configure_logging",
    "false",
    "--enable_latency_logging",
    "false",
    "--log_config_file",
    str(_QUIET),
]

import kserve  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


class Mnist(kserve.Model):  # type: ignore[misc]
    """Module level and picklable: with several workers KServe pickles its models into
    spawned processes, so each worker loads the SavedModel itself on unpickling."""

    def __init__(self, path: str) -> None:
        super().__init__("mnist")
        self.path = path
        self.signature: Any = None

    def load(self) -> bool:
        self.signature = tf.saved_model.load(self.path).signatures["serving_default"]
        self.ready = True
        return True

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "signature": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
        images = np.asarray(payload["instances"], dtype=np.float32)
        outputs = self.signature(x=tf.constant(images))
        classes = outputs["classes"].numpy().tolist()
        probabilities = outputs["predictions"].numpy().tolist()
        return {
            "predictions": [
                {"classes": c, "predictions": p}
                for c, p in zip(classes, probabilities, strict=True)
            ]
        }


def main() -> None:
    path, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = Mnist(path)
    model.load()
    print(f"kserve peer on http://127.0.0.1:{port}", flush=True)
    kserve.ModelServer(
        http_port=port,
        workers=workers,
        enable_grpc=False,
        enable_latency_logging=False,
        access_log_format=None,
    ).start([model])


if __name__ == "__main__":
    main()
