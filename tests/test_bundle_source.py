"""Names by source, for replicas whose Python is not the kernel's (the stock image runs
3.11): bundles built as for another Python, and run by the real runtime."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import kfnb
from kfnb import bundle_source
from kfnb.bundle import Bundle, BundleError, build_bundle
from kfnb.records import load_record
from tests.test_runtime import HERE, notebook_namespace, replica_status, run_runtime

OTHER = "3.99"  # a Python the replicas run that is not this kernel's


def by_source_bundle(tmp_path: Path, cell: str, namespace: dict[str, Any]) -> Path:
    code = tmp_path / "code"
    bundle = build_bundle(textwrap.dedent(cell), namespace, job_name="src", replica_python=OTHER)
    bundle.write(code)
    return code


NOTEBOOK = """
import math
from functools import reduce

SCALE = 3
LAYERS = {"units": [4, 2], "name": "head"}

def traced(func):
    def wrapper(*args):
        print("calling", func.__name__)
        return func(*args)
    wrapper.__wrapped__ = func
    return wrapper

class Scaler:
    def __init__(self, factor):
        self.factor = factor

    def __call__(self, x):
        return x * self.factor * SCALE

class Doubler(Scaler):
    def __init__(self):
        super().__init__(2)

@traced
def total(xs):
    return reduce(lambda a, b: a + b, [Doubler()(x) for x in xs]) + math.floor(0.5)

