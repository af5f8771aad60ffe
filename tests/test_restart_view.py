"""A restarted replica shows in JobView (tab title, a restarts line, the supervisor's
marker highlighted in its log) and in the text progress; through the widget's traits,
on real local jobs whose cells use only the standard library."""

from __future__ import annotations

import io
import textwrap

import pytest

import kfnb
from kfnb.job import Job

pytest.importorskip("ipywidgets")
from kfnb.widgets.job_view import RESTART, JobView  # noqa: E402
from kfnb.widgets.progress import print_progress  # noqa: E402

# Fails (exit 3) on its first two runs, then succeeds: two restarts under OnFailure.
CELL = """\
runs = tfjob.artifacts / f"runs-{tfjob.replica}"
n = len(runs.read_text()) if runs.exists() else 0
runs.write_text("x" * (n + 1))
print(f"run {n}", flush=True)
raise SystemExit(3 if n < 2 else 0)
"""


def restarting_job(name: str) -> Job:
    return kfnb.submit(
        textwrap.dedent(CELL),
        name=name,
        names={},
        backend="local",
        restart_policy="OnFailure",
        backoff_limit=3,
    )


def log_text(view: JobView, replica: str) -> str:
    return "".join(o.get("text", "") for o in view.panes[replica].output.outputs)


def test_job_view_shows_the_restarts() -> None:
    job = restarting_job("viewrestart")
    job.wait(timeout=60)
    view = JobView(job, start=False)
    try:
        assert view.tabs.titles == ("worker-0 ↻2",)
        assert view.restarts.layout.display is None
        assert "restarted: worker-0 2×" in view.restarts.value
        assert "restarts</th>" in view.replica_table.value
        assert "<td>2</td>" in view.replica_table.value
        log = log_text(view, "worker-0")
        for n in (1, 2):
            assert f"{RESTART}--- kfnb: restart {n} of worker-0 ---" in log
        assert log.index("run 0") < log.index("restart 1") < log.index("run 1")
    finally:
        view.close()


def test_job_view_without_restarts_shows_none() -> None:
    job = kfnb.submit("print('once')\n", name="norestart", names={}, backend="local")
    job.wait(timeout=60)
    view = JobView(job, start=False)
    try:
        assert view.tabs.titles == ("worker-0",)
        assert view.restarts.layout.display == "none" and view.restarts.value == ""
    finally:
        view.close()


def test_text_progress_shows_the_restarts() -> None:
    job = restarting_job("textrestart")
    out = io.StringIO()
    status = print_progress(job, stream=out, poll=0.05)
    text = out.getvalue()
    assert status.phase == "Succeeded"
    assert "[worker-0] --- kfnb: restart 1 of worker-0 ---" in text
    assert "[worker-0] --- kfnb: restart 2 of worker-0 ---" in text
    assert text.rstrip().splitlines()[-1].endswith("(worker-0 Succeeded ↻2)")
