"""End to end in a real browser: JupyterLab, Debian's Chromium driven by Playwright.

A notebook runs ``%%tfjob --workers 2`` (two real TensorFlow processes on the local
backend) and the test checks what a user sees in the `JobView` under the cell: a
log tab per replica, the scalar plots, the final phase and the disabled Stop
button, and that the kernel still answers afterwards. Screenshots are kept in
``artifacts/browser/`` (gitignored) to look at after the run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.tensorflow]

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
JOB = "browser"
TFJOB_CELL = f"""\
%%tfjob --name {JOB} --workers 2
import tensorflow as tf, numpy as np
strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = tf.keras.Sequential([tf.keras.Input((4,), name="x"), tf.keras.layers.Dense(2)])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
x = np.random.default_rng(0).normal(size=(256, 4)).astype("float32")
y = (x[:, 0] > 0).astype("int64")
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
model.fit(ds, epochs=4, steps_per_epoch=4, validation_data=ds, validation_steps=2,
          callbacks=[tfjob.tensorboard()], verbose=2)
print("training finished on", tfjob.replica)"""
# Run once by "Run All Cells" and once more after the job has ended: the second
# run proves the kernel still executes cells, and sees the job's final phase.
PROBE_CELL = f"""\
from kfnb.job import Job
_probe = globals().get("_probe", 0) + 1
print(f"probe {{_probe}}: job {JOB} is {{Job.attach({JOB!r}).phase}}")"""
CELLS = [
    "%load_ext kfnb",
    'import sys\nprint("kernel python:", sys.executable)',
    TFJOB_CELL,
    PROBE_CELL,
]


def _requirements() -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium")
    for module in ("playwright", "jupyterlab"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not importable: pip install -e '.[test]'")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _notebook(cells: list[str]) -> dict[str, Any]:
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": [
            {
                "cell_type": "code",
                "id": f"cell-{i}",
                "metadata": {},
                "execution_count": None,
                "outputs": [],
                "source": source,
            }
            for i, source in enumerate(cells)
        ],
    }


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    log: Path
    process: subprocess.Popen[bytes]

    def api(self, path: str, method: str = "GET", timeout: float = 10) -> Any:
        sep = "&" if "?" in path else "?"
        request = urllib.request.Request(f"{self.url}{path}{sep}token={self.token}", method=method)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _wait_ready(lab: Lab, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.process.poll() is not None:
            pytest.fail(
                f"JupyterLab exited with {lab.process.returncode} before it was ready:\n"
                f"{lab.log_tail()}"
            )
        try:
            lab.api("/api/status", timeout=2)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.25)
    pytest.fail(f"JupyterLab was not ready within {timeout} s:\n{lab.log_tail()}")


def _stop(lab: Lab) -> None:
    if lab.process.poll() is None:
        try:  # kernels outlive the browser: shut them down first
            for kernel in lab.api("/api/kernels", timeout=5):
                lab.api(f"/api/kernels/{kernel['id']}", method="DELETE", timeout=15)
        except (urllib.error.URLError, OSError, ValueError):
            pass
        try:
            os.killpg(lab.process.pid, signal.SIGTERM)
            lab.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(lab.process.pid, signal.SIGKILL)
            lab.process.wait(timeout=10)
        except ProcessLookupError:
            pass
    else:
        try:  # the server is gone; anything it left in its group goes too
            os.killpg(lab.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def lab(tmp_path: Path, kfnb_home: Path) -> Iterator[Lab]:
    """JupyterLab with private config, data, runtime and IPython directories, and
    the ``python3`` kernelspec pointing at this interpreter."""
    _requirements()
    jupyter = tmp_path / "jupyter"
    dirs = {
        "JUPYTER_CONFIG_DIR": jupyter / "config",
        "JUPYTER_DATA_DIR": jupyter / "data",
        "JUPYTER_RUNTIME_DIR": jupyter / "runtime",
        "IPYTHONDIR": jupyter / "ipython",
    }
    for path in dirs.values():
        path.mkdir(parents=True)
    root = tmp_path / "notebooks"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JPY_")}
    env.update({k: str(v) for k, v in dirs.items()})
    env.update(
        KFNB_HOME=str(kfnb_home),  # jobs and records stay in this test's directory
        KFNB_PYTHON=sys.executable,
        PYTHONUNBUFFERED="1",
    )
    env.pop("KFNB_STORAGE", None)
    env.pop("KFNB_BACKEND", None)
    # The python3 kernelspec goes in the private data directory, with this interpreter
    # spelt out as argv[0]. In a virtualenv jupyter_core searches the environment's
    # share/jupyter (whose python3 spec says just "python") before the user's data
    # directory; JUPYTER_PREFER_ENV_PATH=0 puts the private one first. The environment's
    # share/jupyter is still searched after it: ipywidgets' front end (jupyterlab_widgets)
    # is found there.
    env.pop("JUPYTER_PATH", None)
    env["JUPYTER_PREFER_ENV_PATH"] = "0"
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--user", "--name", "python3"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    port, token = _free_port(), secrets.token_hex(16)
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")  # without it Jupyter exits at once as root
    log = tmp_path / "jupyterlab.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    lab = Lab(f"http://127.0.0.1:{port}", token, root, log, process)
    try:
        _wait_ready(lab)
        yield lab
    finally:
        _stop(lab)


def _job_diagnostics(home: Path) -> str:
    """The job's own logs, for a failure message."""
    job_dir = home / "jobs" / JOB
    parts = []
    for path in sorted(job_dir.glob("logs/*")) + [job_dir / "supervisor.log"]:
        if path.is_file():
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts) or f"(nothing under {job_dir})"


