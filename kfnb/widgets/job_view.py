"""`JobView`: a live view of a job. Header, a row per replica, a log tab per
replica, TensorBoard scalar plots, a Stop button and, on failure, the traceback.

It is a pure view over the `Job` handle (status, incremental logs, scalars,
delete). One background thread per view polls them and changes only what
changed: log lines are appended, never re-rendered, so the kernel stays free
and the front end does little work. The thread ends when the job has ended
(after one final update) or when the widget is closed.
"""

from __future__ import annotations

import html
import threading
import time
from collections import deque
from typing import Any

import ipywidgets as widgets

from kfnb.job import Job
from kfnb.status import JobStatus, ReplicaStatus
from kfnb.widgets.plots import Points, svg_plot
from kfnb.widgets.tf_messages import is_tensorflow_message

PHASE_COLOURS = {
    "Created": "#777",
    "Running": "#1565c0",
    "Restarting": "#ef6c00",
    "Succeeded": "#2e7d32",
    "Failed": "#c62828",
    "Deleted": "#555",
}


def _text(value: object) -> str:
    """A status field as HTML text: escaped whatever its type (None is blank)."""
    return "" if value is None else html.escape(str(value))


def _badge(phase: str) -> str:
    colour = PHASE_COLOURS.get(phase, "#777")
    return (
        f'<span class="kfnb-phase" style="background:{colour};color:white;'
        f'padding:1px 7px;border-radius:8px">{_text(phase)}</span>'
    )


# TensorFlow's lines in grey: JupyterLab renders SGR 38;5 (256 colours) in stream
# output, not SGR 2 (faint). Mid grey reads as dimmed on light and dark themes alike.
DIM, UNDIM = "\x1b[38;5;245m", "\x1b[0m"


# The supervisor's restart marker (``--- kfnb: restart 2 of worker-0 ---``) in orange
# and bold, so where a replica started over stands out in its log.
RESTART, UNRESTART = "\x1b[1;38;5;208m", "\x1b[0m"
RESTART_MARKER = "--- kfnb: restart "


def _dimmed(line: str) -> str:
    return _coloured(line, DIM, UNDIM)


def _coloured(line: str, start: str, end: str) -> str:
    body = line.rstrip("\r\n")
    return f"{start}{body}{end}{line[len(body) :]}"


def tab_title(replica: ReplicaStatus) -> str:
    """A log tab's title: the replica, and how often it restarted, if it did."""
    return f"{replica.name} ↻{replica.restarts}" if replica.restarts else replica.name


def restarts_note(status: JobStatus) -> str:
    """One line naming the replicas that restarted and how often; empty when none did."""
    restarted = [f"{r.name} {r.restarts}×" for r in status.replicas if r.restarts]
    if not restarted:
        return ""
    return (
        f"↻ restarted: {', '.join(restarted)} (the restart policy started them again; a "
        "cell with tfjob.backup_and_restore() goes on from its last epoch)"
    )


