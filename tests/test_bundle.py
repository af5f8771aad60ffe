"""The cell bundle: what is captured, what is refused, and that a bare Python can run it."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from kfnb.bundle import BundleError, build_bundle, compile_cell, referenced_names


def notebook(source: str) -> dict[str, Any]:
    """A namespace like a kernel's: defined by running ``source`` as ``__main__``."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, "<notebook cell>", "exec"), namespace)
    return namespace


def test_referenced_names_follow_scopes_not_attributes() -> None:
    read, bound = referenced_names(
        "import numpy as np\n"
        "model = build()\n"
        "model.fit(data, epochs=epochs)\n"
        "def step():\n    return lr * factor\n"
        "class Head:\n    size = width\n"
    )
    assert {"build", "data", "epochs", "lr", "factor", "width", "model"} <= read
    assert "fit" not in read  # an attribute, not a name
    assert {"np", "model", "step", "Head"} <= bound


def test_captures_functions_values_and_modules() -> None:
    ns = notebook(
        "import json\n"
        "import collections as col\n"
        "def double(x):\n    return scale * x\n"
        "scale = 2\n"
        "config = {'epochs': 3}\n"
        "unused = object()\n"
    )
    bundle = build_bundle(
        "print(double(config['epochs']), json.dumps(1), col.Counter('aa'))", ns, job_name="j"
    )
    assert bundle.names == ("config", "double")
    assert bundle.modules == ("col", "json")
    meta = json.loads(bundle.files["bundle.json"])
    assert meta["modules"] == {"col": "collections", "json": "json"}
    payloads = pickle.loads(bundle.files["names.pkl"])
    assert set(payloads) == {"config", "double"}
    double = pickle.loads(payloads["double"])
    assert double(5) == 10  # `scale` travelled inside the function's globals


def test_ipython_names_and_tfjob_are_not_shipped() -> None:
    ns = {"In": ["x"], "Out": {}, "_": 1, "tfjob": object(), "value": 3}
    bundle = build_bundle(
        "print(In, Out, _, tfjob, value)", ns, job_name="j", hidden={"In", "Out", "_"}
    )
    assert bundle.names == ("value",)


def test_syntax_error_is_one_line_with_the_line_number() -> None:
    with pytest.raises(BundleError, match=r"syntax error in the cell, line 2") as error:
        compile_cell("x = 1\ny = = 2\n")
    assert "\n" not in str(error.value)


def test_ipython_syntax_is_named() -> None:
    with pytest.raises(BundleError, match=r"line 1 of the cell is IPython syntax"):
        build_bundle("!pip install foo\nprint(1)", {}, job_name="j")


def test_unshippable_name_is_named_with_its_reason() -> None:
    ns = {"lock": threading.Lock()}
    with pytest.raises(BundleError) as error:
        build_bundle("with lock:\n    pass", ns, job_name="j")
    message = str(error.value)
    assert "'lock'" in message and "_thread.lock" in message and "\n" not in message


def test_unshippable_name_the_cell_makes_itself_is_skipped() -> None:
    ns = {"model": threading.Lock()}  # e.g. a model object left from an earlier run
    bundle = build_bundle("model = 1\nprint(model)", ns, job_name="j")
    assert bundle.names == ()


def test_include_files_and_missing_include(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "labels.txt").write_text("0 1 2")
    (tmp_path / "util.py").write_text("X = 1\n")
    bundle = build_bundle("print(1)", {}, job_name="j", includes=["data", "util.py"], cwd=tmp_path)
    assert bundle.files["include/data/labels.txt"] == b"0 1 2"
    assert bundle.files["include/util.py"] == b"X = 1\n"
    with pytest.raises(BundleError, match=r"--include nope.py: no such file"):
        build_bundle("print(1)", {}, job_name="j", includes=["nope.py"], cwd=tmp_path)


def test_an_include_of_the_parent_directory_never_replaces_the_bundles_own_files(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "cell.py").write_text("print('not the cell')\n")
    (project / "runtime.py").write_text("HIJACKED = True\n")
    bundle = build_bundle(
        "print(1)", {}, job_name="j", includes=[".."], cwd=project / "notebooks"
    )
    assert bundle.files["include/project/runtime.py"] == b"HIJACKED = True\n"
    assert all(".." not in p.split("/") for p in bundle.files)
    bundle.write(tmp_path / "code")
    assert (tmp_path / "code" / "cell.py").read_bytes() == b"print(1)"
    runtime = Path(__file__).parents[1] / "kfnb" / "runtime.py"
    assert (tmp_path / "code" / "runtime.py").read_bytes() == runtime.read_bytes()


