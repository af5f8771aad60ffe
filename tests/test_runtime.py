"""The replica runtime: `TFJobContext` rules, model publishing, and runtime.py run
from a bundle as a stock image would run it (``python -S``: no site-packages)."""

from __future__ import annotations

import importlib.util
import json
import linecache
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kfnb.bundle import build_bundle
from kfnb.runtime import TFJobContext

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def cluster(chief: int = 0, workers: int = 2, ps: int = 0) -> dict[str, list[str]]:
    ports = iter(range(2222, 2300))
    spec = {"chief": chief, "worker": workers, "ps": ps}
    return {kind: [f"localhost:{next(ports)}" for _ in range(n)] for kind, n in spec.items() if n}


def context(
    artifacts: Path, task_type: str, index: int, spec: dict[str, list[str]]
) -> TFJobContext:
    task = {"type": task_type, "index": index}
    tf_config = {"cluster": spec, "task": task, "environment": "cloud"}
    return TFJobContext("demo", artifacts, tf_config)


# -- TFJobContext -------------------------------------------------------------------


def test_is_chief_with_a_chief_is_only_the_chief(tmp_path: Path) -> None:
    spec = cluster(chief=1, workers=2, ps=1)
    assert context(tmp_path, "chief", 0, spec).is_chief
    assert not context(tmp_path, "worker", 0, spec).is_chief
    assert not context(tmp_path, "worker", 1, spec).is_chief
    assert not context(tmp_path, "ps", 0, spec).is_chief
    assert not context(tmp_path, "evaluator", 0, spec).is_chief


def test_is_chief_without_a_chief_is_worker_zero(tmp_path: Path) -> None:
    spec = cluster(workers=3, ps=1)
    assert context(tmp_path, "worker", 0, spec).is_chief
    assert not context(tmp_path, "worker", 1, spec).is_chief
    assert not context(tmp_path, "worker", 2, spec).is_chief
    assert not context(tmp_path, "ps", 0, spec).is_chief
    assert not context(tmp_path, "evaluator", 0, spec).is_chief


def test_master_counts_as_chief(tmp_path: Path) -> None:
    spec = {"master": ["localhost:1"], "worker": ["localhost:2"]}
    assert context(tmp_path, "master", 0, spec).is_chief
    assert not context(tmp_path, "worker", 0, spec).is_chief


def test_single_replica_without_tf_config_is_the_chief(tmp_path: Path) -> None:
    ctx = TFJobContext("solo", tmp_path, {})
    assert ctx.is_chief
    assert ctx.task_type == "worker"
    assert ctx.task_index == 0
    assert ctx.replica == "worker-0"
    assert ctx.num_workers == 1
    assert ctx.cluster == {}


def test_num_workers_counts_chief_and_workers_not_ps(tmp_path: Path) -> None:
    assert context(tmp_path, "ps", 0, cluster(chief=1, workers=2, ps=2)).num_workers == 3
    assert context(tmp_path, "worker", 0, cluster(workers=4)).num_workers == 4
    assert context(tmp_path, "chief", 0, cluster(chief=1, workers=0)).num_workers == 1


def test_task_type_and_index_parsing(tmp_path: Path) -> None:
    tf_config = {
        "cluster": cluster(chief=1, workers=2),
        "task": {"type": "worker", "index": "1"},  # an index given as a string still parses
        "environment": "cloud",
    }
    ctx = TFJobContext("demo", tmp_path, tf_config)
    assert (ctx.task_type, ctx.task_index, ctx.replica) == ("worker", 1, "worker-1")
    assert isinstance(ctx.task_index, int)
    assert "worker-1" in repr(ctx) and "chief=False" in repr(ctx)


# -- model_dir, logdir, finish -------------------------------------------------------


def test_chief_model_dir_is_staged_and_published_as_next_version(tmp_path: Path) -> None:
    (tmp_path / "model" / "1").mkdir(parents=True)
    (tmp_path / "model" / "3").mkdir()
    (tmp_path / "model" / "notes").mkdir()  # not a version: ignored
    ctx = context(tmp_path, "chief", 0, cluster(chief=1, workers=1))
    staged = Path(ctx.model_dir)
    assert staged.parent == tmp_path / "model"
    assert staged.is_dir() and not staged.name.isdigit()  # a model server must not load it yet
    assert ctx.model_dir == str(staged)  # the same directory every time
    (staged / "saved_model.pb").write_bytes(b"model")
    published = ctx.finish(True)
    assert published == str(tmp_path / "model" / "4")
    assert (tmp_path / "model" / "4" / "saved_model.pb").read_bytes() == b"model"
    assert not staged.exists()
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["1", "3", "4", "notes"]
    # The next run gets the next version.
    again = TFJobContext("demo", tmp_path, {})
    assert Path(again.model_dir).name.endswith("5")


