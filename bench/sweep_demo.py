"""The demo's sweep: MNIST's CNN (model/mnist.py) over lr x batch, 8 trials at --parallel 2,
short runs, against one job with the demo's default settings (lr 2e-3, batch 32) run the
same way: held-out accuracy of the best trial vs the defaults', and wall times.

One run of each (minutes of TensorFlow training on CPU); accuracy is a result, not a
speed figure, so it is reported with the trials' spread, not as a ratio of medians.
"""

from __future__ import annotations

import statistics
import sys
import time

from common import REPO, private_home

EPOCHS = 2
CELL = (
    "result = train(epochs={epochs}, batch_size={batch}, learning_rate={lr}, verbose=0,\n"
    "               model_dir=tfjob.model_dir, callbacks=[tfjob.tensorboard()])\n"
    "tfjob.report(accuracy=result['accuracy'])\n"
)


def main() -> None:
    sys.path.insert(0, str(REPO))
    private_home()
    import kfnb
    from kfnb.sweeps import SweepSpec, start_sweep
    from model.mnist import train

    names = {"train": train}
    started = time.perf_counter()
    defaults = CELL.format(epochs=EPOCHS, batch=32, lr=2e-3)
    default = kfnb.submit(defaults, names=names, backend="local")
    default.wait()
    default_seconds = time.perf_counter() - started
    default_accuracy = float(default.logs().split("accuracy=")[-1].split()[0])

    spec = SweepSpec.build(
        ["lr=loguniform(3e-4, 1e-2)", "batch=choice(32, 64, 128)"],
        "maximize accuracy",
        trials=8,
        parallel=2,
        algorithm="tpe",
    )
    cell = CELL.format(epochs=EPOCHS, batch="tfjob.params['batch']", lr="tfjob.params['lr']")
    started = time.perf_counter()
    sweep = start_sweep(cell, spec, names=names, backend="local")
    status = sweep.wait()
    sweep_seconds = time.perf_counter() - started
    best = sweep.best
    assert best is not None and best.objective is not None
    scores = [t.objective for t in status.trials if t.objective is not None]
    print(f"\n== the demo's sweep: MNIST CNN, {EPOCHS} epochs, lr x batch, 8 trials, parallel 2")
    print(
        f"  defaults (lr 2e-3, batch 32): accuracy {default_accuracy:.4f} "
        f"in {default_seconds:.0f} s"
    )
    print(
        f"  sweep: best accuracy {best.objective:.4f} ({best.params}) in {sweep_seconds:.0f} s; "
        f"trials {min(scores):.4f}..{max(scores):.4f}, median {statistics.median(scores):.4f}"
    )
    print(f"  best - defaults: {best.objective - default_accuracy:+.4f}; "
          f"wall time sweep/default: {sweep_seconds / default_seconds:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
