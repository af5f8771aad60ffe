"""The demo pipeline locally: train (MNIST's CNN, model/mnist.py, 2 workers) -> evaluate
(the exported SavedModel's answers on the held-out digits, a %%step) -> publish (%serve,
when evaluate.accuracy >= 0.9): wall time, and the accuracy evaluate measured.

One run (minutes of TensorFlow training on CPU): accuracy is a result, not a speed figure.
``.venv/bin/python bench/pipeline_demo.py [EPOCHS]`` (default 2).
"""

from __future__ import annotations

import sys
import time

from common import REPO, private_home, shell

TRAIN = (
    "metrics = train(epochs=epochs, model_dir=tfjob.model_dir, verbose=0)\n"
    "tfjob.output('accuracy', metrics['accuracy'])\n"
)
EVALUATE = (
    "import numpy as np\nimport tensorflow as tf\n"
    "served = tf.saved_model.load(tfjob.inputs['train'].model_dir)\n"
    "answer = served.signatures['serving_default'](x=tf.constant(x_test, tf.float32))\n"
    "tfjob.output('accuracy', float(np.mean(answer['classes'].numpy() == y_test)))\n"
)


def main(epochs: int = 2) -> None:
    sys.path.insert(0, str(REPO))
    private_home()
    ip = shell()
    ip.run_line_magic("config", "Kfnb.backend = 'local'")
    ip.run_cell(
        "from model.mnist import load_mnist, train\n"
        f"epochs = {epochs}\n(_, _), (x_test, y_test) = load_mnist()\n"
    )
    ip.run_cell_magic("tfjob", "--workers 2 --step train --pipeline demo --record-only", TRAIN)
    ip.run_cell_magic("step", "evaluate --pipeline demo --after train --record-only", EVALUATE)
    ip.run_line_magic(
        "serve", "train --name demo --step publish --pipeline demo "
        "--when 'evaluate.accuracy >= 0.9' --record-only",
    )  # fmt: skip
    started = time.perf_counter()
    run = ip.run_line_magic("kfnb", "pipeline run demo --wait")
    seconds = time.perf_counter() - started
    status = run.status()
    ip.run_line_magic("serve", "stop demo") if status.steps[
        "publish"
    ].phase == "Succeeded" else None
    print(f"\n== the demo pipeline locally: train (2 workers, {epochs} epochs) -> evaluate "
          "-> publish")  # fmt: skip
    for name, state in status.steps.items():
        print(f"  {name:<9} {state.phase:<10} {state.duration or 0:6.1f} s  {state.outputs}")
    print(f"  run {status.phase} in {seconds:.0f} s; held-out accuracy (evaluate): "
          f"{status.steps['evaluate'].outputs.get('accuracy')}")  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
