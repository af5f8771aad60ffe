"""An S3 server for the storage benchmarks: moto's, on 127.0.0.1, in this process."""

from __future__ import annotations

import logging
import os
from typing import Any


def start_s3() -> Any:
    """Start moto and point kfnb's S3 settings (the environment) at it."""
    from moto.server import ThreadedMotoServer

    from kfnb.backends.supervisor import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        S3_ENDPOINT=f"127.0.0.1:{port}",
        S3_USE_HTTPS="0",
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
    )
    return server
