"""A real TensorBoard on a job's events, reachable from the notebook's browser.

Bound to 127.0.0.1 on a free port, which TensorBoard picks as it binds (``--port
0``, read back from its serving line), so no other process can take it between
a pick and the bind. TensorBoard 2.21 answers any ``Host`` (it has ``--host`` and
``--bind_all`` for the address it listens on, nothing that checks the name it is
reached by), so a web page could read it by DNS rebinding: kfnb runs it as
``python -m kfnb.tensorboard``, TensorBoard's own program with its WSGI app
behind ``kfnb.hostcheck`` (403 for other names). Behind JupyterHub the browser's
requests come through jupyter-server-proxy carrying the hub's name, and the
browser is not on this machine, so there every name is answered.

Behind JupyterHub the browser cannot reach that port, but jupyter-server-proxy
forwards ``<hub prefix>/proxy/<port>/`` to it, so that is the link shown there.
TensorBoard reads a local directory: a job whose events are in S3 is read from
the kernel's mirror of them, kept current while TensorBoard runs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfnb._util import PRIVATE_UMASK, open_private, pid_alive, private_dir
from kfnb.hostcheck import ENV, HostPolicy

log = logging.getLogger("kfnb.tensorboard")
_MODULE = "kfnb.tensorboard"
# TensorBoard's line once it listens: "TensorBoard 2.21.0 at http://127.0.0.1:PORT/ (...)".
_SERVING = re.compile(r"TensorBoard \S+ at http://[^\s/]+:(?P<port>\d+)/")

SYNC_SECONDS = 2.0  # how often a remote store's events are fetched for TensorBoard
_servers: dict[str, TensorBoard] = {}  # by logdir, for this kernel


class TensorBoardError(RuntimeError):
    pass


@dataclass(frozen=True)
class TensorBoard:
    logdir: str
    port: int
    pid: int
    url: str  # what the user's browser opens

    @property
    def local_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def running(self) -> bool:
        """Whether its process runs (it may not answer yet)."""
        return pid_alive(self.pid, _MODULE)

    def alive(self) -> bool:
        return self.running() and _answers(self.local_url)

    def stop(self) -> None:
        """SIGTERM, if its pid is still this TensorBoard (not a process that reused the pid)."""
        if self.running():
            try:
                os.kill(self.pid, 15)
            except ProcessLookupError:
                pass
        _servers.pop(self.logdir, None)


def browser_url(port: int) -> str:
    """The link for the user's browser: through jupyter-server-proxy when on JupyterHub."""
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
    if prefix and importlib.util.find_spec("jupyter_server_proxy") is not None:
        return f"{prefix.rstrip('/')}/proxy/{port}/"
    return f"http://127.0.0.1:{port}/"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_tensorboard(
    logdir: Path, timeout: float = 90, refresh: Callable[[], object] | None = None
) -> TensorBoard:
    """Start TensorBoard on ``logdir`` (or return the one already serving it).

    ``refresh`` brings ``logdir`` up to date (a mirror of a job's events in S3):
    it is called once before TensorBoard starts, then every ``SYNC_SECONDS`` in a
    background thread for as long as this kernel's TensorBoard runs, so runs still
    training show their new points.
    """
    key = str(logdir)
    running = _servers.get(key)
    if running is not None and running.alive():
        return running
    if importlib.util.find_spec("tensorboard") is None:
        raise TensorBoardError("TensorBoard is not installed: pip install tensorboard")
    private_dir(logdir)
    if refresh is not None:
        refresh()
    log_path = logdir.parent / "tensorboard-server.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    out = open_private(log_path)
    process = subprocess.Popen(
        [sys.executable, "-m", _MODULE, "--logdir", key, "--host", "127.0.0.1", "--port", "0",
         "--reload_interval", "2"],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        umask=PRIVATE_UMASK,
        env={**os.environ, ENV: ",".join(_allowed_names())},
    )  # fmt: skip
    out.close()
    log.debug("started TensorBoard process %d on %s", process.pid, key)
    deadline = time.monotonic() + timeout
    server: TensorBoard | None = None
    while server is None or not _answers(server.local_url):
        if server is None:
            port = _serving_port(log_path, offset)
            if port is not None:
                server = TensorBoard(key, port, process.pid, browser_url(port))
        if process.poll() is not None:
            raise TensorBoardError(
                f"TensorBoard exited with code {process.returncode}: see {log_path}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise TensorBoardError(f"TensorBoard did not answer within {timeout:.0f} s")
        time.sleep(0.2)
    log.debug("TensorBoard process %d serves %s on port %d", process.pid, key, server.port)
    _servers[key] = server
    if refresh is not None:
        threading.Thread(
            target=_keep_fresh, args=(server, refresh), name="kfnb-tensorboard-sync", daemon=True
        ).start()
    return server


def _serving_port(log_path: Path, offset: int) -> int | None:
    """The port in TensorBoard's serving line, once it has written it."""
    try:
        with open(log_path, "rb") as log_file:
            log_file.seek(offset)
            text = log_file.read().decode(errors="replace")
    except OSError:
        return None
    found = _SERVING.search(text)
    return int(found["port"]) if found else None


def _allowed_names() -> list[str]:
    """Host names TensorBoard answers besides localhost and IP addresses: the configured
    ones, and any name behind JupyterHub's proxy (it forwards the hub's name; the
    browser is on another machine, out of a rebinding page's reach)."""
    from kfnb.config import settings

    names = list(settings().allowed_hosts)
    if browser_url(0) != "http://127.0.0.1:0/":
        names.append("*")
    return names


def _keep_fresh(server: TensorBoard, refresh: Callable[[], object]) -> None:
    """Refresh the logdir until this TensorBoard is stopped or exits."""
    while True:
        time.sleep(SYNC_SECONDS)
        if _servers.get(server.logdir) is not server or not server.running():
            return
        try:
            refresh()
        except Exception as exc:  # a network blip: the next round tries again
            log.debug("refreshing %s failed: %s", server.logdir, exc)


def stop_tensorboard(logdir: Path) -> bool:
    """Stop the TensorBoard this kernel started on ``logdir``; False if there was none."""
    server = _servers.get(str(logdir))
    if server is None:
        return False
    server.stop()
    return True


def _guarded(app: Callable[..., Any], policy: HostPolicy) -> Callable[..., Any]:
    """TensorBoard's WSGI app, answering 403 to a ``Host`` the policy refuses."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST")
        if policy.allows(host):
            result: Iterable[bytes] = app(environ, start_response)
            return result
        body = json.dumps({"error": policy.refusal(host or "")}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response("403 Forbidden", headers)
        return [body]

    return guarded


def main() -> None:
    """``python -m kfnb.tensorboard FLAGS``: TensorBoard's own program (what
    ``tensorboard.main`` runs, with the same flags) behind the Host check."""
    from absl import app
    from tensorboard import default, main_lib, program  # type: ignore[import-untyped]
    from tensorboard.plugins import base_plugin  # type: ignore[import-untyped]

    policy = HostPolicy.for_server("127.0.0.1")  # configured names: KFNB_ALLOWED_HOSTS

    class GuardedServer(program.WerkzeugServer):  # type: ignore[misc]
        def __init__(self, wsgi_app: Any, flags: Any) -> None:
            super().__init__(_guarded(wsgi_app, policy), flags)

    main_lib.global_init()
    board = program.TensorBoard(plugins=default.get_plugins(), server_class=GuardedServer)
    try:
        app.run(board.main, flags_parser=board.configure)
    except base_plugin.FlagsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