def test_chief_model_is_discarded_when_the_cell_fails(tmp_path: Path) -> None:
    (tmp_path / "model" / "2").mkdir(parents=True)
    ctx = TFJobContext("demo", tmp_path, {})
    staged = Path(ctx.model_dir)
    (staged / "saved_model.pb").write_bytes(b"half a model")
    assert ctx.finish(False) is None
    assert not staged.exists()
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["2"]


def test_chief_that_saved_nothing_publishes_nothing(tmp_path: Path) -> None:
    ctx = TFJobContext("demo", tmp_path, {})
    staged = Path(ctx.model_dir)
    assert ctx.finish(True) is None
    assert not staged.exists()
    assert list((tmp_path / "model").iterdir()) == []


def test_non_chief_model_dir_and_logdir_are_scratch_removed_by_finish(tmp_path: Path) -> None:
    ctx = context(tmp_path, "worker", 1, cluster(workers=2))
    model_dir, logdir = Path(ctx.model_dir), Path(ctx.logdir)
    for path in (model_dir, logdir):
        assert path.is_dir()
        assert tmp_path not in path.parents  # nothing a non-chief writes lands in the store
    (model_dir / "saved_model.pb").write_bytes(b"copy")
    (logdir / "events").write_bytes(b"events")
    assert ctx.finish(True) is None
    assert not model_dir.exists() and not logdir.exists()
    assert not (tmp_path / "model").exists()


def test_logdir_of_chief_and_evaluator_are_kept_in_the_store(tmp_path: Path) -> None:
    spec = cluster(chief=1, workers=1)
    chief = context(tmp_path, "chief", 0, spec)
    assert Path(chief.logdir) == tmp_path / "tensorboard"
    assert Path(chief.logdir).is_dir()
    evaluator = context(tmp_path, "evaluator", 0, spec)
    assert Path(evaluator.logdir) == tmp_path / "tensorboard" / "evaluator"
    chief.finish(True)
    evaluator.finish(True)
    assert (tmp_path / "tensorboard" / "evaluator").is_dir()  # kept, not scratch
    worker0 = context(tmp_path, "worker", 0, cluster(workers=2))
    assert Path(worker0.logdir) == tmp_path / "tensorboard"  # worker 0 is chief without one


# -- runtime.py run from a bundle ------------------------------------------------------


def notebook_namespace(source: str, filename: str = "<ipython-input-7>") -> dict[str, Any]:
    """Names as a notebook defines them: in ``__main__``, source in linecache (as IPython)."""
    source = textwrap.dedent(source)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def write_bundle(
    tmp_path: Path, cell: str, namespace: dict[str, Any] | None = None, name: str = "rt"
) -> Path:
    code = tmp_path / "code"
    build_bundle(textwrap.dedent(cell), namespace or {}, job_name=name).write(code)
    return code


def run_runtime(
    code: Path,
    artifacts: Path,
    *,
    no_site: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_CONFIG", "TF_USE_LEGACY_KERAS", "PYTHONPATH", "PYTHONHOME")
    }
    full_env = {
        **base,
        "KFNB_CODE_DIR": str(code),
        "KFNB_ARTIFACTS": str(artifacts),
        "KFNB_JOB_NAME": "rt",
        **(env or {}),
    }
    flags = ["-S"] if no_site else []
    return subprocess.run(
        [sys.executable, *flags, str(code / "runtime.py")],
        env=full_env,
        cwd=artifacts,
        capture_output=True,
        text=True,
        timeout=60,
    )


def replica_status(artifacts: Path, replica: str = "worker-0") -> dict[str, Any]:
    result: dict[str, Any] = json.loads((artifacts / "status" / f"{replica}.json").read_text())
    return result


def test_stock_python_without_site_packages_cannot_import_cloudpickle() -> None:
    """The premise of the next test: under -S, cloudpickle is only in the bundle."""
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "import cloudpickle"],
        capture_output=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert probe.returncode != 0


