"""Serving trained models: a TF Serving compatible server, its clients and cluster manifests.

The server process (``python -m kfnb.serving.server``) is built from small modules,
each importing only those before it: ``codec`` (signatures, JSON <-> tensors),
``loader`` (SavedModel loading), ``versions`` (numbered versions, ``ModelManager``),
``batch`` (one batch: check, merge, call, split), ``model_host`` (the process
TensorFlow runs in), ``batcher`` (micro-batching in the event loop), ``metrics``
(Prometheus), and ``grpc_api`` (TF Serving's gRPC ``PredictionService``, imported
once TensorFlow is loaded).

The kernel side never imports TensorFlow or uvicorn: ``config`` (``ServerConfig``),
``served`` (what ``%serve`` returns and records: ``LocalServer``, ``ClusterServer``),
``local`` (``%serve``'s server processes and their records), ``client``
(``Predictor``), ``feed`` and ``digits`` (what ``PredictionView`` shows),
``predict_cli`` (``kfnb predict``), and for clusters ``manifests``, ``cluster``
and ``kubernetes`` (KServe InferenceService or TF Serving through the API server).
"""

from __future__ import annotations

import re

__all__ = ["READY_PATTERN", "ERROR_PREFIX", "EXIT_MODEL_ERROR", "EXIT_USAGE"]

# The one line a server prints on stdout once it answers predictions, e.g.
# ``kfnb model server: mnist version 1 on http://127.0.0.1:8501``.
READY_PATTERN = re.compile(
    r"^kfnb model server: (?P<model>\S+) version (?P<version>\d+) on (?P<url>http://\S+)$"
)
# Every fatal start-up error is one line on stderr that starts with this.
ERROR_PREFIX = "kfnb model server: error: "
# Exit codes: a missing or corrupt model at start; a usage error or a port in use.
EXIT_MODEL_ERROR = 1
EXIT_USAGE = 2
