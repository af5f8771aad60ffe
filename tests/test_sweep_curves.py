"""A cluster sweep's per-epoch curves, read from each trial's own artifacts in its s3://
store: the FAKE API server's fake Katib controller makes the Trials (observations only,
as Katib's status holds), moto's S3 server holds what the trials' replicas uploaded
(written here as a replica's syncer would: the chief's tensorboard/ and reports.jsonl
under ``<store>/<trial>/``). Not Katib, not Kubernetes, not AWS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kfnb.storage import open_store
from kfnb.sweeps import SweepSpec, start_sweep
from tests import s3_server
from tests.test_metrics import event, write_records

pytest.importorskip("minio")
pytest.importorskip("moto")

CELL = "print(tfjob.params['lr'])\n"
METRIC = "validation/epoch_accuracy"
EVENTS = "tensorboard/validation/events.out.tfevents.1.chief"


def accuracy(step: int, value: float) -> bytes:
    from tensorboard.compat.proto import summary_pb2

    return event(step, summary_pb2.Summary.Value(tag="epoch_accuracy", simple_value=value))


def event_bytes(tmp_path: Path, name: str, points: list[tuple[int, float]]) -> bytes:
    path = tmp_path / "events" / name
    write_records(path, [accuracy(step, value) for step, value in points])
    return path.read_bytes()


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, moto_port: int) -> str:
    s3_server.use_endpoint(monkeypatch, moto_port, "kfnb-access", "kfnb-secret")
    open_store("s3://kfnb-sweep-curves").check()
    return "s3://kfnb-sweep-curves/runs"


def test_katib_trials_curves_come_from_their_store(
    fake_kube: Any, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kfnb.sweeps.curves import TrialCurves
    from kfnb.sweeps.sweep import Sweep
    from kfnb.widgets.sweep_view import SweepView

    fake_kube.katib_results = [0.6, 0.9]
    spec = SweepSpec.build(["lr=loguniform(1e-4, 1e-2)"], f"maximize {METRIC}", trials=2,
                           parallel=1)  # fmt: skip
    sweep = start_sweep(CELL, spec, name="sw", backend="kubernetes", storage=store)
    first, second = (t.name for t in sweep.wait(timeout=30).trials)
    bucket = open_store(store)
    # The first trial's chief wrote TensorBoard events, the second's tfjob.report() lines.
    bucket.write(f"{first}/{EVENTS}", event_bytes(tmp_path, "a", [(0, 0.2), (1, 0.4), (2, 0.6)]))
    reports = [{"name": METRIC, "step": s, "value": v} for s, v in [(0, 0.5), (1, 0.9)]]
    bucket.write(f"{second}/reports.jsonl", "".join(json.dumps(r) + "\n" for r in reports).encode())

    attached = Sweep.attach("sw")  # a view opened on the sweep, as after a kernel restart
    view = SweepView(attached, start=False)
    assert view.status is not None
    curves = {t.name: t.curve for t in view.status.trials}
    assert set(curves) == {first, second}
    assert [s for s, _ in curves[first]] == [0, 1, 2]  # every epoch, not Katib's last only
    assert [v for _, v in curves[first]] == pytest.approx([0.2, 0.4, 0.6])  # float32 events
    assert curves[second] == [(0, 0.5), (1, 0.9)]
    svg = view.curves.value
    runs = {p.split('data-run="')[1].split('"')[0]: p for p in svg.split("<polyline")[1:]}
    assert set(runs) == {first, second}
    assert runs[first].split('points="')[1].split('"')[0].count(",") == 3  # three epochs
    figure = attached.plot()
    lines = {line.get_label(): list(line.get_ydata()) for line in figure.axes[0].lines}
    assert lines == {first: pytest.approx([0.2, 0.4, 0.6]), second: pytest.approx([0.5, 0.9])}
    assert [t.objective for t in view.status.trials] == [0.6, 0.9]  # still Katib's

    # A running trial: each refresh fetches only the bytes added since (ranged reads).
    trial = view.status.trials[0]
    trial.state, trial.curve = "Running", []
    live = TrialCurves(METRIC)
    key = f"{first}/{EVENTS}"
    reads: list[tuple[str, int]] = []
    real_read = type(bucket).read

    def counted(self: Any, name: str, offset: int = 0) -> bytes | None:
        reads.append((name, offset))
        return real_read(self, name, offset)

    monkeypatch.setattr(type(bucket), "read", counted)
    started = event_bytes(tmp_path, "b", [(0, 0.1)])
    bucket.write(key, started)
    live.fill([trial])
    assert [s for s, _ in trial.curve] == [0]
    grown = event_bytes(tmp_path, "b", [(1, 0.3)])  # the same file, longer
    bucket.write(key, grown)
    live.fill([trial])
    assert [v for _, v in trial.curve] == pytest.approx([0.1, 0.3])
    live.fill([trial])  # nothing new: no event bytes fetched again
    assert [r for r in reads if r[0].endswith(EVENTS)] == [(key, 0), (key, len(started))]
    trial.state = "Succeeded"
    live.fill([trial])  # read once more at its end, then never again
    reads.clear()
    live.fill([trial])
    assert reads == [] and [v for _, v in trial.curve] == pytest.approx([0.1, 0.3])

    # The store unreachable: said once in the log, then left alone for a while, so a view
    # refreshing each second is not held up by a client's retries at every tick.
    from kfnb.storage import StoreError

    calls: list[str] = []

    def unreachable(self: Any, prefix: str = "") -> list[Any]:
        calls.append(prefix)
        raise StoreError("cannot reach the S3 endpoint")

    monkeypatch.setattr(type(bucket), "list", unreachable)
    trial.state, trial.curve = "Running", [(0, 0.6)]  # Katib's last observation
    cut_off = TrialCurves(METRIC)
    cut_off.fill([trial])
    cut_off.fill([trial])
    assert len(calls) == 1 and trial.curve == [(0, 0.6)]  # what Katib said stays


def test_katib_trials_curves_from_a_pvc_store(fake_kube: Any, tmp_path: Path) -> None:
    """A pvc:// store: the trials' pods write the claim, this notebook reads its mount."""
    from kfnb.config import settings
    from kfnb.sweeps.sweep import Sweep

    mount = tmp_path / "claim"
    mount.mkdir()
    settings().pvc_mounts = {"data": str(mount)}
    fake_kube.claim("data")
    fake_kube.katib_results = [0.7]
    spec = SweepSpec.build(["lr=loguniform(1e-4, 1e-2)"], "maximize accuracy", trials=1,
                           parallel=1)  # fmt: skip
    cell = "tfjob.report(accuracy=tfjob.params['lr'])\n"  # the StdOut collector: no s3 needed
    sweep = start_sweep(cell, spec, name="sw", backend="kubernetes", storage="pvc://data/runs")
    (trial,) = sweep.wait(timeout=30).trials
    job_dir = mount / "runs" / trial.name
    job_dir.mkdir(parents=True)
    reports = [{"name": "accuracy", "step": s, "value": v} for s, v in [(0, 0.3), (1, 0.7)]]
    (job_dir / "reports.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reports))
    (read,) = Sweep.attach("sw").status().trials
    assert read.curve == [(0, 0.3), (1, 0.7)]  # every report, not Katib's last only
