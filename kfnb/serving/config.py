"""``ServerConfig``: how a model server process is started, without importing the server.

The kernel builds a server's command line from it (``%serve``) without paying
for uvicorn or TensorFlow; the server process parses the same flags back.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_GRPC_PORT", "DEFAULT_MAX_BODY", "DEFAULT_PORT", "ServerConfig"]

DEFAULT_PORT = 8501  # TF Serving's REST port
DEFAULT_GRPC_PORT = 8500  # TF Serving's gRPC port
DEFAULT_MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server process is started with (``to_argv`` gives its command line)."""

    model_base_path: Path
    model_name: str = "default"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    grpc_port: int | None = None  # TF Serving's PredictionService too; 0 picks a free port
    max_body_bytes: int = DEFAULT_MAX_BODY
    max_batch_size: int = 256
    poll_seconds: float = 1.0
    max_versions: int = 2
    intra_op_threads: int = 0  # 0: one less than the cores (see server.thread_counts)
    inter_op_threads: int = 0  # 0: up to 2

    def to_argv(self, python: str = sys.executable) -> list[str]:
        """The command that starts this server (what ``%serve`` runs)."""
        return [
            python,
            "-m",
            "kfnb.serving.server",
            "--model-base-path",
            str(self.model_base_path),
            "--model-name",
            self.model_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            *(["--grpc-port", str(self.grpc_port)] if self.grpc_port is not None else []),
            "--max-body-bytes",
            str(self.max_body_bytes),
            "--max-batch-size",
            str(self.max_batch_size),
            "--poll-seconds",
            str(self.poll_seconds),
            "--max-versions",
            str(self.max_versions),
            "--intra-op-threads",
            str(self.intra_op_threads),
            "--inter-op-threads",
            str(self.inter_op_threads),
        ]
