"""Views of jobs: a live widget under a cell in Jupyter, concise text in a terminal.

Views only read a `Job` (and its metrics) or a `PredictionFeed`; they hold no
logic of their own. ipywidgets is imported only when a widget is shown:
``PredictionView`` is imported from here on first use.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kfnb.job import Job
    from kfnb.sweeps.sweep import Sweep

if TYPE_CHECKING:
    from kfnb.widgets.prediction_view import PredictionView as PredictionView


def __getattr__(name: str) -> Any:
    """``kfnb.widgets.PredictionView`` (and ``PipelineView``) without importing ipywidgets
    with the package."""
    if name == "PredictionView":
        from kfnb.widgets.prediction_view import PredictionView

        return PredictionView
    if name == "PipelineView":
        from kfnb.widgets.pipeline_view import PipelineView

        return PipelineView
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Jobs whose view this cell has shown already (cleared when the next cell runs), so
# the Job a `%%tfjob --wait` cell returns is not shown a second time.
_shown_this_cell: set[int] = set()


def widgets_available() -> bool:
    """True in a Jupyter kernel with ipywidgets installed (a front end can render them).

    A kernel cannot tell whether anything renders its widgets, so a headless run
    says so with ``KFNB_WIDGETS=0`` in the kernel's environment (notebooks/run_demo.py
    sets it; do the same for nbconvert or papermill) and gets the terminal's text
    progress as the cells' output instead of views nobody sees.
    """
    if os.environ.get("KFNB_WIDGETS", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return (
        shell is not None
        and getattr(shell, "kernel", None) is not None
        and importlib.util.find_spec("ipywidgets") is not None
    )


def view_of(job: Job, **options: Any) -> Any:
    """A live `JobView` of ``job`` (ipywidgets imported here, on first use)."""
    from kfnb.widgets.job_view import JobView

    return JobView(job, **options)


def _display_view(job: Job) -> Any:
    from IPython.display import display

    _shown_this_cell.add(id(job))
    return display(view_of(job), display_id=True)  # type: ignore[no-untyped-call]


def show_job(job: Job, wait: bool = False) -> None:
    """Show ``job`` live under the cell; with ``wait``, block until it ends.

    Without ``wait`` the job's view comes from IPython displaying the returned
    `Job` (see `register_display`). Where widgets cannot render (a terminal, a
    headless run: `widgets_available`), ``wait`` prints phase changes and every
    replica's log lines. Raises `JobFailed` after waiting for a failed job.
    """
    if not wait:
        return
    if widgets_available():
        handle = _display_view(job)  # before blocking, so it updates while the cell waits
        try:
            job.wait()
        finally:
            # The widget updates itself; its plain-text form (what a saved or headless
            # notebook shows) is refreshed here with the final state.
            handle.update(view_of(job, start=False))
    else:
        from kfnb.widgets.progress import print_progress

        print_progress(job)
        job.wait()


def show_sweep(sweep: Sweep, wait: bool = False) -> None:
    """Show ``sweep`` under the cell; with ``wait``, block until it ends (raises
    `SweepFailed` for a failed sweep)."""
    if not wait:
        return
    if widgets_available():
        from IPython.display import display

        from kfnb.widgets.sweep_view import SweepView

        view = SweepView(sweep)
        _shown_this_cell.add(id(sweep))
        handle = display(view, display_id=True)  # type: ignore[no-untyped-call]
        try:
            sweep.wait()
        finally:
            view.refresh()
            handle.update(view)
    else:
        from kfnb.widgets.sweep_progress import print_sweep_progress

        print_sweep_progress(sweep)
        sweep.wait()


def _display_sweep(sweep: Sweep) -> None:
    """How a kernel displays a `Sweep`: its live view."""
    from IPython.display import display

    from kfnb.widgets.sweep_view import SweepView

    if id(sweep) not in _shown_this_cell:
        display(SweepView(sweep))  # type: ignore[no-untyped-call]


def _display_job(job: Job) -> None:
    """How a kernel displays a `Job` (a cell's result, ``job`` alone): its live view."""
    if id(job) not in _shown_this_cell:
        _display_view(job)


def _display_run(run: Any) -> None:
    """How a kernel displays a `PipelineRun`: its live `PipelineView`."""
    from IPython.display import display

    from kfnb.widgets.pipeline_view import PipelineView

    if id(run) not in _shown_this_cell:
        _shown_this_cell.add(id(run))
        display(PipelineView(run))  # type: ignore[no-untyped-call]


def _new_cell(*_: Any) -> None:
    _shown_this_cell.clear()


def register_display(shell: Any) -> None:
    """Display `Job` objects as live views in this kernel (a terminal keeps the text)."""
    if not widgets_available():
        return
    # By name: %load_ext need not import kfnb.job to register it.
    formatter = shell.display_formatter.ipython_display_formatter
    formatter.for_type_by_name("kfnb.job", "Job", _display_job)
    formatter.for_type_by_name("kfnb.sweeps.sweep", "Sweep", _display_sweep)
    formatter.for_type_by_name("kfnb.pipelines.run", "PipelineRun", _display_run)
    shell.events.register("pre_run_cell", _new_cell)


def unregister_display(shell: Any) -> None:
    formatter = shell.display_formatter.ipython_display_formatter
    formatter.pop("kfnb.sweeps.sweep.Sweep", None)
    formatter.pop("kfnb.pipelines.run.PipelineRun", None)
    if formatter.pop("kfnb.job.Job", None) is not None:
        shell.events.unregister("pre_run_cell", _new_cell)