def _dismiss_news(page: Any) -> None:
    """The "official Jupyter news?" toast sits bottom right and can cover elements."""
    from playwright.sync_api import expect

    toast = page.locator(".jp-toastContainer .Toastify__toast", has_text="official Jupyter news")
    if toast.count():
        toast.get_by_role("button", name="No", exact=True).first.click(timeout=5_000)
        expect(toast).to_have_count(0, timeout=5_000)


def _run_all(page: Any, attempts: int = 2) -> int:
    """Run > Run All Cells; returns the attempts it took.

    Once (the first run on a cold machine) the command left every prompt at ``[ ]``
    and nothing ran. The front end marks a cell ``[*]`` as soon as it sends the
    execute request, so a first prompt still blank after 20 s means nothing was sent,
    and one more try does not run the cells twice.
    """
    from playwright.sync_api import expect

    first_prompt = page.locator(".jp-Cell .jp-InputPrompt").first
    for attempt in range(1, attempts + 1):
        page.keyboard.press("Escape")
        page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click(timeout=10_000)
        page.locator(".lm-Menu-item", has_text=re.compile(r"^Run All Cells")).first.click(
            timeout=10_000
        )
        try:
            expect(first_prompt).to_have_text(re.compile(r"\[(\*|\d+)\]:"), timeout=20_000)
            return attempt
        except AssertionError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _log_scroll(log: Any) -> dict[str, int]:
    """Where the visible log pane is scrolled: does it follow the newest lines?"""
    scroll: dict[str, int] = log.evaluate(
        "el => ({scrollTop: Math.round(el.scrollTop), clientHeight: el.clientHeight,"
        " scrollHeight: el.scrollHeight})",
        timeout=5_000,
    )
    return scroll


def _shot(page: Any, name: str) -> Path:
    _dismiss_news(page)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True, timeout=20_000)
    return path


