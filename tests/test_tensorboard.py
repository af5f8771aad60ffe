"""%kfnb tensorboard starts a real TensorBoard on the job's events."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from kfnb.tensorboard import TensorBoard, browser_url
from tests.test_metrics import event, scalar_value, write_records

pytest.importorskip("tensorboard")


def test_link_goes_through_jupyter_server_proxy_on_jupyterhub(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    assert browser_url(6123) == "http://127.0.0.1:6123/"
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    assert browser_url(6123) == "/user/alice/proxy/6123/"


def test_kfnb_tensorboard_serves_the_jobs_runs(
    shell: InteractiveShell, kfnb_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_cell_magic("tfjob", "--name tb --wait", "print('trained')\n")
    logdir = kfnb_home / "jobs" / "tb" / "tensorboard"
    for run in ("train", "validation"):
        write_records(logdir / run / "events.out.tfevents.1.test",
                      [event(step, scalar_value("epoch_loss", 1.0 / (step + 1)))
                       for step in range(3)])
    shell.run_line_magic("kfnb", "tensorboard tb")
    url = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert url.startswith("http://127.0.0.1:")
    try:
        with urllib.request.urlopen(url + "data/runs", timeout=10) as response:
            runs = json.loads(response.read())
        assert {"train", "validation"} <= set(runs)
        # A page whose name was rebound to 127.0.0.1 sends its own name: refused.
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        for host, expected in (("attacker.example", 403), (f"localhost:{port}", 200)):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/data/runs", headers={"Host": host})
            answer = connection.getresponse()
            text = answer.read().decode()
            connection.close()
            assert answer.status == expected, (host, text)
            if expected == 403:
                assert "not a name this server answers" in text
        # A second call reuses the running server.
        shell.run_line_magic("kfnb", "tensorboard tb")
        assert capsys.readouterr().out.strip().endswith(url)
    finally:
        shell.run_line_magic("kfnb", "tensorboard tb --stop")
    assert "stopped" in capsys.readouterr().out


def test_stop_spares_a_process_that_reused_the_pid(tmp_path: Path) -> None:
    """A TensorBoard record outliving its process: the pid now belongs to another
    program, which stop must not kill."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        TensorBoard(str(tmp_path), 1, other.pid, "http://127.0.0.1:1/").stop()
        time.sleep(0.3)
        assert other.poll() is None, "stop killed a process that is not TensorBoard"
    finally:
        other.kill()
        other.wait()
