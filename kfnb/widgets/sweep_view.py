"""`SweepView`: a live view of a sweep. A table of its trials (sortable, the best one
highlighted), every trial's objective curve overlaid, and each parameter against the
objective, refreshed about once a second until the sweep ends."""

from __future__ import annotations

import html
import threading
from typing import TYPE_CHECKING

import ipywidgets as widgets

from kfnb.widgets.sweep_plots import curves_svg, scatters_svg, sort_trials, trials_table

if TYPE_CHECKING:
    from kfnb.sweeps.sweep import Sweep, SweepStatus

_PHASE_COLOURS = {"Succeeded": "#228833", "Failed": "#cc3311", "Running": "#0077bb"}


class SweepView(widgets.VBox):  # type: ignore[misc]
    """A live view of ``sweep``. Display it; close it to stop its updates."""

    def __init__(self, sweep: Sweep, *, interval: float = 1.0, start: bool = True) -> None:
        self.sweep = sweep
        self.interval = interval
        self._closed = threading.Event()
        self._lock = threading.Lock()
        params = [s.name for s in sweep.spec.spaces]
        self.header = widgets.HTML()
        self.sort_by = widgets.Dropdown(
            options=["objective", "trial", "state", "duration", *params],
            value="objective",
            description="sort by",
            layout=widgets.Layout(width="220px"),
        )
        self.sort_by.observe(lambda _change: self.refresh(), names="value")
        self.table = widgets.HTML()
        self.curves = widgets.HTML()
        self.scatters = widgets.HTML()
        self.failure = widgets.HTML()
        self.status: SweepStatus | None = None
        super().__init__(
            children=[
                widgets.HBox([self.header, self.sort_by]),
                self.table,
                widgets.HBox(
                    [self.curves, self.scatters], layout=widgets.Layout(flex_flow="row wrap")
                ),
                self.failure,
            ]
        )
        self.add_class("kfnb-sweepview")
        done = self.refresh()
        self._thread: threading.Thread | None = None
        if start and not done:
            self._thread = threading.Thread(
                target=self._watch, name=f"kfnb-sweep-{sweep.name}", daemon=True
            )
            self._thread.start()

    def refresh(self) -> bool:
        """Bring the view up to date once; True once the sweep has ended. Never raises."""
        with self._lock:
            try:
                status = self.sweep.status()
            except Exception as err:  # noqa: BLE001 - say it in the view, try again later
                self.header.value = (
                    f"<b>{html.escape(self.sweep.name)}</b>: {html.escape(str(err))}"
                )
                return False
            self.status = status
            spec = self.sweep.spec
            best = self.sweep.best_of(status)
            best_name = best.name if best else None
            colour = _PHASE_COLOURS.get(status.phase, "#666")
            self.header.value = (
                f"<b>{html.escape(self.sweep.summary(status))}</b> "
                f"<span style='color:{colour}'>{html.escape(status.message)}</span>"
            )
            ordered = sort_trials(status.trials, self.sort_by.value, spec.objective.maximize)
            params = [s.name for s in spec.spaces]
            self.table.value = trials_table(ordered, params, best_name, spec.objective.metric)
            self.curves.value = curves_svg(status.trials, spec.objective.metric)
            self.scatters.value = "".join(scatters_svg(status.trials, spec.spaces, best_name))
            self.failure.value = (
                f"<pre style='color:#cc3311'>{html.escape(status.first_failure)}</pre>"
                if status.phase == "Failed" and status.first_failure
                else ""
            )
            return status.done

    def _watch(self) -> None:
        while not self._closed.wait(self.interval):
            if self.refresh():
                return

    def close(self) -> None:
        self._closed.set()
        super().close()

    def __repr__(self) -> str:
        return f"<SweepView {self.sweep.summary(self.status) if self.status else self.sweep.name}>"
