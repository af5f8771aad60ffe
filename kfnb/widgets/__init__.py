"""Views of jobs: a live widget under a cell in Jupyter, concise text in a terminal.

Views only read a `Job` (and its metrics); they hold no logic of their own.
ipywidgets is imported here only when a widget is shown.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from kfnb.job import Job


def widgets_available() -> bool:
    """True in a Jupyter kernel with ipywidgets installed (a front end can render them)."""
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


def job_view(job: Job, **options: Any) -> Any:
    from kfnb.widgets.job_view import JobView

    return JobView(job, **options)


def show_job(job: Job, wait: bool = False) -> None:
    """Show ``job`` live under the cell; with ``wait``, block until it ends.

    In a terminal the same call prints phase changes and the chief's log lines.
    Raises `JobFailed` after waiting for a job that failed.
    """
    if widgets_available():
        from IPython.display import display

        display(job_view(job))  # type: ignore[no-untyped-call]
    elif wait:
        from kfnb.widgets.progress import print_progress

        print_progress(job)
    if wait:
        job.wait()
