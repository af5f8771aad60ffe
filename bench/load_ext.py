"""`%load_ext kfnb` vs a bare IPython start: added time, and no heavy imports.

Each run is a fresh `ipython` process, so imports are not cached between runs.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

from common import alternate, report

IPYTHON = [sys.executable, "-m", "IPython", "--quick", "--no-banner", "--colors=NoColor"]
HEAVY = ("tensorflow", "tensorboard", "kubernetes", "minio", "matplotlib", "ipywidgets")
PROBE = f"import sys; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"


def run(code: str) -> None:
    subprocess.run([*IPYTHON, "-c", code], check=True, capture_output=True)


def main(runs: int = 15) -> float:
    times = alternate(
        runs,
        **{"ipython + %load_ext kfnb": lambda: run("%load_ext kfnb"),
           "bare ipython": lambda: run("pass")},
    )
    ratio = report("%load_ext kfnb vs bare IPython start", times, "bare ipython", None)
    added = statistics.median(times["ipython + %load_ext kfnb"]) - statistics.median(
        times["bare ipython"])
    verdict = "ok" if added <= 0.150 else "OVER 150 ms"
    print(f"  added by %load_ext kfnb: {added * 1000:.0f} ms ({verdict})")
    out = subprocess.run([*IPYTHON, "-c", f"%load_ext kfnb\n{PROBE}"], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).parent)
    print(f"  heavy modules after %load_ext kfnb: {out.stdout.strip().splitlines()[-1]}")
    return ratio


if __name__ == "__main__":
    main()