def test_runtime_runs_a_cell_with_a_notebook_function_using_vendored_cloudpickle(
    tmp_path: Path,
) -> None:
    namespace = notebook_namespace(
        """
        OFFSET = 1
        def square_plus(x):
            return x * x + OFFSET
        """
    )
    cell = """
    import cloudpickle
    print("result", square_plus(7))
    print("cloudpickle from", cloudpickle.__file__)
    (__import__("pathlib").Path(tfjob.model_dir) / "weights.txt").write_text("w")
    """
    code = write_bundle(tmp_path, cell, namespace)
    artifacts = tmp_path / "store"
    artifacts.mkdir()
    done = run_runtime(code, artifacts)
    assert done.returncode == 0, done.stderr
    assert "result 50" in done.stdout
    assert f"cloudpickle from {code / 'vendor' / 'cloudpickle'}" in done.stdout
    status = replica_status(artifacts)
    assert status["exit_code"] == 0
    assert status["state"] == "exited"
    assert status["error"] is None and status["traceback"] is None
    # The chief's model was published as version 1.
    assert status["model"] == str(artifacts / "model" / "1")
    assert (artifacts / "model" / "1" / "weights.txt").read_text() == "w"


def test_runtime_records_the_cells_traceback_without_its_own_frames(tmp_path: Path) -> None:
    cell = """
    x = 16
    raise ValueError(f"bad value {x + 1}")
    """
    code = write_bundle(tmp_path, cell)
    done = run_runtime(code, tmp_path)
    assert done.returncode == 1
    status = replica_status(tmp_path)
    assert status["exit_code"] == 1
    assert status["error"] == "ValueError: bad value 17"
    trace = status["traceback"]
    assert 'raise ValueError(f"bad value {x + 1}")' in trace
    assert "ValueError: bad value 17" in trace
    assert "runtime.py" not in trace
    assert trace in done.stderr  # the log shows the same traceback
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())


def test_traceback_shows_the_notebook_functions_source(tmp_path: Path) -> None:
    namespace = notebook_namespace(
        """
        def check(value):
            if value > 3:
                raise RuntimeError(f"too big: {value}")
            return value
        """,
        filename="<ipython-input-3>",
    )
    code = write_bundle(tmp_path, "check(2)\ncheck(9)\n", namespace)
    done = run_runtime(code, tmp_path)
    assert done.returncode == 1
    trace = replica_status(tmp_path)["traceback"]
    assert "check(9)" in trace
    assert 'raise RuntimeError(f"too big: {value}")' in trace  # from the bundle's sources.json
    assert "runtime.py" not in trace


def test_system_exit_code_is_the_replicas_exit_code(tmp_path: Path) -> None:
    code = write_bundle(tmp_path, "raise SystemExit(4)\n")
    done = run_runtime(code, tmp_path)
    assert done.returncode == 4
    assert replica_status(tmp_path)["exit_code"] == 4


def test_sys_exit_zero_is_success(tmp_path: Path) -> None:
    code = write_bundle(tmp_path, "import sys\nprint('bye')\nsys.exit(0)\nprint('not reached')\n")
    done = run_runtime(code, tmp_path)
    assert done.returncode == 0
    assert "bye" in done.stdout and "not reached" not in done.stdout
    assert replica_status(tmp_path)["exit_code"] == 0


def test_python_version_mismatch_is_one_line_naming_both_versions(tmp_path: Path) -> None:
    namespace = notebook_namespace("def f():\n    return 1\n")
    code = write_bundle(tmp_path, "print(f())\n", namespace)
    meta = json.loads((code / "bundle.json").read_text())
    assert meta["names"] == ["f"]
    other = "3.7" if HERE != "3.7" else "3.8"
    meta["python"] = other
    (code / "bundle.json").write_text(json.dumps(meta))
    done = run_runtime(code, tmp_path)
    assert done.returncode == 1
    output = (done.stdout + done.stderr).strip().splitlines()
    assert len(output) == 1, output
    assert f"Python {other}" in output[0] and f"Python {HERE}" in output[0]
    assert "--image" in output[0]
    status = replica_status(tmp_path)
    assert status["exit_code"] == 1
    assert f"Python {other}" in status["error"]


