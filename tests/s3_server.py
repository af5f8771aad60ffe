"""A real S3 server on 127.0.0.1 (moto's) and a fault-injecting proxy in front of it.

moto answers the S3 REST API over real HTTP, but it accepts any keys and lets
anyone create buckets. ``FaultProxy`` is a fake, named so: it forwards requests
to moto unchanged, except those a rule picks, which it answers with S3's own
XML error replies (``SignatureDoesNotMatch``, ``AccessDenied``, ``SlowDown``...),
byte for byte in the form S3 sends them, so the client's error path is real.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# (method, path) -> (HTTP status, S3 error code, message), or None to forward.
Rule = Callable[[str, str], "tuple[int, str, str] | None"]


def use_endpoint(monkeypatch: Any, port: int, access: str, secret: str, **env: str) -> None:
    """Point kfnb's settings at the S3 server on ``port``, with these keys (and ``env``)."""
    from kfnb.config import reset_settings, settings

    monkeypatch.setenv("S3_ENDPOINT", f"127.0.0.1:{port}")
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_settings()  # Kfnb.s3_endpoint reads S3_ENDPOINT when created
    settings()


def start_moto(port: int) -> object:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def s3_error_xml(code: str, message: str, resource: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>FAKE0PROXY0ID</RequestId></Error>"
    ).encode()


@dataclass
class FaultProxy:
    """Forwards to moto at ``upstream_port``; ``rules`` decide which requests fail."""

    upstream_port: int
    rules: list[Rule] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "METHOD path" of each injected fault
    forwarded: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                for rule in proxy.rules:
                    fault = rule(self.command, self.path)
                    if fault is not None:
                        proxy.failed.append(f"{self.command} {self.path}")
                        status, code, message = fault
                        reply = s3_error_xml(code, message, self.path.split("?")[0])
                        self.send_response(status)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(reply)))
                        self.end_headers()
                        if self.command != "HEAD":
                            self.wfile.write(reply)
                        return
                proxy.forwarded.append(f"{self.command} {self.path}")
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                head = self.command == "HEAD"  # its Content-Length is the object's: keep it
                skip = {"connection", "transfer-encoding"} | (set() if head else {"content-length"})
                for key, value in response.getheaders():
                    if key.lower() not in skip:
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
