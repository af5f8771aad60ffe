"""Launch overhead: a 1-worker `%%tfjob --wait` of `import tensorflow` vs the bare import."""

from __future__ import annotations

import subprocess
import sys

from common import alternate, private_home, report, shell


def main(runs: int = 5) -> float:
    private_home()
    ip = shell()
    counter = iter(range(1000))

    def through_kfnb() -> None:
        ip.run_cell_magic("tfjob", f"--name launch-{next(counter)} --wait", "import tensorflow\n")

    def by_hand() -> None:
        subprocess.run([sys.executable, "-c", "import tensorflow"], check=True,
                       capture_output=True)

    times = alternate(runs, **{"%%tfjob --wait": through_kfnb,
                               "python -c 'import tensorflow'": by_hand})
    return report("launch overhead, 1 worker", times, "python -c 'import tensorflow'", 1.2)


if __name__ == "__main__":
    main()