class LogPane:
    """One replica's log: new lines are appended; past ``max_lines`` the oldest go,
    with a line that says how to read them all.

    TensorFlow's own log lines are shown dimmed, or left out while
    ``tensorflow_messages`` is off; the log file keeps them either way.
    """

    def __init__(
        self, job: Job, replica: str, max_lines: int, tensorflow_messages: bool = False
    ) -> None:
        self.job, self.replica, self.max_lines = job, replica, max_lines
        self.tensorflow_messages = tensorflow_messages
        self.output = widgets.Output()
        self.output.add_class("kfnb-log")
        # The box scrolls, bottom-up, so the newest line stays in view as lines arrive.
        self.box = widgets.Box(
            [self.output],
            layout=widgets.Layout(
                max_height="320px", overflow="auto", display="flex", flex_flow="column-reverse"
            ),
        )
        self.offset = 0
        self.shown: deque[str] = deque(maxlen=max_lines)  # the newest lines, for a trim
        self.visible = 0  # lines in the Output now
        self.lines = 0  # every line read so far
        self.tensorflow_lines = 0  # of which TensorFlow's own

    def _view(self, line: str) -> str | None:
        """How ``line`` appears in the pane: as is, dimmed, or not at all (None)."""
        if line.startswith(RESTART_MARKER):
            return _coloured(line, RESTART, UNRESTART)
        if not is_tensorflow_message(line):
            return line
        return _dimmed(line) if self.tensorflow_messages else None

    def update(self, final: bool = False) -> int:
        """Append the replica's new lines; returns how many there were."""
        text, self.offset = self.job.log_since(self.replica, self.offset, partial=final)
        if not text:
            return 0
        new = text.splitlines(keepends=True)
        self.shown.extend(new)
        self.lines += len(new)
        self.tensorflow_lines += sum(map(is_tensorflow_message, new))
        shown = [view for line in new if (view := self._view(line)) is not None]
        if self.visible + len(shown) <= self.max_lines:
            if shown:
                self.output.append_stdout("".join(shown))
                self.visible += len(shown)
        else:
            self._rewrite(self.max_lines // 2)  # at most once per max_lines / 2 new lines
        return len(new)

    def show_tensorflow_messages(self, show: bool) -> None:
        """Show TensorFlow's lines (dimmed) or leave them out, in the lines kept so far."""
        if show != self.tensorflow_messages:
            self.tensorflow_messages = show
            self._rewrite(self.max_lines)

    def _rewrite(self, keep_lines: int) -> None:
        """The pane anew: at most ``keep_lines`` of the newest lines it shows."""
        views = [(i, v) for i, line in enumerate(self.shown) if (v := self._view(line)) is not None]
        keep = views[len(views) - keep_lines :] if len(views) > keep_lines else views
        # Earlier lines that the pane would show but no longer does (those gone from
        # `shown` are counted whatever they were).
        hidden = self.lines - len(self.shown) + (len(views) - len(keep))
        notice = (
            f"[kfnb: {hidden} earlier lines not shown; all of them: "
            f"job.logs({self.replica!r}) or %kfnb logs {self.job.name} "
            f"--replica {self.replica}]\n"
            if hidden
            else ""
        )
        text = notice + "".join(v for _, v in keep)
        self.visible = len(keep) + (1 if notice else 0)
        self.output.outputs = (
            ({"output_type": "stream", "name": "stdout", "text": text},) if text else ()
        )


class JobView(widgets.VBox):  # type: ignore[misc]
    """A live view of ``job``. Display it; close it to stop its updates.

    TensorFlow's own log lines are left out of the log tabs until the "TensorFlow
    messages" box (`tensorflow_messages`, a Checkbox) is ticked; then they are shown
    dimmed among the cell's own lines. ``job.logs()`` has them all either way.
    """

    def __init__(
        self,
        job: Job,
        *,
        max_lines: int = 1000,
        interval: float = 0.25,
        scalar_interval: float = 1.0,
        start: bool = True,
        tensorflow_messages: bool = False,
    ) -> None:
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.job = job
        self.interval = interval
        self.scalar_interval = scalar_interval
        self.header = widgets.HTML()
        self.replica_table = widgets.HTML()
        self.stop_button = widgets.Button(
            description="Stop", icon="stop", button_style="danger", tooltip="Delete the job"
        )
        self.stop_button.on_click(self._on_stop)
        self.tensorflow_messages = widgets.Checkbox(
            value=tensorflow_messages,
            description="TensorFlow messages",
            tooltip="TensorFlow's own log lines (I0000 ...] ..., W0000 ...), dimmed. "
            "The log files keep them either way: job.logs().",
            indent=False,
            layout=widgets.Layout(width="auto", margin="0 0 0 12px"),
        )
        self.tensorflow_messages.add_class("kfnb-tf-messages")
        self.tensorflow_messages.observe(self._on_tensorflow_messages, names="value")
        self.failure = widgets.HTML(layout=widgets.Layout(display="none"))
        self.restarts = widgets.HTML(layout=widgets.Layout(display="none"))
        # What replicas warned of as they started (a GPU asked for, none seen).
        self.warnings = widgets.HTML(layout=widgets.Layout(display="none"))
        self.replica_warnings: dict[str, tuple[str, ...]] = {}  # replicas that recorded theirs
        self.notice = widgets.HTML()
        self.plots = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.tabs = widgets.Tab()
        try:
            replicas = job.replicas
        except Exception:  # e.g. its directory is gone: refresh() says so below
            replicas = []
        self.panes = {name: LogPane(job, name, max_lines, tensorflow_messages) for name in replicas}
        self.tabs.children = [pane.box for pane in self.panes.values()]
        self.tabs.titles = tuple(replicas)
        self.scalars: dict[str, dict[str, Points]] = {}  # what the reader has read so far
        self._plot_widgets: dict[str, widgets.HTML] = {}
        self._reader: Any = None
        self._last_scalars = 0.0
        self.status: JobStatus | None = None
        super().__init__(
            children=[
                widgets.HBox([self.header, self.stop_button, self.tensorflow_messages]),
                self.replica_table,
                self.restarts,
                self.warnings,
                self.failure,
                self.tabs,
                self.plots,
                self.notice,
            ]
        )
        self.add_class("kfnb-jobview")
        finished = self.refresh()
        if start and not finished:
            self._thread = threading.Thread(
                target=self._watch, name=f"kfnb-view-{job.name}", daemon=True
            )
            self._thread.start()

    # -- updates -------------------------------------------------------------------

    def refresh(self) -> bool:
        """Bring the view up to date once; True when the job has ended. Never raises.

        Status, logs and scalars update independently: a log or event file that
        cannot be read does not hide the job's phase.
        """
        from kfnb.backends import JobNotFound

        with self._lock:
            problems = []
            try:
                status = self.job.status()
            except Exception as err:  # a view must never raise into the notebook
                self._show_problems([f"the job's status: {err}"])
                return isinstance(err, JobNotFound)
            for pane in self.panes.values():
                try:
                    pane.update(final=status.finished)
                except Exception as err:
                    problems.append(f"{pane.replica}'s log: {err}")
            # How many there are, hidden or not: a tab that shows nothing yet is alive.
            count = sum(pane.tensorflow_lines for pane in self.panes.values())
            self.tensorflow_messages.description = (
                f"TensorFlow messages ({count})" if count else "TensorFlow messages"
            )
            now = time.monotonic()
            if status.finished or now - self._last_scalars >= self.scalar_interval:
                self._last_scalars = now
                try:
                    self._update_scalars()
                except Exception as err:
                    problems.append(f"scalars: {err}")
                try:
                    self._update_warnings(again=status.finished)
                except Exception as err:
                    problems.append(f"the replicas' warnings: {err}")
            if status != self.status:
                self._render_status(status)
            self._render_header(status)  # the elapsed time ticks even when nothing changed
            self._show_problems(problems)
            return status.finished

    def _show_problems(self, problems: list[str]) -> None:
        self.notice.value = "".join(
            f'<div class="kfnb-notice" style="color:#c62828">kfnb: could not read '
            f"{html.escape(problem)}</div>"
            for problem in problems
        )

    def _render_header(self, status: JobStatus) -> None:
        elapsed = f" · {status.elapsed:.0f} s" if status.elapsed is not None else ""
        # An unchanged value is not sent again: traitlets notifies on change only.
        self.header.value = (
            f'<b class="kfnb-name">{_text(status.name)}</b> '
            f'<span style="color:#777">({_text(status.backend)})</span> '
            f"{_badge(status.phase)}{elapsed}"
            f'<div style="color:#555">{_text(status.message)}</div>'
        )

    def _render_status(self, status: JobStatus) -> None:
        self.status = status
        # Every field escaped: a status.json read from a bucket is anyone's writing.
        rows = "".join(
            f"<tr><td>{_text(r.type)}</td><td>{_text(r.index)}</td><td>{_badge(r.phase)}</td>"
            f"<td>{_text(r.restarts)}</td><td>{_text(r.exit_code)}</td></tr>"
            for r in status.replicas
        )
        self.replica_table.value = (
            "<style>.kfnb-replicas td, .kfnb-replicas th {padding: 0 8px}</style>"
            '<table class="kfnb-replicas"><tr><th>type</th><th>index</th><th>phase</th>'
            f"<th>restarts</th><th>exit code</th></tr>{rows}</table>"
        )
        self._render_restarts(status)
        if status.finished:
            self.stop_button.disabled = True
            self.stop_button.button_style = ""
            self.stop_button.icon = ""
            self.stop_button.description = status.phase
        failure = self.job.failure(status) if status.phase == "Failed" else None
        if failure is not None:
            detail = failure.traceback or failure.log_tail or status.message
            self.failure.value = (
                '<div class="kfnb-failure" style="border:2px solid #c62828;padding:6px;'
                'background:#fff5f5"><b style="color:#c62828">'
                f"{html.escape(str(failure))}</b><pre>{html.escape(detail)}</pre></div>"
            )
            self.failure.layout.display = None

    def _render_restarts(self, status: JobStatus) -> None:
        note = restarts_note(status)
        self.restarts.value = (
            f'<div class="kfnb-restarts" style="color:#ef6c00">{html.escape(note)}</div>'
            if note
            else ""
        )
        self.restarts.layout.display = None if note else "none"
        titles = {r.name: tab_title(r) for r in status.replicas}
        wanted = tuple(titles.get(name, name) for name in self.panes)
        if tuple(self.tabs.titles) != wanted:
            self.tabs.titles = wanted

    def _update_warnings(self, again: bool) -> None:
        """Ask the replicas that have not recorded their start yet (all of them ``again``,
        once the job has ended: a restarted replica may warn anew)."""
        for replica in self.panes:
            if again or replica not in self.replica_warnings:
                warnings = self.job.replica_warnings(replica)
                if warnings is not None:
                    self.replica_warnings[replica] = warnings
        lines = [(r, w) for r, found in self.replica_warnings.items() for w in found]
        self.warnings.value = "".join(
            f'<div class="kfnb-warning" style="color:#ef6c00">⚠ {html.escape(replica)}: '
            f"{html.escape(warning)}</div>"
            for replica, warning in lines
        )
        self.warnings.layout.display = None if lines else "none"

    def _update_scalars(self) -> None:
        if self._reader is None:
            self._reader = self.job.scalar_reader()  # from the job's store, local or S3
            if self._reader is None:
                return
        changed = self._reader.poll()
        if not changed:
            return
        self.scalars = self._reader.scalars()
        for tag in changed:
            plot = self._plot_widgets.get(tag)
            if plot is None:
                plot = self._plot_widgets[tag] = widgets.HTML()
                self.plots.children = [self._plot_widgets[t] for t in sorted(self._plot_widgets)]
            plot.value = svg_plot(tag, self.scalars[tag])

    def _watch(self) -> None:
        while not self._closed.wait(self.interval):
            if self.refresh():
                break
        self._release()

    def __repr__(self) -> str:
        """The plain-text form front ends without widgets show (nbconvert, a saved file)."""
        return self.job.summary(self.status) if self.status is not None else repr(self.job)

    # -- control -------------------------------------------------------------------

    def _on_tensorflow_messages(self, change: dict[str, Any]) -> None:
        with self._lock:  # not while the watcher appends to the panes
            for pane in self.panes.values():
                pane.show_tensorflow_messages(bool(change["new"]))

    def _on_stop(self, _: Any) -> None:
        self.stop_button.disabled = True
        self.stop_button.description = "Stopping…"
        # Deleting waits for the replicas to stop: not on the kernel's own thread.
        threading.Thread(target=self._stop_job, daemon=True).start()

    def _stop_job(self) -> None:
        try:
            self.job.delete()
        except Exception as err:  # shown, never raised into the notebook
            self.notice.value = f"kfnb: could not stop the job: {html.escape(str(err))}"
        if self._thread is None or not self._thread.is_alive():
            self.refresh()

    def _release(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def close(self) -> None:
        """Stop updating and release the file handles; then close the widgets."""
        self._closed.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._lock:
            self._release()
        super().close()