train = total
"""


def test_notebook_functions_travel_by_source_and_run_without_pickled_code(
    tmp_path: Path,
) -> None:
    namespace = notebook_namespace(NOTEBOOK)
    code = by_source_bundle(tmp_path, "print('result', train([1, 2]), LAYERS['name'])\n", namespace)
    meta = json.loads((code / "bundle.json").read_text())
    assert meta["portable"] and meta["python"] == HERE
    # Only plain data is pickled; functions and classes, decorators and bases first.
    assert meta["names"] == ["LAYERS", "SCALE"]
    assert meta["by_source"] == ["Scaler", "Doubler", "traced", "total"]
    assert meta["modules"] == {"math": "math", "reduce": "_functools:reduce"}
    definitions = json.loads((code / "definitions.json").read_text())
    assert definitions[-1]["aliases"] == ["train"]
    assert definitions[-1]["source"].startswith("@traced\ndef total(xs):")
    # No code objects travel: the replica runs without cloudpickle at all, and as if
    # the notebook ran another Python.
    assert b"cloudpickle" not in (code / "names.pkl").read_bytes()
    shutil.rmtree(code / "vendor")
    meta["python"] = "3.7"
    (code / "bundle.json").write_text(json.dumps(meta))
    done = run_runtime(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "calling total\nresult 18 head" in done.stdout


def test_a_by_source_functions_traceback_shows_its_notebook_lines(tmp_path: Path) -> None:
    namespace = notebook_namespace(
        """
        LIMIT = 3

        def check(value):
            if value > LIMIT:
                raise RuntimeError(f"too big: {value}")
            return value
        """,
        filename="<ipython-input-9>",
    )
    code = by_source_bundle(tmp_path, "check(2)\ncheck(9)\n", namespace)
    done = run_runtime(code, tmp_path)
    assert done.returncode == 1
    trace = replica_status(tmp_path)["traceback"]
    assert 'File "<ipython-input-9>", line 6, in check' in trace
    assert 'raise RuntimeError(f"too big: {value}")' in trace


def test_an_array_blocks_in_one_line_naming_it_and_the_fixes() -> None:
    namespace = notebook_namespace(
        """
        def normalise(x):
            return x / SCALE
        """
    )
    namespace.update(images=np.zeros((2, 2)), SCALE=np.float32(255.0), epochs=2)
    with pytest.raises(BundleError) as caught:
        build_bundle(
            "normalise(images)\nprint(epochs)\n", namespace, job_name="x", replica_python=OTHER
        )
    message = str(caught.value)
    assert "\n" not in message
    assert f"the replicas run Python {OTHER} but this kernel runs Python {HERE}" in message
    assert "'images' (numpy.ndarray)" in message
    assert "'SCALE' (numpy.float32, read by normalise)" in message
    assert "epochs" not in message and "'normalise'" not in message
    assert f"--image with an image of Python {HERE}" in message
    assert "inside the cell" in message


@pytest.mark.parametrize(
    ("definition", "reason"),
    [
        ("square = lambda x: x * x", "a lambda, or defined inside a function or class"),
        (
            "def make():\n    def square(x):\n        return x * x\n    return square\n"
            "square = make()",
            "a lambda, or defined inside a function or class",
        ),
        ("def square(x):\n    return x * x\nsquare2 = square\ndel square", "rebound or deleted"),
    ],
)
def test_a_function_that_cannot_travel_by_source_says_why(definition: str, reason: str) -> None:
    namespace = notebook_namespace(definition)
    name = "square2" if "square2" in namespace else "square"
    with pytest.raises(BundleError, match=reason):
        build_bundle(f"{name}(3)\n", namespace, job_name="x", replica_python=OTHER)


def test_a_dataclass_with_a_method_travels_and_one_without_says_why(tmp_path: Path) -> None:
    namespace = notebook_namespace(
        """
        from dataclasses import dataclass

        @dataclass
        class Config:
            epochs: int = 2

            def steps(self):
                return self.epochs * 10

        @dataclass
        class Bare:
            size: int = 1
        """
    )
    code = by_source_bundle(tmp_path, "print('steps', Config().steps())\n", namespace)
    assert json.loads((code / "bundle.json").read_text())["by_source"] == ["Config"]
    done = run_runtime(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "steps 20" in done.stdout
    with pytest.raises(BundleError, match="'Bare' \\(type, a class with no method written"):
        build_bundle("Bare()\n", namespace, job_name="x", replica_python=OTHER)


def test_a_name_the_cell_binds_itself_does_not_block() -> None:
    namespace = {"__name__": "__main__", "data": np.ones(3)}
    cell = "data = [1, 2]\nprint(data)\n"
    bundle = build_bundle(cell, namespace, job_name="x", replica_python=OTHER)
    assert bundle.names == ()


def test_the_kernels_own_python_pickles_as_before() -> None:
    namespace = notebook_namespace("def f():\n    return 1\n")
    namespace["images"] = np.zeros(2)
    bundle = build_bundle("f(); images\n", namespace, job_name="x", replica_python=HERE)
    assert bundle.names == ("f", "images") and "definitions.json" not in bundle.files
    assert not bundle.meta["portable"]
    assert not bundle_source.needed(None) and not bundle_source.needed(HERE)


def test_plain_data_is_only_exact_builtin_types() -> None:
    assert bundle_source.is_plain({"a": [1, 2.5, None, (b"x", {3})], 2: "s"})
    assert not bundle_source.is_plain(np.float64(1.0))  # a float subclass
    looped: list[Any] = []
    looped.append(looped)
    assert not bundle_source.is_plain(looped)


class RecordingBackend:
    """A backend whose replicas run another Python; it records what is submitted."""

    name = "recording"
    storage = ""
    namespace = ""

    def __init__(self, storage: Path) -> None:
        self.storage = str(storage)
        self.submitted: list[str] = []
        self.bundles: list[Bundle] = []

    def replica_python(self, image: str) -> str:
        return OTHER

    def job_dir(self, name: str) -> Path | None:
        return None

    def preflight(self, manifest: dict[str, Any]) -> list[str]:
        self.submitted.append("preflight")
        return []

    def submit(self, manifest: dict[str, Any], bundle: Bundle) -> None:
        self.submitted.append(manifest["metadata"]["name"])
        self.bundles.append(bundle)


def test_submit_raises_before_anything_is_submitted(tmp_path: Path) -> None:
    backend = RecordingBackend(tmp_path / "store")
    names = {"__name__": "__main__", "images": np.zeros(2)}
    with pytest.raises(BundleError, match="'images' \\(numpy.ndarray\\)"):
        kfnb.submit("print(images)\n", name="blocked", names=names, backend=backend)
    assert backend.submitted == [] and load_record("blocked") is None


def test_submit_ships_by_source_to_a_backend_of_another_python(tmp_path: Path) -> None:
    backend = RecordingBackend(tmp_path / "store")
    names = notebook_namespace("def f(x):\n    return x + 1\n")
    kfnb.submit("print(f(1))\n", name="by-source", names=names, backend=backend)
    assert backend.submitted == ["preflight", "by-source"]
    assert backend.bundles[0].meta["by_source"] == ["f"] and backend.bundles[0].names == ()


# -- %%tfjob in a real IPython shell, the local backend's interpreter another Python ----


@pytest.fixture
def other_python(monkeypatch: pytest.MonkeyPatch) -> None:
    from kfnb.backends import local

    monkeypatch.setattr(local, "interpreter_python", lambda python: OTHER)


def test_the_magic_ships_cells_functions_and_classes_by_source(
    shell: InteractiveShell, other_python: None
) -> None:
    shell.run_cell("import math\nBASE = 10\n")
    shell.run_cell("class Counter:\n    def __init__(self):\n        self.n = BASE\n")
    shell.run_cell("def bump(c, by):\n    c.n += math.ceil(by)\n    return c.n\n")
    cell = "print('bumped', bump(Counter(), 1.5))\n"
    job = shell.run_cell_magic("tfjob", "--backend local --name magic-src --wait", cell)
    assert "bumped 12" in job.logs()
    meta = json.loads((job.artifacts / "code" / "bundle.json").read_text())
    assert meta["by_source"] == ["Counter", "bump"] and meta["names"] == ["BASE"]


def test_the_magic_refuses_an_array_before_submitting(
    shell: InteractiveShell, other_python: None
) -> None:
    shell.run_cell("import numpy as np\nimages = np.zeros((2, 2))\n")
    shell.run_cell("def mean(x):\n    return x.mean()\n")
    with pytest.raises(UsageError) as caught:
        shell.run_cell_magic("tfjob", "--backend local --name magic-blocked", "mean(images)\n")
    message = str(caught.value)
    assert "\n" not in message and "'images' (numpy.ndarray)" in message
    assert "--image" in message and "'mean'" not in message
    assert load_record("magic-blocked") is None
