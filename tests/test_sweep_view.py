"""A sweep's views: `SweepView` (table, overlaid curves, parameters against the objective),
the static matplotlib figures, `kfnb.compare`, and the objective read from a trial's
TensorBoard events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from kfnb.sweeps import Sweep, SweepSpec, start_sweep
from kfnb.sweeps.record import SweepRecord, TrialState, save_sweep, write_state

pytest.importorskip("optuna")

SPEC = SweepSpec.build(["lr=loguniform(1e-4, 1e-1)", "opt=choice('adam', 'sgd')"], "maximize acc")


def recorded_sweep() -> Sweep:
    """A finished sweep's record and state as the runner writes them (no runner ran)."""
    now = time.time()
    trials = [
        TrialState(0, "sv-0", {"lr": 0.001, "opt": "adam"}, "Succeeded", 0.8, now - 9, now - 5,
                   curve=[(0, 0.5), (1, 0.8)]),
        TrialState(1, "sv-1", {"lr": 0.05, "opt": "sgd"}, "Succeeded", 0.9, now - 8, now - 7,
                   curve=[(0, 0.6), (1, 0.9)]),
        TrialState(2, "sv-2", {"lr": 0.0002, "opt": "sgd"}, "EarlyStopped", 0.1, now - 6, now - 5,
                   curve=[(0, 0.1)]),
        TrialState(3, "sv-3", {"lr": 0.01, "opt": "adam"}, "Failed", None, now - 4, now - 3,
                   message="ValueError: boom"),
    ]  # fmt: skip
    save_sweep(SweepRecord("sv", "local", "/tmp/jobs", SPEC.to_json()))
    write_state(
        "sv",
        {"phase": "Succeeded", "reason": "ExperimentMaxTrialsReached", "message": "done",
         "started": now - 10, "finished": now, "trials": [t.to_json() for t in trials]},
    )  # fmt: skip
    return Sweep.attach("sv")


def test_sweep_view_shows_trials_best_curves_and_parameters() -> None:
    from kfnb.widgets.sweep_view import SweepView

    view = SweepView(recorded_sweep(), start=False)
    table = view.table.value
    rows = table.split("<tr class='kfnb-trial'")[1:]
    assert [r.split("data-trial='")[1].split("'")[0] for r in rows] == [
        "sv-1",
        "sv-0",
        "sv-2",
        "sv-3",
    ]
    assert "background" in rows[0] and "background" not in "".join(rows[1:])  # the best
    assert view.curves.value.count("<polyline") == 3  # every trial with a curve, overlaid
    scatters = view.scatters.value
    assert scatters.count("class='kfnb-scatter'") + scatters.count('class="kfnb-scatter"') == 2
    # three trials with an objective in each of the two plots, the best one marked in each
    assert scatters.count("kfnb-point") == 6 and scatters.count("kfnb-best") == 2
    assert "log scale" in scatters  # lr is loguniform
    assert "Sweep sv (local): Succeeded" in view.header.value
    view.sort_by.value = "duration"
    durations = view.table.value.split("<tr class='kfnb-trial'")[1:]
    assert durations[0].split("data-trial='")[1].startswith("sv-1")  # 1 s, the shortest
    view.sort_by.value = "opt"
    opts = [
        r.split("data-trial='")[1][:4] for r in view.table.value.split("<tr class='kfnb-trial'")[1:]
    ]
    assert opts[:2] == ["sv-0", "sv-3"]  # adam first


def test_sweep_plot_is_a_matplotlib_figure() -> None:
    figure = recorded_sweep().plot()
    assert len(figure.axes) == 3  # curves, then one per parameter
    assert len(figure.axes[0].lines) == 3
    assert figure.axes[1].get_xscale() == "log"


TB_CELL = """
import os
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
path = os.path.join(tfjob.logdir, "validation", "events.out.tfevents.1.kfnb-test")
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "wb") as f:
    writer = RecordWriter(f)
    writer.write(event_pb2.Event(file_version="brain.Event:2").SerializeToString())
    for step in range(3):
        x = tfjob.params["x"] * step
        value = summary_pb2.Summary.Value(tag="epoch_accuracy", simple_value=x)
        summary = summary_pb2.Summary(value=[value])
        writer.write(event_pb2.Event(step=step, summary=summary).SerializeToString())
"""


def test_objective_from_tensorboard_events_then_compare_and_plot(kfnb_home: Path) -> None:
    import kfnb

    sweep = start_sweep(
        TB_CELL,
        SweepSpec.build(
            ["x=grid(0.25, 0.5)"], "maximize validation/epoch_accuracy", algorithm="grid"
        ),
        backend="local",
    )
    status = sweep.wait(timeout=120)
    assert sorted(t.objective for t in status.trials) == [0.5, 1.0]  # the last step's
    for trial in status.trials:
        assert trial.curve == [(0, 0.0), (1, trial.params["x"]), (2, 2 * trial.params["x"])]
    assert sweep.best is not None and sweep.best.params == {"x": 0.5}
    comparison = kfnb.compare(sweep.name)  # a sweep stands for its trials
    assert set(comparison.settings) == {t.name for t in status.trials}
    assert "param x" in repr(comparison) and "epoch_accuracy" in comparison._repr_html_()
    runs = comparison.overlaid()["epoch_accuracy"]
    assert len(runs) == 2 and all(len(points) == 3 for points in runs.values())
    one = kfnb.compare(*(t.name for t in status.trials))
    assert one.rows() == comparison.rows()
    figure = sweep.best.plot()  # job.plot()
    assert figure.axes[0].get_title() == "epoch_accuracy" and len(figure.axes[0].lines) == 1


def test_show_sweep_with_widgets_displays_the_view_and_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import IPython.display

    import kfnb.widgets as views
    from kfnb.widgets.sweep_view import SweepView

    shown: list[Any] = []

    class Handle:
        def update(self, obj: Any) -> None:
            shown.append(obj)

    def display(obj: Any, **kwargs: Any) -> Handle:
        shown.append(obj)
        return Handle()

    monkeypatch.setattr(views, "widgets_available", lambda: True)
    monkeypatch.setattr(IPython.display, "display", display)
    sweep = recorded_sweep()
    views.show_sweep(sweep, wait=True)
    assert len(shown) == 2 and all(isinstance(v, SweepView) for v in shown)
    assert shown[-1].status is not None and shown[-1].status.phase == "Succeeded"