@pytest.mark.timeout(240)
def test_job_view_in_jupyterlab(lab: Lab, kfnb_home: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    # The kernelspec the server hands out runs this very interpreter.
    specs = lab.api("/api/kernelspecs")
    assert specs["kernelspecs"]["python3"]["spec"]["argv"][0] == sys.executable, specs
    notebook = lab.root / f"{JOB}.ipynb"
    notebook.write_text(json.dumps(_notebook(CELLS), indent=1))
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    started = time.monotonic()
    timings: dict[str, float] = {}

    def mark(event: str) -> None:
        timings[event] = round(time.monotonic() - started, 1)

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        page.set_default_timeout(30_000)
        console_errors: list[str] = []
        page.on("pageerror", lambda err: console_errors.append(str(err)))
        try:
            page.goto(f"{lab.url}/lab/tree/{notebook.name}?token={lab.token}&reset", timeout=60_000)
            page.wait_for_selector(
                ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000
            )
            mark("kernel idle")
            _dismiss_news(page)
            run_all_attempts = _run_all(page)
            mark("cells started")

            # The kernel is this interpreter, as the kernelspec said.
            kernel_python = page.locator(".jp-OutputArea-output", has_text="kernel python:")
            expect(kernel_python).to_have_text(f"kernel python: {sys.executable}", timeout=60_000)

            view = page.locator(".kfnb-jobview")
            expect(view).to_be_visible(timeout=60_000)
            mark("view shown")
            page.get_by_text("Error displaying widget").wait_for(state="detached", timeout=1_000)
            # One live view for the cell, and no stale text line of the returned Job.
            expect(view).to_have_count(1, timeout=5_000)
            expect(page.get_by_text("Job browser (local)")).to_have_count(0, timeout=5_000)
            tabs = view.locator(".lm-TabBar-tab .lm-TabBar-tabLabel")
            expect(tabs).to_have_text(["worker-0", "worker-1"], timeout=10_000)
            log = view.locator(".kfnb-log:visible")

            # While it runs: log lines arrive in worker-0's tab (TensorFlow's own lines
            # are hidden: the first is the cell's, once TensorFlow has started).
            expect(log).to_contain_text(re.compile(r"\S"), timeout=120_000)
            expect(log).to_have_count(1, timeout=10_000)  # the current tab's only
            mark("first log line")
            view.scroll_into_view_if_needed(timeout=10_000)
            running_phase = view.locator(".kfnb-phase").first.inner_text(timeout=5_000)
            _shot(page, "1-running")

            expect(log).to_contain_text("training finished on worker-0", timeout=150_000)
            mark("worker-0 finished")
            header_phase = view.locator(".kfnb-phase").first
            expect(header_phase).to_have_text("Succeeded", timeout=60_000)
            # The log box follows its newest line: the last one is in view, unscrolled.
            view.scroll_into_view_if_needed(timeout=10_000)
            expect(log.get_by_text("training finished on worker-0")).to_be_in_viewport(
                timeout=10_000
            )
            mark("succeeded")
            # The replica table: worker-0 decided; worker-1 ended on its own (Succeeded)
            # or, a moment later than worker-0, was stopped by kfnb (Stopped), as the
            # operator's cleanPodPolicy would.
            expect(view.locator(".kfnb-replicas .kfnb-phase")).to_have_text(
                ["Succeeded", re.compile(r"^(Succeeded|Stopped)$")], timeout=10_000
            )
            # Stop is off once the job has ended.
            stop = view.locator("button.jupyter-button")
            expect(stop).to_have_count(1, timeout=5_000)
            expect(stop).to_be_disabled(timeout=10_000)

            # The scalars: epoch_loss has a line for train and one for validation.
            expect(view.locator("svg.kfnb-plot").first).to_be_visible(timeout=30_000)
            loss = view.locator("svg.kfnb-plot", has_text="epoch_loss")
            expect(loss).to_have_count(1, timeout=30_000)
            for run in ("train", "validation"):
                line = loss.locator(f'polyline.kfnb-run[data-run="{run}"]')
                expect(line).to_have_count(1, timeout=30_000)
                expect(line).to_have_attribute("points", re.compile(r"\S+ \S+"), timeout=30_000)
            view.scroll_into_view_if_needed(timeout=10_000)
            _shot(page, "2-succeeded")
            view.screenshot(path=str(SCREENSHOTS / "2-succeeded-view.png"), timeout=20_000)
            # The log pane as left by the view, then scrolled to its end by hand, for the
            # screenshot of its last lines.
            log_scroll = _log_scroll(log)
            log.evaluate("el => { el.scrollTop = el.scrollHeight; }", timeout=5_000)
            view.screenshot(path=str(SCREENSHOTS / "2-succeeded-log-end.png"), timeout=20_000)

            # worker-1's tab shows worker-1's log. Its last line may be cut off: kfnb
            # stops the other replicas once worker-0 has succeeded.
            view.locator(".lm-TabBar-tab", has_text="worker-1").click(timeout=10_000)
            expect(view.locator(".lm-TabBar-tab.lm-mod-current")).to_have_text("worker-1")
            expect(log).to_contain_text("Epoch 1/4", timeout=30_000)
            expect(log).not_to_contain_text("training finished on worker-0", timeout=5_000)
            worker1_finished = "training finished on worker-1" in log.inner_text(timeout=5_000)
            _shot(page, "3-worker-1-tab")

            # TensorFlow's own lines: out of the tab by default, dimmed (grey) when ticked.
            tf_line = re.compile(r"[IW]0000 00:00:\S+ +\d+ \S+:\d+\] ")
            dimmed = log.locator('span[style*="rgb(138,138,138)"]')  # ANSI 38;5;245
            expect(log).not_to_contain_text(tf_line, timeout=5_000)
            tf_box = view.locator(".kfnb-tf-messages input[type='checkbox']")
            expect(tf_box).not_to_be_checked(timeout=5_000)
            tf_box.check(timeout=10_000)
            expect(dimmed.filter(has_text=tf_line).first).to_be_visible(timeout=10_000)
            expect(log).to_contain_text("Epoch 1/4", timeout=5_000)  # the cell's lines stay
            view.scroll_into_view_if_needed(timeout=10_000)
            view.screenshot(path=str(SCREENSHOTS / "3-tensorflow-messages.png"), timeout=20_000)
            tf_box.uncheck(timeout=10_000)
            expect(dimmed).to_have_count(0, timeout=10_000)
            expect(log).to_contain_text("Epoch 1/4", timeout=5_000)

            # The kernel still answers: idle by the REST API, and the probe cell runs again.
            kernels = lab.api("/api/kernels")
            assert [k["execution_state"] for k in kernels] == ["idle"], kernels
            probe = page.locator(".jp-CodeCell", has_text="_probe = globals()")
            expect(probe.locator(".jp-OutputArea-output")).to_contain_text("probe 1:")
            probe.locator(".jp-InputArea-editor").click(timeout=10_000)
            page.keyboard.press("Control+Enter")
            expect(probe.locator(".jp-OutputArea-output")).to_have_text(
                f"probe 2: job {JOB} is Succeeded", timeout=30_000
            )
            mark("kernel answered")
            _shot(page, "4-kernel-answers")
        except Exception as err:
            try:
                _shot(page, "failure")
            except Exception:
                pass
            raise AssertionError(
                f"{err}\n\ntimings: {timings}\npage errors: {console_errors}\n"
                f"job logs:\n{_job_diagnostics(kfnb_home)}\n"
                f"JupyterLab log:\n{lab.log_tail()}"
            ) from err
        finally:
            browser.close()
    print(f"\nbrowser test timings (s since page load): {timings}")
    print(f"Run All Cells attempts: {run_all_attempts}")
    print(f"phase in the header at the first log line: {running_phase}")
    print(f"worker-0's log pane at the end, before scrolling by hand: {log_scroll}")
    print(f"worker-1's log reached 'training finished on worker-1': {worker1_finished}")
    print(f"screenshots: {SCREENSHOTS}")
    assert not console_errors, console_errors
