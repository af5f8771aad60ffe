"""A pipeline run drawn as the user would sketch it: steps as boxes in columns by depth,
each with its phase and duration, arrows from a step to those that run after it. SVG,
like the scalar plots: no plotting library, no front-end extension, kept in a saved file."""

from __future__ import annotations

import html

from kfnb.pipelines.run_status import RunStatus

PHASE_FILL = {
    "Pending": "#eeeeee",
    "Running": "#bbdefb",
    "Succeeded": "#c8e6c9",
    "Failed": "#ffcdd2",
    "Error": "#ffcdd2",
    "Skipped": "#f5f5f5",
    "Omitted": "#f5f5f5",
}
BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 150, 46, 50, 16, 10


def layers(deps: dict[str, list[str]]) -> dict[str, int]:
    """Each step's column: the longest chain of dependencies before it."""
    depth: dict[str, int] = {}

    def of(step: str, seen: frozenset[str]) -> int:
        if step not in depth:
            before = [d for d in deps.get(step, []) if d in deps and d not in seen]
            depth[step] = 1 + max((of(d, seen | {step}) for d in before), default=-1)
        return depth[step]

    for step in deps:
        of(step, frozenset())
    return depth


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def svg_dag(status: RunStatus) -> str:
    """The run's DAG as one SVG: a box per step (name, phase, duration), an arrow per
    dependency; each box has the class ``kfnb-step`` and ``data-step`` its name."""
    deps = {n: list(status.deps.get(n, [])) for n in status.steps}
    depth = layers(deps)
    columns: dict[int, list[str]] = {}
    for step in status.steps:
        columns.setdefault(depth[step], []).append(step)
    where: dict[str, tuple[int, int]] = {}
    for column, names in columns.items():
        for row, name in enumerate(names):
            x = MARGIN + column * (BOX_W + GAP_X)
            y = MARGIN + row * (BOX_H + GAP_Y)
            where[name] = (x, y)
    width = MARGIN * 2 + (max(columns, default=0) + 1) * (BOX_W + GAP_X) - GAP_X
    height = MARGIN * 2 + max((len(v) for v in columns.values()), default=1) * (BOX_H + GAP_Y)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="kfnb-dag" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" '
        'font-size="11">',
        '<defs><marker id="kfnb-arrow" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#555"/></marker></defs>',
    ]
    for step, before in deps.items():
        for dep in before:
            if dep not in where:
                continue
            x0, y0 = where[dep]
            x1, y1 = where[step]
            parts.append(
                f'<line class="kfnb-edge" x1="{x0 + BOX_W}" y1="{y0 + BOX_H / 2}" x2="{x1}" '
                f'y2="{y1 + BOX_H / 2}" stroke="#555" marker-end="url(#kfnb-arrow)"/>'
            )
    for step, state in status.steps.items():
        x, y = where[step]
        name, phase = html.escape(step), html.escape(state.phase)
        fill = PHASE_FILL.get(state.phase, "#eeeeee")
        dash = ' stroke-dasharray="4 3"' if state.phase in ("Skipped", "Omitted") else ""
        extra = f" · {_duration(state.duration)}" if state.duration is not None else ""
        parts += [
            f'<g class="kfnb-step" data-step="{name}" data-phase="{phase}">',
            f"<title>{name}: {html.escape(state.message or state.phase)}</title>",
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" '
            f'stroke="#555"{dash}/>',
            f'<text x="{x + 8}" y="{y + 18}" font-weight="bold">{name}</text>',
            f'<text x="{x + 8}" y="{y + 35}">{phase}{html.escape(extra)}</text>',
            "</g>",
        ]
    parts.append("</svg>")
    return "".join(parts)
