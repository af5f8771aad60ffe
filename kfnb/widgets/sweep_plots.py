"""SVG and HTML pieces of a sweep's view: the trials table, the objective curves
overlaid (`kfnb.widgets.plots.svg_plot`), and each parameter against the objective.
Plain SVG/HTML, as the scalar plots: no front-end build, and saved notebooks show them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from kfnb.widgets.plots import svg_plot

BEST = "#228833"
OTHER = "#0077bb"
# Columns of the trials table: header and how a trial sorts by it.
COLUMNS = ("trial", "state", "objective", "duration")


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def sort_trials(trials: Sequence[Any], by: str, maximize: bool) -> list[Any]:
    """Trials ordered by a column or a parameter; the objective best first, missing last."""
    if by == "objective":
        scored = [t for t in trials if t.objective is not None]
        rest = [t for t in trials if t.objective is None]
        return sorted(scored, key=lambda t: t.objective, reverse=maximize) + rest
    if by == "duration":
        return sorted(trials, key=lambda t: (t.duration is None, t.duration or 0.0))
    if by in ("state", "trial"):
        return sorted(trials, key=lambda t: (t.state, t.number) if by == "state" else t.number)
    return sorted(trials, key=lambda t: (by not in t.params, str(type(t.params.get(by))),
                                         t.params.get(by, 0)))  # fmt: skip


def trials_table(
    trials: Sequence[Any], params: Sequence[str], best: str | None, metric: str
) -> str:
    """An HTML table of the trials, the best one's row highlighted."""
    head = ["trial", *params, "state", metric, "duration"]
    rows = [
        "<table class='kfnb-sweep-trials' style='border-collapse:collapse;font-size:12px'>",
        "<tr>"
        + "".join(
            f"<th style='text-align:left;padding:1px 8px'>{html.escape(h)}</th>" for h in head
        )
        + "</tr>",  # fmt: skip
    ]
    for t in trials:
        style = f" style='background:{BEST}22;font-weight:bold'" if t.name == best else ""
        cells = [
            t.name,
            *(_value(t.params.get(p, "")) for p in params),
            t.state,
            "" if t.objective is None else f"{t.objective:.4g}",
            "" if t.duration is None else f"{t.duration:.0f}s",
        ]
        rows.append(
            f"<tr class='kfnb-trial' data-trial='{html.escape(t.name)}'{style}>"
            + "".join(f"<td style='padding:1px 8px'>{html.escape(c)}</td>" for c in cells)
            + "</tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def curves_svg(trials: Sequence[Any], metric: str) -> str:
    """Every trial's objective per step, overlaid."""
    runs = {t.name: list(t.curve) for t in trials if t.curve}
    return svg_plot(metric, runs, width=420, height=220)


def scatter_svg(
    param: str,
    points: Sequence[tuple[Any, float, bool]],
    log: bool = False,
    width: int = 220,
    height: int = 170,
) -> str:
    """``param`` (x) against the objective (y), one dot per trial, the best one green;
    ``log`` for a log-scale axis, strings as evenly spaced categories."""
    left, right, top, bottom = 46, 10, 22, 30
    inner_w, inner_h = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="kfnb-scatter" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" '
        f'font-size="10">',
        f'<text x="{left}" y="14" font-size="12" font-weight="bold">{html.escape(param)}</text>',
        f'<rect x="{left}" y="{top}" width="{inner_w}" height="{inner_h}" fill="none" '
        f'stroke="#ccc"/>',
    ]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _, _ in points)
    if points:
        if numeric:
            xs = [math.log10(x) if log and x > 0 else float(x) for x, _, _ in points]
            labels = [_value(min(p[0] for p in points)), _value(max(p[0] for p in points))]
        else:
            categories = sorted({str(x) for x, _, _ in points})
            xs = [float(categories.index(str(x))) for x, _, _ in points]
            labels = [categories[0], categories[-1]]
        ys = [y for _, y, _ in points]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        if x0 == x1:
            x0, x1 = x0 - 1, x1 + 1
        if y0 == y1:
            pad = abs(y0) * 0.05 or 0.5
            y0, y1 = y0 - pad, y1 + pad
        parts += [
            f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{y1:.4g}</text>',
            f'<text x="{left - 4}" y="{top + inner_h}" text-anchor="end">{y0:.4g}</text>',
            f'<text x="{left}" y="{top + inner_h + 12}">{html.escape(labels[0])}</text>',
            f'<text x="{left + inner_w}" y="{top + inner_h + 12}" text-anchor="end">'
            f"{html.escape(labels[1])}</text>",
        ]
        for xv, (_, yv, best) in zip(xs, points, strict=True):
            cx = left + 6 + (xv - x0) / (x1 - x0) * (inner_w - 12)
            cy = top + 4 + (1 - (yv - y0) / (y1 - y0)) * (inner_h - 8)
            parts.append(
                f'<circle class="kfnb-point{" kfnb-best" if best else ""}" cx="{cx:.1f}" '
                f'cy="{cy:.1f}" r="{4 if best else 3}" fill="{BEST if best else OTHER}"/>'
            )
        if log and numeric:
            parts.append(f'<text x="{left + inner_w}" y="{height - 4}" text-anchor="end" '
                         f'fill="#888">log scale</text>')  # fmt: skip
    else:
        parts.append(f'<text x="{left + 8}" y="{top + inner_h / 2}" fill="#888">no data yet</text>')
    parts.append("</svg>")
    return "".join(parts)


def scatters_svg(trials: Sequence[Any], spaces: Sequence[Any], best: str | None) -> list[str]:
    """One `scatter_svg` per parameter, for the trials with an objective."""
    scored = [t for t in trials if t.objective is not None]
    return [
        scatter_svg(
            s.name,
            [
                (t.params[s.name], float(t.objective), t.name == best)
                for t in scored
                if s.name in t.params
            ],  # fmt: skip
            log=s.kind == "loguniform",
        )
        for s in spaces
    ]
