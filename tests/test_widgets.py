"""JobView, tested through its traits on real local jobs (no TensorFlow in the cells)."""

from __future__ import annotations

import io
import json
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kfnb
from kfnb.job import Job

widgets = pytest.importorskip("ipywidgets")
from kfnb.widgets.job_view import JobView  # noqa: E402
from kfnb.widgets.progress import print_progress  # noqa: E402


def submit(name: str, cell: str, **spec: Any) -> Job:
    return kfnb.submit(textwrap.dedent(cell), name=name, names={}, backend="local", **spec)


def wait_for(predicate: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def log_text(view: JobView, replica: str) -> str:
    return "".join(o.get("text", "") for o in view.panes[replica].output.outputs)


def watched_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kfnb-view-")]


def wait_for_file(path: Path) -> str:
    """Cell lines that wait (up to a minute) for ``path``, which the test creates
    once it has seen what it came for: the job cannot end before that."""
    return textwrap.dedent(f"""
        import pathlib, time
        deadline = time.monotonic() + 60
        while not pathlib.Path({str(path)!r}).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    """)


def test_view_follows_logs_and_phase_until_the_job_ends(tmp_path: Path) -> None:
    go = tmp_path / "go"
    job = submit(
        "live",
        "for i in range(2):\n    print(f'{tfjob.replica} line {i}', flush=True)\n"
        + wait_for_file(go)
        + "print(f'{tfjob.replica} line 2', flush=True)\n",
        workers=2,
    )
    view = JobView(job, interval=0.05)
    assert view.tabs.titles == ("worker-0", "worker-1")
    wait_for(lambda: "worker-0 line 1" in log_text(view, "worker-0"))
    wait_for(lambda: "Running" in view.header.value)  # seen live: the job waits for `go`
    assert "worker-0 line 2" not in log_text(view, "worker-0")
    go.touch()
    wait_for(lambda: view.status is not None and view.status.finished)
    wait_for(lambda: view._thread is not None and not view._thread.is_alive())
    assert "Succeeded" in view.header.value
    assert "worker-0 line 2" in log_text(view, "worker-0")
    assert view.stop_button.disabled
    assert view.failure.layout.display == "none"
    # Appended, not re-rendered: one stream output per update that brought lines.
    assert all(o["output_type"] == "stream" for o in view.panes["worker-0"].output.outputs)
    assert len(view.panes["worker-0"].output.outputs) >= 2
    assert view.replica_table.value.count("<tr>") == 3


def test_a_finished_job_is_rendered_once_without_a_thread() -> None:
    job = submit("done", "print('bye')\n")
    job.wait(timeout=30)
    before = len(watched_threads())
    view = JobView(job)
    assert view._thread is None and len(watched_threads()) == before
    assert "bye" in log_text(view, "worker-0") and "Succeeded" in view.header.value


def test_failure_shows_the_traceback_prominently() -> None:
    job = submit("broken", """
        def load():
            raise FileNotFoundError("no such data set: mnist.npz")
        load()
    """)
    view = JobView(job, interval=0.05)
    wait_for(lambda: view.failure.layout.display != "none")
    assert "kfnb-failure" in view.failure.value
    assert "FileNotFoundError: no such data set: mnist.npz" in view.failure.value
    assert "load()" in view.failure.value
    assert "Failed" in view.header.value


def test_long_logs_keep_the_newest_lines_and_say_how_to_get_the_rest() -> None:
    job = submit("chatty", "for i in range(10_000):\n    print('line', i)\n")
    job.wait(timeout=30)
    view = JobView(job, max_lines=500)
    text = log_text(view, "worker-0")
    assert text.count("\n") <= 501
    assert "line 9999" in text and "line 100\n" not in text
    assert "earlier lines not shown" in text and "%kfnb logs chatty --replica worker-0" in text
    assert view.panes["worker-0"].lines == 10_000


def test_stop_button_deletes_the_job_and_shows_the_final_state() -> None:
    job = submit("stoppable", "import time\nprint('up', flush=True)\ntime.sleep(600)\n")
    view = JobView(job, interval=0.05)
    wait_for(lambda: "up" in log_text(view, "worker-0"))
    view.stop_button.click()
    assert view.stop_button.disabled
    wait_for(lambda: "Deleted" in view.header.value, timeout=5)
    assert job.phase == "Deleted"
    assert "up" in log_text(view, "worker-0")


def test_closing_the_view_stops_its_thread() -> None:
    job = submit("closed", "import time\ntime.sleep(600)\n")
    view = JobView(job, interval=0.05)
    thread = view._thread
    assert thread is not None and thread.is_alive()
    view.close()
    assert not thread.is_alive()
    assert not job.status().finished  # closing a view does not stop the job
    job.delete()


def test_several_jobs_are_watched_at_once() -> None:
    jobs = [submit(f"many-{i}", f"print('job {i}')\n") for i in range(3)]
    views = [JobView(job, interval=0.05) for job in jobs]
    for i, view in enumerate(views):
        wait_for(lambda v=view: v.status is not None and v.status.finished)
        wait_for(lambda v=view, i=i: f"job {i}" in log_text(v, "worker-0"))


def test_missing_log_and_removed_job_are_reported_not_raised() -> None:
    job = submit("vanishing", "import time\nprint('hi', flush=True)\ntime.sleep(600)\n")
    view = JobView(job, interval=0.05)
    wait_for(lambda: "hi" in log_text(view, "worker-0"))
    assert job.artifacts is not None
    (job.artifacts / "logs" / "worker-0.log").unlink()  # e.g. cleaned up underneath
    reads_since: list[int] = []  # the view's log reads, from now on: after the unlink
    log_since = job.log_since

    def counted(replica: str, offset: int, partial: bool = False) -> tuple[str, int]:
        reads_since.append(offset)
        return log_since(replica, offset, partial)

    job.log_since = counted  # type: ignore[method-assign]
    # One pane, one read per refresh: at the second read, a whole refresh has read
    # the missing log and shown what it found.
    wait_for(lambda: len(reads_since) >= 2)
    assert view._thread is not None and view._thread.is_alive()
    assert view.notice.value == "" and "Running" in view.header.value
    view.close()
    job.backend.delete(job.name, purge=True)
    orphan = JobView(job)  # e.g. a record whose job directory is gone
    assert "could not read the job&#x27;s status" in orphan.notice.value
    assert orphan._thread is None


def test_terminal_progress_prints_phases_and_every_workers_lines(tmp_path: Path) -> None:
    go = tmp_path / "go"
    job = submit("text", "print('epoch 1 on', tfjob.replica, flush=True)\n" + wait_for_file(go)
                 + "print('epoch 2')\n", workers=2)
    out = io.StringIO()

    def release_once_running_is_printed() -> None:  # the job waits for `go` until then
        deadline = time.monotonic() + 60
        while "[text] Running" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        go.touch()

    releaser = threading.Thread(target=release_once_running_is_printed)
    releaser.start()
    try:
        status = print_progress(job, stream=out, poll=0.05)
    finally:
        go.touch()
        releaser.join(60)
    lines = out.getvalue().splitlines()
    assert status.phase == "Succeeded"
    for replica in ("worker-0", "worker-1"):
        assert f"[{replica}] epoch 1 on {replica}" in lines and f"[{replica}] epoch 2" in lines
    assert lines[-1].startswith("[text] Succeeded")
    states = [line.split(" ", 2)[1] + line.split("(")[1]
              for line in lines if line.startswith("[text]")]
    assert any(state.startswith("Running") for state in states)
    assert all(a != b for a, b in zip(states, states[1:], strict=False))  # one line per change


def test_a_replica_that_asked_for_a_gpu_and_sees_none_says_so(capsys: Any) -> None:
    """Real TensorFlow on this GPU-less machine: the log, the status, the view and the
    text progress each say the replica ran without the GPU it asked for."""
    job = submit("nogpu", "print('trained', flush=True)\n", gpus=1)
    assert "this machine has no GPU" in capsys.readouterr().err  # the submit-time warning
    job.wait(timeout=120)
    assert "trained" in job.logs()
    asked = "this replica asked for 1 GPU(s) but TensorFlow sees none: "
    assert f"kfnb: {asked}" in job.logs()
    warnings = job.warnings()
    assert list(warnings) == ["worker-0"] and warnings["worker-0"][0].startswith(asked)
    view = JobView(job)
    assert view.warnings.layout.display != "none"
    assert "kfnb-warning" in view.warnings.value and asked in view.warnings.value
    out = io.StringIO()
    print_progress(job, stream=out)
    assert f"[worker-0] kfnb warning: {asked}" in out.getvalue()
    assert out.getvalue().splitlines()[-1].startswith("[nogpu] Succeeded")


def test_no_warning_is_shown_when_the_replicas_have_none() -> None:
    job = submit("cpuonly", "print('fine')\n")
    job.wait(timeout=30)
    assert job.warnings() == {} and job.replica_warnings("worker-0") == ()
    view = JobView(job)
    assert view.warnings.layout.display == "none" and view.warnings.value == ""


SCALAR_CELL = """
import time
from pathlib import Path
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util
import numpy as np

def write(run, step, loss):
    path = Path(tfjob.logdir) / run / "events.out.tfevents.kfnb-test"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        value = summary_pb2.Summary.Value(tag="epoch_loss",
                                          tensor=tensor_util.make_tensor_proto(np.float32(loss)))
        value.metadata.plugin_data.plugin_name = "scalars"
        event = event_pb2.Event(wall_time=time.time(), step=step,
                                summary=summary_pb2.Summary(value=[value]))
        RecordWriter(f).write(event.SerializeToString())

for step in range(3):
    write("train", step, 1.0 / (step + 1))
    write("validation", step, 1.5 / (step + 1))
    time.sleep(0.4)
"""


def test_scalars_are_plotted_live_one_line_per_run() -> None:
    """Events written with tensorboard's own TF-free writer, as Keras lays them out."""
    job = submit("scalars", SCALAR_CELL)
    view = JobView(job, interval=0.05, scalar_interval=0.2)
    wait_for(lambda: len(view.scalars.get("epoch_loss", {}).get("train", [])) >= 1)
    wait_for(lambda: view._thread is not None and not view._thread.is_alive())
    assert view.scalars["epoch_loss"]["train"] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert [s for s, _ in view.scalars["epoch_loss"]["validation"]] == [0, 1, 2]
    (plot,) = view.plots.children
    assert 'class="kfnb-plot"' in plot.value and "epoch_loss" in plot.value
    assert 'data-run="train"' in plot.value and 'data-run="validation"' in plot.value
    # The same data outside the widget, as a plain structure.
    scalars = job.scalars()
    assert [s for s, _ in scalars["epoch_loss"]["validation"]] == [0, 1, 2]


TF_INFO = ("I0000 00:00:1796302801.968727    4909 coordination_service.cc:221] "
           "Initializing CoordinationService")
TF_WARNING = ("W0000 00:00:1796302810.168585    4909 dataset.cc:997] Input of "
              "GeneratorDatasetOp::Dataset will not be optimized")


def test_tensorflow_messages_are_hidden_until_asked_for_then_dimmed(tmp_path: Path) -> None:
    """TensorFlow's glog lines (written to stderr, as TensorFlow does) are left out of
    the log tab by default, shown dimmed when the box is ticked, and kept in the log."""
    from kfnb.widgets.job_view import DIM, UNDIM

    go = tmp_path / "go"
    job = submit("tf-messages", f"""
        import pathlib, sys, time
        print("Epoch 1/2", flush=True)
        print({TF_INFO!r}, file=sys.stderr, flush=True)
        print("63/63 - 1s - loss: 0.5", flush=True)
        deadline = time.monotonic() + 60
        while not pathlib.Path({str(go)!r}).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        print({TF_WARNING!r}, file=sys.stderr, flush=True)
        print("Epoch 2/2", flush=True)
    """)
    view = JobView(job, interval=0.05)
    checkbox = view.tensorflow_messages
    assert isinstance(checkbox, widgets.Checkbox) and checkbox.value is False
    assert checkbox in view.children[0].children  # beside the header and Stop
    wait_for(lambda: "63/63" in log_text(view, "worker-0"))
    assert "Running" in view.header.value  # the job waits for `go`: it is running
    text = log_text(view, "worker-0")
    assert "Epoch 1/2\n63/63 - 1s - loss: 0.5\n" in text
    assert "Initializing CoordinationService" not in text and DIM not in text
    assert checkbox.description == "TensorFlow messages (1)"  # how many, hidden or not

    checkbox.value = True  # ticked while the job runs: the lines read so far, dimmed
    text = log_text(view, "worker-0")
    assert f"Epoch 1/2\n{DIM}{TF_INFO}{UNDIM}\n63/63 - 1s - loss: 0.5\n" in text
    go.touch()
    wait_for(lambda: "Epoch 2/2" in log_text(view, "worker-0"))
    wait_for(lambda: view._thread is not None and not view._thread.is_alive())
    text = log_text(view, "worker-0")
    assert text.endswith(f"{DIM}{TF_WARNING}{UNDIM}\nEpoch 2/2\n")  # appended, dimmed
    assert "earlier lines not shown" not in text and checkbox.description.endswith("(2)")
    assert all(o["output_type"] == "stream" for o in view.panes["worker-0"].output.outputs)

    checkbox.value = False
    text = log_text(view, "worker-0")
    assert text == "Epoch 1/2\n63/63 - 1s - loss: 0.5\nEpoch 2/2\n"
    # Only the view leaves them out: the log has every line, undimmed.
    log = job.logs("worker-0")
    assert f"{TF_INFO}\n" in log and f"{TF_WARNING}\n" in log and DIM not in log
    # The terminal's text progress leaves them out too, unless asked.
    out = io.StringIO()
    print_progress(job, stream=out)
    assert "[worker-0] Epoch 2/2" in out.getvalue() and "I0000" not in out.getvalue()
    out = io.StringIO()
    print_progress(job, stream=out, tensorflow_messages=True)
    assert f"[worker-0] {TF_INFO}" in out.getvalue().splitlines()


def test_hiding_tensorflow_messages_keeps_the_trim_notice_right() -> None:
    from kfnb.widgets.job_view import DIM

    job = submit("tf-trim", "".join(f"print('line {i}')\nprint({TF_INFO!r})\n"
                                    for i in range(300)))
    job.wait(timeout=30)
    view = JobView(job, max_lines=100)
    # 600 lines read; the newest 100 kept, of which 50 are the cell's: those are shown.
    text = log_text(view, "worker-0")
    assert text.startswith("[kfnb: 500 earlier lines not shown; all of them: job.logs(")
    assert "I0000" not in text and "line 250\n" in text and "line 249\n" not in text
    assert text.count("\n") == 51
    view.tensorflow_messages.value = True
    text = log_text(view, "worker-0")
    assert text.startswith("[kfnb: 500 earlier lines not shown;")
    assert text.count(DIM) == 50 and text.count("\n") == 101
    assert text.endswith(f"line 299\n{DIM}{TF_INFO}\x1b[0m\n")


def test_tensorflow_messages_are_told_from_the_cells_lines() -> None:
    from kfnb.widgets.tf_messages import is_tensorflow_message

    # From a 2-worker MNIST job's log under TensorFlow 2.21 (and 2.15's dated form).
    tensorflow = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796302793.807500    4909 cpu_feature_guard.cc:227] This TensorFlow "
        "binary is optimized to use available CPU instructions in performance-critical "
        "operations.",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
        "TensorFlow with the appropriate compiler flags.",
        "I0000 00:00:1796302801.990110    5147 coordination_service.cc:505] Example stragglers:",
        "/job:worker/replica:0/task:1",
        TF_WARNING,
        "E0000 00:00:1796304117.101735   26088 base_collective_executor.cc:252] "
        "BaseCollectiveExecutor::StartAbort UNAVAILABLE: Failed to send RPC",
        "Additional GRPC error information from remote target /job:worker/replica:0/task:0 "
        "while calling /tensorflow.CoordinationService/Heartbeat:",
        ':UNKNOWN:Error received from peer  {grpc_message:"failed to connect", grpc_status:14}',
        "F1203 12:57:01.123456 12345 check_op.cc:1] Check failed: ok",
        "2024-01-31 12:00:00.123456: I tensorflow/core/util/port.cc:113] oneDNN custom "
        "operations are on.",
    ]
    cell = [
        "Epoch 1/10",
        "63/63 - 20s - loss: 0.9941 - accuracy: 0.6595 - 20s/epoch - 324ms/step",
        "Downloading data from https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
        "mnist.npz",
        "I0000 is not a log line",
        "WARNING: the cell's own warning",
        "kfnb: model saved as version 1 in /tmp/jobs/mnist/model/1",
        "  I0000 00:00:1796302793.807500    4909 cpu_feature_guard.cc:227] indented: printed",
    ]
    assert [line for line in tensorflow if not is_tensorflow_message(line)] == []
    assert [line for line in cell if is_tensorflow_message(line)] == []


HOSTILE = "<img src=x onerror=alert(1)>"


def test_fields_from_a_status_json_are_escaped_in_the_view() -> None:
    """status.json may come from a bucket anyone with write access filled: no field of it
    reaches the view's HTML as markup."""
    job = submit("hostile", "print('done')\n")
    job.wait(timeout=30)
    assert job.artifacts is not None
    path = job.artifacts / "status.json"
    data = json.loads(path.read_text())
    data["message"] = data["reason"] = HOSTILE
    data["replicas"] = [
        {"type": HOSTILE, "index": HOSTILE, "phase": HOSTILE, "restarts": HOSTILE,
         "exit_code": HOSTILE}
    ]
    path.write_text(json.dumps(data))
    view = JobView(job)
    html_values = [
        w.value for w in (view.header, view.replica_table, view.restarts, view.notice,
                          view.warnings, view.failure)
    ]
    assert any("&lt;img src=x onerror=alert(1)&gt;" in v for v in html_values)
    assert not any("<img" in v for v in html_values), html_values
