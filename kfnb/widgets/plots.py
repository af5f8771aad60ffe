"""Small SVG line plots of TensorBoard scalars: one per tag, one line per run.

SVG in an HTML widget needs no plotting library in the kernel (matplotlib is
slow to import and re-sends a PNG per update) and no front-end extension,
and a saved notebook still shows it.
"""

from __future__ import annotations

import html

Points = list[tuple[int, float]]
# TensorBoard's own run colours, so train/validation look as users know them.
RUN_COLOURS = {"train": "#ff7043", "validation": "#0077bb", "evaluator": "#009988"}
OTHER_COLOURS = ("#cc3311", "#33bbee", "#ee3377", "#bbbbbb", "#000000")


def run_colour(run: str, index: int) -> str:
    return RUN_COLOURS.get(run) or OTHER_COLOURS[index % len(OTHER_COLOURS)]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def svg_plot(tag: str, runs: dict[str, Points], width: int = 280, height: int = 170) -> str:
    """An SVG plot of ``runs`` ({run: [(step, value)]}) titled ``tag``."""
    left, right, top, bottom = 46, 10, 22, 34
    inner_w, inner_h = width - left - right, height - top - bottom
    points = [p for series in runs.values() for p in series]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="kfnb-plot" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" '
        f'font-size="10">',
        f'<text x="{left}" y="14" font-size="12" font-weight="bold">{html.escape(tag)}</text>',
        f'<rect x="{left}" y="{top}" width="{inner_w}" height="{inner_h}" fill="none" '
        f'stroke="#ccc"/>',
    ]
    if points:
        steps = [s for s, _ in points]
        values = [v for _, v in points]
        x0, x1 = min(steps), max(steps)
        y0, y1 = min(values), max(values)
        if y0 == y1:  # a flat series: a little room around its value, not a unit band
            pad = abs(y0) * 0.05 or 0.5
            y0, y1 = y0 - pad, y1 + pad
        if x0 == x1:
            x0, x1 = x0 - 1, x1 + 1

        def x(step: float) -> float:
            return left + (step - x0) / (x1 - x0) * inner_w

        def y(value: float) -> float:
            return top + (1 - (value - y0) / (y1 - y0)) * inner_h

        parts += [
            f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{_fmt(y1)}</text>',
            f'<text x="{left - 4}" y="{top + inner_h}" text-anchor="end">{_fmt(y0)}</text>',
            f'<text x="{left}" y="{top + inner_h + 12}">{x0}</text>',
            f'<text x="{left + inner_w}" y="{top + inner_h + 12}" text-anchor="end">{x1}</text>',
        ]
        legend_step = inner_w / max(len(runs), 1)
        for index, (run, series) in enumerate(sorted(runs.items())):
            colour = run_colour(run, index)
            coords = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in sorted(series))
            parts.append(
                f'<polyline class="kfnb-run" data-run="{html.escape(run)}" points="{coords}" '
                f'fill="none" stroke="{colour}" stroke-width="1.8"/>'
            )
            if len(series) == 1:
                ((s, v),) = series
                parts.append(f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>')
            last = sorted(series)[-1][1] if series else None
            # Room for the last value only while two runs share the legend.
            label = f"{run} {_fmt(last)}" if last is not None and len(runs) <= 2 else run
            parts.append(
                f'<text x="{left + 4 + index * legend_step:.0f}" y="{height - 6}" '
                f'fill="{colour}">'
                f"{html.escape(label)}</text>"
            )
    else:
        parts.append(f'<text x="{left + 8}" y="{top + inner_h / 2}" fill="#888">no data yet</text>')
    parts.append("</svg>")
    return "".join(parts)
