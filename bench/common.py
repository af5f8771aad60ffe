"""Helpers for the benchmarks: a private kfnb home, an IPython shell, timing."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def private_home() -> Path:
    """Point kfnb at a fresh home, so benchmark jobs never mix with the user's."""
    home = Path(tempfile.mkdtemp(prefix="kfnb-bench-"))
    os.environ["KFNB_HOME"] = str(home)
    os.environ["KFNB_PYTHON"] = sys.executable
    return home


def shell() -> Any:
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython() or get_ipython()
    ip.run_line_magic("load_ext", "kfnb")
    return ip


def timed(func: Callable[[], Any]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def alternate(runs: int, **candidates: Callable[[], Any]) -> dict[str, list[float]]:
    """Time each candidate ``runs`` times, interleaved so machine noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(runs):
        for name, func in candidates.items():
            times[name].append(timed(func))
    return times


def report(title: str, times: dict[str, list[float]], baseline: str, limit: float | None,
           unit: str = "s") -> float:
    """Print medians and the ratio of the first candidate to ``baseline``."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    subject = next(name for name in times if name != baseline)
    ratio = medians[subject] / medians[baseline]
    print(f"\n== {title}")
    for name, values in times.items():
        shown = ", ".join(f"{v:.3f}" for v in values)
        print(f"  {name:<28} median {medians[name]:.3f} {unit}   [{shown}]")
    verdict = "" if limit is None else ("  (ok)" if ratio <= limit else f"  (OVER {limit})")
    print(f"  ratio {subject}/{baseline}: {ratio:.3f}{verdict}")
    return ratio