def test_include_ships_regular_files_under_its_root_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for hidden in (".git", ".ipynb_checkpoints", "sub/.cache"):
        (data / hidden).mkdir(parents=True)
        (data / hidden / "config").write_text("not for the job")
    (data / "sub" / "a.txt").write_text("a")
    (data / "sub" / ".token").write_text("hidden file")
    (tmp_path / "private.txt").write_text("outside the included tree")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b.txt").write_text("outside too")
    (data / "leak.txt").symlink_to(tmp_path / "private.txt")
    (data / "leakdir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (data / "inner.txt").symlink_to(data / "sub" / "a.txt")  # inside the tree: shipped
    (tmp_path / ".env").write_text("named explicitly")
    bundle = build_bundle("print(1)", {}, job_name="j", includes=["data", ".env"], cwd=tmp_path)
    assert bundle.includes == ("include/.env", "include/data/inner.txt", "include/data/sub/a.txt")
    assert bundle.files["include/data/inner.txt"] == b"a"
    named = build_bundle("print(1)", {}, job_name="j", includes=["data/.git"], cwd=tmp_path)
    assert named.includes == ("include/.git/config",)
    (tmp_path / "linked").symlink_to(data / "sub", target_is_directory=True)
    linked = build_bundle("print(1)", {}, job_name="j", includes=["linked"], cwd=tmp_path)
    assert linked.includes == ("include/linked/a.txt",)  # named as the cell names it


def test_two_includes_that_would_ship_as_one_path_are_refused(tmp_path: Path) -> None:
    for directory, text in (("a", "A = 1\n"), ("b", "B = 2\n")):
        (tmp_path / directory).mkdir()
        (tmp_path / directory / "util.py").write_text(text)
    with pytest.raises(BundleError, match=r"include/util\.py") as error:
        build_bundle(
            "print(1)", {}, job_name="j", includes=["a/util.py", "b/util.py"], cwd=tmp_path
        )
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("path", ["include/../runtime.py", "/etc/passwd", "a//b", "./cell.py", ""])
def test_a_bundle_path_kubernetes_would_refuse_fails_before_anything_is_created(
    path: str,
) -> None:
    from kfnb.bundle import Bundle
    from kfnb.spec import JobSpec, SpecError

    with pytest.raises(BundleError, match="bundle path"):
        Bundle(files={"cell.py": b"print(1)", path: b"x"})
    with pytest.raises(SpecError, match="bundle path"):
        JobSpec(name="j", code_files=("cell.py", path)).to_manifest()


def test_configmap_keys_and_paths_of_odd_file_names_are_legal_for_kubernetes(
    tmp_path: Path,
) -> None:
    import re

    from kfnb.backends.kube_manifests import configmap_for
    from kfnb.spec import JobSpec

    odd = tmp_path / "odd"
    odd.mkdir()
    for name in ("données é.csv", "a b+c=d.txt", "..dots", "x" * 250, "ключ"):
        (odd / name).write_text(name)
    (tmp_path / "nb").mkdir()
    bundle = build_bundle(
        "print(1)", {}, job_name="j", includes=["../odd", ".."], cwd=tmp_path / "nb"
    )
    spec = JobSpec(name="j", code_files=tuple(bundle.files))
    manifest = spec.to_manifest()
    configmap = configmap_for(bundle, "j", "default")
    keys = {**configmap.get("data", {}), **configmap.get("binaryData", {})}
    items = manifest["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["volumes"][0][
        "configMap"
    ]["items"]
    assert len(items) == len(bundle.files) == len(keys)
    for item in items:  # Kubernetes' IsConfigMapKey and its volume item path rules
        key, path = item["key"], item["path"]
        assert key in keys and re.fullmatch(r"[-._a-zA-Z0-9]{1,253}", key), key
        assert key not in (".", "..") and not key.startswith("..")
        assert not path.startswith("/") and ".." not in path.split("/"), path


def test_users_own_modules_travel_with_the_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "mylib"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from mylib import helpers  # type: ignore[import-not-found]

    ns = {"helpers": helpers, "triple": helpers.triple}
    bundle = build_bundle("print(helpers.triple(2), triple(3))", ns, job_name="j", cwd=tmp_path)
    assert "include/mylib/helpers.py" in bundle.files
    assert "include/mylib/__init__.py" in bundle.files
    for name in [m for m in sys.modules if m.startswith("mylib")]:
        monkeypatch.delitem(sys.modules, name)


def test_installed_modules_are_imports_not_files() -> None:
    import yaml

    bundle = build_bundle("print(yaml.safe_dump(1))", {"yaml": yaml}, job_name="j")
    assert not [p for p in bundle.files if p.startswith("include/")]


def run_bundle(
    bundle_dir: Path, artifacts: Path, *python_flags: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TF_CONFIG"))}
    env.update(KFNB_CODE_DIR=str(bundle_dir), KFNB_ARTIFACTS=str(artifacts), KFNB_JOB_NAME="j")
    return subprocess.run(
        [sys.executable, *python_flags, str(bundle_dir / "runtime.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bare_python_runs_the_bundle_with_notebook_functions(tmp_path: Path) -> None:
    """`python -S` has no site-packages: the stock-image case, cloudpickle from the bundle."""
    ns = notebook(
        "class Scaler:\n    def __init__(self, k):\n        self.k = k\n"
        "    def __call__(self, x):\n        return self.k * x\n"
        "def make():\n    return Scaler(7)\n"
    )
    bundle = build_bundle("print('answer', make()(6), tfjob.is_chief)", ns, job_name="j")
    bundle.write(tmp_path / "code")
    result = run_bundle(tmp_path / "code", tmp_path / "out", "-S")
    assert result.returncode == 0, result.stderr
    assert "answer 42 True" in result.stdout
    status = json.loads((tmp_path / "out" / "status" / "worker-0.json").read_text())
    assert status["exit_code"] == 0 and status["traceback"] is None


def test_replica_traceback_shows_notebook_source_lines(tmp_path: Path) -> None:
    ns: dict[str, Any] = {"__name__": "__main__"}
    source = "def explode(x):\n    return x / 0  # boom here\n"
    import linecache

    filename = "/tmp/ipykernel_0/12345.py"  # how IPython names a cell's code
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), ns)
    bundle = build_bundle("explode(1)", ns, job_name="j")
    bundle.write(tmp_path / "code")
    result = run_bundle(tmp_path / "code", tmp_path / "out")
    assert result.returncode == 1
    status = json.loads((tmp_path / "out" / "status" / "worker-0.json").read_text())
    assert "return x / 0  # boom here" in status["traceback"]
    assert "ZeroDivisionError" in status["traceback"]
    assert "runtime.py" not in status["traceback"]
