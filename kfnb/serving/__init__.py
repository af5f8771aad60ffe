"""Serving trained models: a local TF Serving compatible REST server.

``kfnb.serving.server`` is the server process (``python -m kfnb.serving.server``).
What it serves is in four small modules, each importing only those before it:

- ``kfnb.serving.codec``: signatures and the JSON <-> tensor codec;
- ``kfnb.serving.loader``: SavedModel loading (``LoadedModel``);
- ``kfnb.serving.versions``: model versions on disk and the ``ModelManager``;
- ``kfnb.serving.batcher``: the micro-batching worker (uses codec and loader only).

Importing this package is cheap: it imports neither TensorFlow nor aiohttp, so
the kernel (``%serve``, the ``Predictor`` client, widgets) can use the names
below without paying for the server's dependencies.
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
