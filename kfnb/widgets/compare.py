"""Comparing finished runs: ``%kfnb compare JOB...`` / ``kfnb.compare(...)``.

Each name is a job or a sweep (a sweep stands for its trials). The comparison shows
their scalars overlaid, one plot per tag (`kfnb.widgets.plots.svg_plot`), and their
flags and parameters side by side.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from kfnb.widgets.plots import svg_plot


@dataclass
class Comparison:
    """The runs compared: per job its scalars and settings (image, replicas, params)."""

    scalars: dict[str, Any] = field(default_factory=dict)  # {job: {tag: {run: points}}}
    settings: dict[str, dict[str, str]] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, ...]]:
        keys = sorted({k for s in self.settings.values() for k in s})
        return [(key, *(self.settings[j].get(key, "") for j in self.settings)) for key in keys]

    def overlaid(self) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """{tag: {"job run": points}}."""
        found: dict[str, dict[str, list[tuple[int, float]]]] = {}
        for job, by_tag in self.scalars.items():
            for tag, runs in by_tag.items():
                for run, points in runs.items():
                    found.setdefault(tag, {})[f"{job} {run}"] = points
        return found

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='padding:1px 8px'>{html.escape(j)}</th>" for j in self.settings)
        body = "".join(
            "<tr>"
            + "".join(f"<td style='padding:1px 8px'>{html.escape(c)}</td>" for c in row)
            + "</tr>"
            for row in self.rows()
        )
        plots = "".join(
            svg_plot(tag, runs, width=360) for tag, runs in sorted(self.overlaid().items())
        )
        return (
            f"<table class='kfnb-compare'><tr><th></th>{head}</tr>{body}</table>"
            f"<div style='display:flex;flex-wrap:wrap'>{plots}</div>"
        )

    def __repr__(self) -> str:
        rows = [("", *self.settings), *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        text = "\n".join(lines) if self.settings else "nothing compared"
        finals = []
        for tag, runs in sorted(self.overlaid().items()):
            for run, points in sorted(runs.items()):
                if points:
                    finals.append(f"{tag} {run}: {points[-1][1]:.4g} at step {points[-1][0]}")
        return "\n".join([text, *finals])

    def plot(self) -> Any:
        from kfnb.widgets.static_plots import scalars_figure

        return scalars_figure(self.scalars, title="comparison")


def _settings(job: Any, params: dict[str, Any] | None = None) -> dict[str, str]:
    from kfnb.records import load_record

    record = load_record(job.name)
    found: dict[str, str] = {}
    if record is not None:
        found["backend"] = record.backend
        found["image"] = record.image
        found["replicas"] = ",".join(f"{k.lower()}:{n}" for k, n in record.replicas.items())
    try:
        status = job.status()
        found["phase"] = status.phase
        if status.elapsed is not None:
            found["elapsed"] = f"{status.elapsed:.0f}s"
    except Exception:  # noqa: BLE001 - a job whose status is gone still compares by its files
        found["phase"] = "unknown"
    for key, value in (params or {}).items():
        found[f"param {key}"] = f"{value:.4g}" if isinstance(value, float) else str(value)
    return found


def _params_of(job: Any) -> dict[str, Any]:
    """A sweep trial's parameters, from its manifest's ``KFNB_PARAM_*`` (local jobs)."""
    import json

    root = job.artifacts
    try:
        manifest = json.loads((root / "manifest.json").read_text()) if root else {}
    except (OSError, ValueError):
        return {}
    found: dict[str, Any] = {}
    for spec in manifest.get("spec", {}).get("tfReplicaSpecs", {}).values():
        for container in spec["template"]["spec"]["containers"]:
            for item in container.get("env", []):
                if item["name"].startswith("KFNB_PARAM_"):
                    try:
                        found[item["name"][11:]] = json.loads(item.get("value", ""))
                    except ValueError:
                        found[item["name"][11:]] = item.get("value", "")
    return found


def compare(*names: str) -> Comparison:
    """A `Comparison` of the jobs (and sweeps' trials) named."""
    from kfnb.job import Job
    from kfnb.records import load_record
    from kfnb.sweeps import Sweep, SweepError
    from kfnb.sweeps.record import load_sweep

    if not names:
        raise SweepError("compare needs job or sweep names")
    result = Comparison()
    for name in names:
        if load_record(name) is None and "/" not in name and load_sweep(name) is not None:
            for trial in Sweep.attach(name).trials:
                if load_record(trial.name) is not None:
                    job = Job.attach(trial.name)
                    result.scalars[trial.name] = job.scalars()
                    result.settings[trial.name] = _settings(job, trial.params)
            continue
        job = Job.attach(name)
        result.scalars[name] = job.scalars()
        result.settings[name] = _settings(job, _params_of(job))
    return result
