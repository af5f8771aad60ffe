"""``kfnb predict``: the Kubeflow MNIST tutorials' ``mnist_client.py``, over REST.

    kfnb predict [IMAGE] [--url http://127.0.0.1:8501] [--model mnist] [--version N]

Like the tutorial's client it reads ``TF_MODEL_SERVER_HOST`` / ``TF_MODEL_SERVER_PORT``
and ``TF_MNIST_IMAGE_PATH``, picks a random MNIST test digit when no image is given,
and prints the digit in ASCII, the probabilities and "Your model says the above
number is... N!". Errors are one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kfnb.serving.client import Prediction, Predictor, PredictorError, to_pixels

__all__ = ["add_arguments", "ascii_digit", "default_url", "load_image", "main", "run"]

DEFAULT_REST_PORT = 8501  # TF Serving's REST port
EXIT_ERROR = 1
EXIT_USAGE = 2


def default_url(env: dict[str, str] | None = None) -> str:
    """``TF_MODEL_SERVER_HOST``/``_PORT`` as the tutorial's client reads them, else localhost."""
    env = dict(os.environ) if env is None else env
    host = env.get("TF_MODEL_SERVER_HOST", "").strip() or "127.0.0.1"
    port = env.get("TF_MODEL_SERVER_PORT", "").strip() or str(DEFAULT_REST_PORT)
    if "://" in host:
        return host.rstrip("/")
    return f"http://{host}:{port}"


def ascii_digit(pixels: np.ndarray) -> str:
    """28 lines of 28 characters, '@' for ink and '.' for paper (the tutorial's style)."""
    return "\n".join("".join("@" if p > 0.5 else "." for p in row) for row in pixels)


def load_image(path: Path) -> np.ndarray:
    """A (28, 28) float32 image in [0, 1] from a PNG (any image Pillow reads) or ``.npy``.

    Other sizes are resized to 28x28; a dark digit on light paper is inverted,
    since MNIST digits are light on dark.
    """
    if not path.is_file():
        raise PredictorError(f"{path}: no such image file", "input")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise PredictorError(f"{path} is not a NumPy .npy file: {exc}", "input") from exc
        if array.shape == (1, 28, 28):
            array = array[0]
        if array.shape != (28, 28):
            raise PredictorError(
                f"{path} holds an array of shape {list(array.shape)}: save one 28x28 image",
                "input",
            )
        one: np.ndarray = to_pixels(array)[0]
        return one
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            grey = opened.convert("L")
    except (UnidentifiedImageError, OSError) as exc:
        raise PredictorError(f"{path} is not an image Pillow can read: {exc}", "input") from exc
    if grey.size != (28, 28):
        grey = grey.resize((28, 28), Image.Resampling.LANCZOS)
    pixels = to_pixels(np.asarray(grey, dtype=np.uint8))[0]
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return np.asarray(1.0 - pixels if border.mean() > 0.5 else pixels, np.float32)


def random_test_image(seed: int | None) -> tuple[np.ndarray, str]:
    """A random MNIST test digit and a line that says which one it is."""
    from kfnb.serving.digits import load_test_digits

    try:
        digits = load_test_digits()
    except RuntimeError as exc:
        raise PredictorError(str(exc), "input") from exc
    index = int(np.random.default_rng(seed).integers(len(digits)))
    label = digits.labels[index]
    note = f"MNIST test image {index} of {len(digits)} ({digits.source}), labelled {label}"
    return to_pixels(digits.images[index])[0], note


def report(pixels: np.ndarray, answer: Prediction) -> str:
    """What the tutorial's client prints: the digit, the probabilities, the answer."""
    probabilities = "  ".join(f"{d}: {p:.3f}" for d, p in enumerate(answer.probabilities[0]))
    version = "" if answer.version is None else f"version {answer.version}, "
    return (
        f"{ascii_digit(pixels)}\n"
        f"probabilities: {probabilities}\n"
        f"({version}{answer.latency * 1000:.1f} ms)\n"
        f"Your model says the above number is... {int(answer.labels[0])}!"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "image",
        nargs="?",
        help="a PNG (or any image Pillow reads) or a .npy 28x28 array; default "
        "$TF_MNIST_IMAGE_PATH, else a random MNIST test digit",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="the model server's REST root (default: http://$TF_MODEL_SERVER_HOST:"
        f"$TF_MODEL_SERVER_PORT, else http://127.0.0.1:{DEFAULT_REST_PORT})",
    )
    parser.add_argument("--model", default="mnist", help="model name (default: mnist)")
    parser.add_argument("--version", type=int, default=None, help="model version (default: newest)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default: 10)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the random test digit")


def run(args: argparse.Namespace) -> int:
    """Run ``kfnb predict``; returns the exit code."""
    try:
        image = args.image or os.environ.get("TF_MNIST_IMAGE_PATH", "").strip() or None
        if image:
            pixels = load_image(Path(image))
        else:
            pixels, note = random_test_image(args.seed)
            print(note)
        with Predictor(
            args.url or default_url(), args.model, args.version, args.timeout
        ) as predictor:
            answer = predictor.predict(pixels)
    except PredictorError as exc:
        print(f"kfnb predict: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(report(pixels, answer))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kfnb predict", description="Ask a model server what digit an image shows."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