def test_python_version_mismatch_without_names_still_runs(tmp_path: Path) -> None:
    code = write_bundle(tmp_path, "print('no pickles, no problem')\n")
    meta = json.loads((code / "bundle.json").read_text())
    meta["python"] = "3.7" if HERE != "3.7" else "3.8"
    (code / "bundle.json").write_text(json.dumps(meta))
    done = run_runtime(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no pickles, no problem" in done.stdout


def test_legacy_keras_without_tf_keras_says_what_to_do(tmp_path: Path) -> None:
    code = write_bundle(tmp_path, "print('cell ran')\n")
    done = run_runtime(code, tmp_path, env={"TF_USE_LEGACY_KERAS": "1"})
    assert done.returncode == 1
    assert "cell ran" not in done.stdout
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "tf-keras" in message
    assert "TF_USE_LEGACY_KERAS=0" in message
    assert replica_status(tmp_path)["exit_code"] == 1


def test_legacy_keras_with_tf_keras_installed_runs(tmp_path: Path) -> None:
    if importlib.util.find_spec("tf_keras") is None:  # find_spec only: no TensorFlow import
        pytest.skip("tf-keras is not installed")
    code = write_bundle(tmp_path, "print('cell ran')\n")
    done = run_runtime(code, tmp_path, no_site=False, env={"TF_USE_LEGACY_KERAS": "1"})
    assert done.returncode == 0, done.stderr
    assert "cell ran" in done.stdout


# -- a replica that asked for GPUs -------------------------------------------------------


def test_a_replica_that_asked_for_a_gpu_and_sees_none_says_so_and_runs(tmp_path: Path) -> None:
    """Real TensorFlow on this GPU-less machine, started as a pod starts the runtime."""
    code = write_bundle(tmp_path, "print('cell ran')\n")
    done = run_runtime(code, tmp_path, no_site=False, env={"KFNB_GPUS": "1"})
    assert done.returncode == 0, done.stderr
    assert "cell ran" in done.stdout
    lines = [line for line in done.stderr.splitlines() if line.startswith("kfnb: ")]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kfnb: this replica asked for 1 GPU(s) but TensorFlow sees none: ")
    assert replica_status(tmp_path)["warnings"] == [lines[0].removeprefix("kfnb: ")]


def test_a_replica_without_gpus_checks_nothing(tmp_path: Path) -> None:
    # Under -S there is no TensorFlow: the check must not even import it.
    code = write_bundle(tmp_path, "import sys\nprint('tensorflow' in sys.modules)\n")
    done = run_runtime(code, tmp_path, env={"KFNB_GPUS": "0"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False" and "GPU" not in done.stderr
    assert replica_status(tmp_path)["warnings"] == []


class FakeTensorFlow:
    """What `_no_gpu_reason` asks of TensorFlow: its version and build."""

    __version__ = "2.21.0"

    def __init__(self, cuda: bool) -> None:
        build = {"is_cuda_build": cuda, "cuda_version": "12.5.1", "cudnn_version": "9"}
        self.sysconfig = type("SysConfig", (), {"get_build_info": staticmethod(lambda: build)})


@pytest.mark.parametrize(
    ("cuda", "visible", "devices", "reason"),
    [
        (False, "0", ["nvidia0"], "built without CUDA (a CPU build): use a -gpu image"),
        (True, "", ["nvidia0", "nvidiactl"], "no GPU device was given to this replica"),
        (True, None, ["nvidiactl", "null"], "no GPU device was given to this replica"),
        (True, "0", ["nvidia0", "nvidiactl"], "lacks the CUDA 12.5.1 and cuDNN 9 libraries"),
    ],
)
def test_the_reason_for_no_gpu_names_the_fix(
    monkeypatch: pytest.MonkeyPatch,
    cuda: bool,
    visible: str | None,
    devices: list[str],
    reason: str,
) -> None:
    from kfnb import runtime

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(runtime.os, "listdir", lambda path: devices)
    said = runtime._no_gpu_reason(FakeTensorFlow(cuda))
    assert reason in said
    assert "tensorflow[and-cuda]==2.21.0" in said or "%kfnb nodes" in said


# -- fetch ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../../../outside.txt", "data/../../../../outside.txt"])
def test_fetch_refuses_a_url_whose_path_leads_outside_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    from kfnb.runtime import ReplicaError

    (tmp_path / "outside.txt").write_text("not the data set")
    monkeypatch.setenv("KFNB_DATA_CACHE", str(tmp_path / "a" / "cache"))
    job = context(tmp_path / "artifacts", "worker", 0, cluster())
    with pytest.raises(ReplicaError, match="outside"):
        job.fetch(f"s3://datasets/{key}")
