"""``ServerConfig``: how a model server process is started, without importing the server.

The kernel builds a server's command line from it (``%serve``) without paying
for uvicorn or TensorFlow; the server process parses the same flags back. Each
flag is written once, in the metadata of its field: `to_argv` and `parser` are
both made from the fields, so the two sides cannot drift apart.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_GRPC_PORT", "DEFAULT_MAX_BODY", "DEFAULT_PORT", "ServerConfig"]

DEFAULT_PORT = 8501  # TF Serving's REST port
DEFAULT_GRPC_PORT = 8500  # TF Serving's gRPC port
DEFAULT_MAX_BODY = 16 * 1024 * 1024
MIN_POLL_SECONDS = 0.05


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be more than 0")
    return value


def _flag(*names: str, parse: Callable[[str], Any] = str, help: str, default: Any = MISSING) -> Any:
    """A field that is also a command-line flag: its names (the first is what
    `to_argv` writes; the others are TF Serving's spellings, accepted too), how its
    text is parsed, and its help (``%(default)s`` is the field's default). A field
    without a default is a required flag."""
    return field(default=default, metadata={"flag": {"names": names, "parse": parse, "help": help}})


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server process is started with (``to_argv`` gives its command line)."""

    model_base_path: Path = _flag(
        "--model-base-path",
        "--model_base_path",
        parse=Path,
        help="directory of numbered versions (DIR/1, DIR/2, ...), as TF Serving expects",
    )
    model_name: str = _flag(
        "--model-name",
        "--model_name",
        default="default",
        help="the NAME in /v1/models/NAME (default: %(default)s, as TF Serving)",
    )
    host: str = _flag(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; 0.0.0.0 exposes the model)",
    )
    port: int = _flag(
        "--port",
        "--rest-api-port",
        "--rest_api_port",
        parse=_port,
        default=DEFAULT_PORT,
        help="port to listen on; 0 picks a free one (default: %(default)s)",
    )
    grpc_port: int | None = _flag(  # None: no gRPC (the flag is left out)
        "--grpc-port",
        parse=_port,
        default=None,
        help="also answer TF Serving's gRPC PredictionService on this port (TF Serving uses "
        "8500; 0 picks a free one); needs tensorflow-serving-api",
    )
    allowed_hosts: str | None = _flag(  # None: only the names every server answers
        "--allowed-hosts",
        default=None,
        help="comma-separated Host names answered besides localhost and IP addresses "
        "(a guard against DNS rebinding): NAME, .DOMAIN for the names under it, * for "
        "any; KFNB_ALLOWED_HOSTS adds more. Bound beyond loopback, a cluster's names "
        "(one-label, *.svc, *.svc.cluster.local) are answered too",
    )
    request_timeout_seconds: float = _flag(
        "--request-timeout-seconds",
        parse=_positive_float,
        default=30.0,
        help="a prediction the model has not answered within this gets 504, and the "
        "server reports itself unready while the model process stays in that call "
        "(default: %(default)s, as TF Serving's --rest_api_timeout_in_ms)",
    )
    listen_fd: int | None = _flag(  # None: the server binds --host/--port itself
        "--listen-fd",
        parse=_count,
        default=None,
        help="serve on this inherited listening socket instead of binding --host/--port "
        "(how %%serve hands over the port it bound, so no other process can take it meanwhile)",
    )
    max_body_bytes: int = _flag(
        "--max-body-bytes",
        parse=_positive,
        default=DEFAULT_MAX_BODY,
        help="larger request bodies get 413 (default: %(default)s)",
    )
    max_batch_size: int = _flag(
        "--max-batch-size",
        "--max_batch_size",
        parse=_positive,
        default=256,
        help="most instances merged into one model call (default: %(default)s)",
    )
    poll_seconds: float = _flag(
        "--poll-seconds",
        "--file-system-poll-wait-seconds",
        "--file_system_poll_wait_seconds",
        parse=float,
        default=1.0,
        help="how often to look for new versions (default: %(default)s)",
    )
    max_versions: int = _flag(
        "--max-versions",
        parse=_positive,
        default=2,
        help="newest versions kept loaded, like TF Serving's latest{num_versions} "
        "(default: %(default)s)",
    )
    intra_op_threads: int = _flag(
        "--intra-op-threads",
        "--tensorflow_intra_op_parallelism",
        parse=_count,
        default=0,
        help="threads for one TensorFlow op (default: 0, one less than the cores, leaving one "
        "to the HTTP side)",
    )
    inter_op_threads: int = _flag(
        "--inter-op-threads",
        "--tensorflow_inter_op_parallelism",
        parse=_count,
        default=0,
        help="threads running independent TensorFlow ops (default: 0, up to 2)",
    )

    def to_argv(self, python: str = sys.executable) -> list[str]:
        """The command that starts this server (what ``%serve`` runs)."""
        argv = [python, "-m", "kfnb.serving.server"]
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                argv += [f.metadata["flag"]["names"][0], str(value)]
        return argv

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        """The server's command-line parser, made from the fields."""
        parser = argparse.ArgumentParser(
            prog="python -m kfnb.serving.server",
            description="Serve numbered SavedModel versions with TF Serving's REST API.",
        )
        for f in fields(cls):
            flag = f.metadata["flag"]
            required = f.default is MISSING
            default: Any = None if required else f.default
            parser.add_argument(
                *flag["names"],
                dest=f.name,
                type=flag["parse"],
                required=required,
                default=default,
                help=flag["help"],
            )
        return parser

    @classmethod
    def from_argv(cls, argv: Sequence[str] | None = None) -> ServerConfig:
        """The config the server process was started with (``argv`` without the program)."""
        args = vars(cls.parser().parse_args(argv))
        args["model_base_path"] = args["model_base_path"].expanduser().absolute()
        args["poll_seconds"] = max(args["poll_seconds"], MIN_POLL_SECONDS)
        return cls(**args)
