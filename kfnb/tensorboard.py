"""A real TensorBoard on a job's events, reachable from the notebook's browser.

Bound to 127.0.0.1 on a free port. Behind JupyterHub the browser cannot reach
that port, but jupyter-server-proxy forwards ``<hub prefix>/proxy/<port>/`` to
it, so that is the link shown there. TensorBoard reads a local directory: a job
whose events are in S3 is read from the kernel's mirror of them, kept current
while TensorBoard runs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kfnb._util import PRIVATE_UMASK, open_private, pid_alive, private_dir

log = logging.getLogger("kfnb.tensorboard")
_MODULE = "tensorboard.main"

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
    from kfnb.backends.supervisor import free_port

    key = str(logdir)
    running = _servers.get(key)
    if running is not None and running.alive():
        return running
    if importlib.util.find_spec("tensorboard") is None:
        raise TensorBoardError("TensorBoard is not installed: pip install tensorboard")
    private_dir(logdir)
    if refresh is not None:
        refresh()
    port = free_port()
    out = open_private(logdir.parent / "tensorboard-server.log")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            _MODULE,
            "--logdir",
            key,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "2",
        ],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        umask=PRIVATE_UMASK,
    )
    out.close()
    log.debug("started TensorBoard process %d on %s, port %d", process.pid, key, port)
    server = TensorBoard(key, port, process.pid, browser_url(port))
    deadline = time.monotonic() + timeout
    while not _answers(server.local_url):
        if process.poll() is not None:
            raise TensorBoardError(
                f"TensorBoard exited with code {process.returncode}: see "
                f"{logdir.parent / 'tensorboard-server.log'}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise TensorBoardError(f"TensorBoard did not answer within {timeout:.0f} s")
        time.sleep(0.2)
    _servers[key] = server
    if refresh is not None:
        threading.Thread(
            target=_keep_fresh, args=(server, refresh), name="kfnb-tensorboard-sync", daemon=True
        ).start()
    return server


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
