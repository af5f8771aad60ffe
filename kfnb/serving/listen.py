"""The model server's listening socket: bound here, or adopted from the process that bound it.

``%serve`` binds the port in the kernel and hands the socket to the server process
(``--listen-fd``), so the port it picked cannot be taken by another process between
the pick and the bind; the server binds ``--host/--port`` itself when started alone.
Standard library only: the kernel imports this without the serving extra.
"""

from __future__ import annotations

import errno
import socket

from kfnb.serving import EXIT_USAGE

__all__ = ["StartError", "adopt", "bind"]


class StartError(Exception):
    """The server cannot start; the message is the one line to print."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, opened before TensorFlow is imported so a busy port fails fast.

    SO_REUSEADDR lets a restarted server take its port back from TIME_WAIT; it does
    not let two servers listen on one port (that would need SO_REUSEPORT).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartError(f"cannot resolve --host {host} ({exc.strerror})", EXIT_USAGE) from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            message = (
                f"port {port} on {host} is already in use (another model server?): "
                "pick another with --port, or --port 0 for a free one"
            )
        elif exc.errno == errno.EACCES:
            message = f"no permission to listen on port {port}: use a port above 1023"
        elif exc.errno == errno.EADDRNOTAVAIL:
            message = f"{host} is not an address of this machine: use --host 127.0.0.1"
        else:
            message = f"cannot listen on {host}:{port}: {exc.strerror}"
        raise StartError(message, EXIT_USAGE) from exc
    sock.setblocking(False)
    return sock


def adopt(fd: int) -> socket.socket:
    """The listening socket inherited as ``fd`` (``--listen-fd``)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        message = f"--listen-fd {fd} is not an open socket: {exc.strerror}"
        raise StartError(message, EXIT_USAGE) from exc
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise StartError(f"--listen-fd {fd} is not a listening socket", EXIT_USAGE)
    sock.setblocking(False)
    return sock
