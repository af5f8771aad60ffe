"""Static matplotlib figures of a job's scalars and of a sweep, for papers and reports
(``job.plot()``, ``sweep.plot()``). matplotlib is imported here, on first use, with
its non-interactive backend unless one was chosen already."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kfnb.job import Job
    from kfnb.metrics import Scalars
    from kfnb.sweeps.sweep import Sweep


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        from kfnb.spec import SpecError

        raise SpecError("plots need matplotlib: pip install matplotlib") from None
    if "matplotlib.pyplot" not in __import__("sys").modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scalars_figure(scalars: dict[str, Scalars], title: str = "") -> Any:
    """One axes per tag; one line per (job, run). ``scalars``: {job: {tag: {run: points}}}."""
    plt = _pyplot()
    tags = sorted({tag for by_tag in scalars.values() for tag in by_tag})
    columns = min(3, max(1, len(tags)))
    rows = max(1, -(-len(tags) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags, strict=False):
        for job, by_tag in scalars.items():
            for run, points in sorted(by_tag.get(tag, {}).items()):
                if points:
                    steps, values = zip(*points, strict=True)
                    label = run if len(scalars) == 1 else f"{job} {run}"
                    ax.plot(steps, values, marker="o" if len(points) < 3 else None, label=label)
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(tags) :]:
        ax.set_visible(False)
    if not tags:
        axes.flat[0].text(0.5, 0.5, "no scalars", ha="center", va="center")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def job_figure(job: Job) -> Any:
    return scalars_figure({job.name: job.scalars()}, title=job.name)


def sweep_figure(sweep: Sweep) -> Any:
    """Every trial's objective curve, then each parameter against the objective."""
    plt = _pyplot()
    status = sweep.status()
    spec = sweep.spec
    best = sweep.best_of(status)
    panels = 1 + len(spec.spaces)
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), squeeze=False)
    curves = axes[0][0]
    for trial in status.trials:
        if trial.curve:
            steps, values = zip(*trial.curve, strict=True)
            width = 2.5 if best and trial.name == best.name else 1.0
            curves.plot(steps, values, linewidth=width, label=trial.name)
    curves.set_title(f"{spec.objective.metric} per step")
    curves.set_xlabel("step")
    if status.trials:
        curves.legend(fontsize="x-small")
    scored = [t for t in status.trials if t.objective is not None]
    for ax, space in zip(axes[0][1:], spec.spaces, strict=True):
        xs = [t.params.get(space.name) for t in scored]
        if any(isinstance(x, str) for x in xs):
            xs = [str(x) for x in xs]
        ys = [t.objective for t in scored]
        colours = ["#228833" if best and t.name == best.name else "#0077bb" for t in scored]
        ax.scatter(xs, ys, c=colours)
        if space.kind == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(space.name)
        ax.set_ylabel(spec.objective.metric)
    figure.suptitle(sweep.summary(status), fontsize="small")
    figure.tight_layout()
    return figure
