"""`PipelineView`: a live view of a pipeline run, local or an Argo Workflow: its DAG
(`svg_dag`), its parameters, and a step's `JobView` (logs, scalars) when its button is
clicked. A pure view over the `PipelineRun` handle, refreshed by one background thread
that ends when the run has ended or the widget is closed."""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as widgets

from kfnb.pipelines.run import PipelineRun
from kfnb.pipelines.run_status import RunStatus
from kfnb.widgets.job_view import _badge
from kfnb.widgets.pipeline_svg import svg_dag


class PipelineView(widgets.VBox):  # type: ignore[misc]
    """A live view of ``run``. Display it; close it to stop its updates."""

    def __init__(self, run: PipelineRun, *, interval: float = 0.5, start: bool = True) -> None:
        self.run = run
        self.interval = interval
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.status: RunStatus | None = None
        self.header = widgets.HTML()
        self.parameters = widgets.HTML()
        self.dag = widgets.HTML()
        self.message = widgets.HTML()
        self.steps = widgets.ToggleButtons(options=[], value=None, description="Step:")
        self.steps.observe(self._on_step, names="value")
        self.step_view = widgets.Box()
        self.job_view: Any = None
        super().__init__([self.header, self.parameters, self.dag, self.message, self.steps,
                          self.step_view])  # fmt: skip
        self.add_class("kfnb-pipelineview")
        finished = self.refresh()
        if start and not finished:
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name=f"kfnb-pipeline-{run.name}")  # fmt: skip
            self._thread.start()

    def refresh(self) -> bool:
        """Bring the view up to date once; True when the run has ended. Never raises."""
        try:
            status = self.run.status()
        except Exception as err:  # a view must never raise into the notebook
            self.message.value = f"kfnb: cannot read the run: {html.escape(str(err))}"
            return True
        self.status = status
        where = f"{status.pipeline}, {status.backend}"
        self.header.value = (
            f"<b>Pipeline run {html.escape(status.name)}</b> ({html.escape(where)}) "
            f"{_badge(status.phase)}"
        )
        if status.parameters:
            shown = ", ".join(
                f"{html.escape(k)}={html.escape(repr(v))}" for k, v in status.parameters.items()
            )
            self.parameters.value = f"parameters: {shown}"
        self.dag.value = svg_dag(status)
        self.message.value = html.escape(status.message)
        names = [n for n, s in status.steps.items() if s.job or s.phase != "Pending"]
        if list(self.steps.options) != names:
            self.steps.options = names
        return status.done

    def _watch(self) -> None:
        while not self._closed.wait(self.interval):
            if self.refresh():
                break

    def _on_step(self, change: dict[str, Any]) -> None:
        """A step's button: its JobView below the DAG (the cluster's steps have none here)."""
        from kfnb.widgets.job_view import JobView

        if self.job_view is not None:
            self.job_view.close()
            self.job_view = None
        step = change["new"]
        if not step:
            self.step_view.children = []
            return
        try:
            job = self.run.job(step)
        except Exception as err:
            self.step_view.children = [widgets.HTML(html.escape(str(err)))]
            return
        if job is None:
            state = self.run.step(step)
            text = f"step {step} ran no job ({state.phase}); outputs: {state.outputs}"
            self.step_view.children = [widgets.HTML(html.escape(text))]
            return
        self.job_view = JobView(job)
        self.step_view.children = [self.job_view]

    def __repr__(self) -> str:
        return self.run.summary()

    def close(self) -> None:
        self._closed.set()
        if self.job_view is not None:
            self.job_view.close()
        super().close()
