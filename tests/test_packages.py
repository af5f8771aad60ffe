"""What replicas get installed beyond their image (`kfnb.packages`), the wheelhouse the
notebook fills (`kfnb.wheelhouse`) and the replica-side installer (`install_packages.py`).

The wheelhouse and installer tests download small real wheels from the package index
this machine reaches (PyPI through pip's settings), as a notebook would.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import kfnb
from kfnb import install_packages, wheelhouse
from kfnb.api import prepare
from kfnb.bundle import build_bundle
from kfnb.packages import (
    Needs,
    Package,
    PackageError,
    PackagePlan,
    image_facts,
    plan_packages,
    pod_index_env,
)
from kfnb.spec import PACKAGES_CONTAINER, PACKAGES_DIR, JobSpec
from kfnb.storage import LocalStore
from tests.conftest import validate_tfjob
from tests.fake_kube import FakeKube

REPO = Path(__file__).resolve().parent.parent
TF_VERSION = metadata.version("tensorflow-cpu")
DEMO_CELL = (
    "metrics = train(epochs=epochs, batch_size=32, model_dir=tfjob.model_dir,\n"
    "                callbacks=[tfjob.tensorboard()])\n"
)


def demo_bundle() -> Any:
    """The demo notebook's training cell, with `train` from the repository's model/."""
    sys.path.insert(0, str(REPO))
    try:
        from model.mnist import train
    finally:
        sys.path.remove(str(REPO))
    return build_bundle(DEMO_CELL, {"train": train, "epochs": 1}, job_name="demo")


def by_name(plan: PackagePlan) -> dict[str, Package]:
    return {p.name: p for p in plan.packages}


def test_the_stock_image_gets_tf_keras_tensorboard_and_the_notebooks_packages() -> None:
    plan = plan_packages(
        demo_bundle(), Needs(legacy_keras=True), image=f"tensorflow/tensorflow:{TF_VERSION}"
    )
    packages = by_name(plan)
    assert packages["tf-keras"].version == TF_VERSION  # matches the image's TensorFlow
    assert "TF_USE_LEGACY_KERAS" in packages["tf-keras"].why
    assert packages["tensorboard"].version == metadata.version("tensorboard")
    assert packages["mlxtend"].version == metadata.version("mlxtend")
    assert packages["mlxtend"].why == "imported by model/mnist.py"
    # mlxtend's own dependencies come along, pinned to the notebook's versions...
    assert packages["scikit-learn"].version == metadata.version("scikit-learn")
    assert packages["scikit-learn"].why == "needed by mlxtend"
    # ...but nothing the image has: TensorFlow and what it depends on.
    for present in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "protobuf", "h5py"):
        assert present not in packages
    assert plan.python == "3.11" and plan.known_image
    listing = plan.describe()
    assert f"tf-keras=={TF_VERSION}" in listing and "imported by model/mnist.py" in listing


def test_what_the_image_has_is_not_installed_again() -> None:
    bundle = build_bundle("print(1)", {}, job_name="j")
    older = by_name(plan_packages(bundle, Needs(), image="tensorflow/tensorflow:2.20.0"))
    assert "tensorboard" not in older  # a TensorFlow dependency until 2.20
    newer = by_name(plan_packages(bundle, Needs(), image="tensorflow/tensorflow:2.21.0"))
    assert "tensorboard" in newer
    single = by_name(plan_packages(bundle, Needs(legacy_keras=False), image="x/y:1"))
    assert "tf-keras" not in single  # one replica runs Keras 3, no tf-keras needed


def test_an_unknown_image_is_checked_in_the_pod() -> None:
    bundle = build_bundle("import mlxtend\n", {}, job_name="j")
    plan = plan_packages(bundle, Needs(), image="registry.example.com/team/trainer:7")
    assert image_facts(plan.image) is None and not plan.known_image
    assert plan.to_json()["check_image"] is True
    assert "mlxtend" in by_name(plan)


def test_a_gpu_job_on_the_gpu_image_gets_tensorflows_cuda_wheels() -> None:
    bundle = build_bundle("print(1)", {}, job_name="j")
    image = f"tensorflow/tensorflow:{TF_VERSION}-gpu"
    gpu = by_name(plan_packages(bundle, Needs(gpus=1), image=image))
    cudnn = gpu["nvidia-cudnn-cu12"]
    assert tuple(int(p) for p in (cudnn.version or "0").split(".")[:2]) >= (9, 3)
    assert "cuDNN 8.9" in cudnn.why
    cpu = by_name(plan_packages(bundle, Needs(gpus=0), image=image))
    assert not any(name.startswith("nvidia-") for name in cpu)


def test_a_missing_import_is_a_note_not_a_guess() -> None:
    bundle = build_bundle("import kfnb_no_such_module\n", {}, job_name="j")
    plan = plan_packages(bundle, Needs(), image="tensorflow/tensorflow:2.21.0")
    assert "kfnb-no-such-module" not in by_name(plan)
    assert any("--pip kfnb-no-such-module" in note for note in plan.notes)


def test_a_pip_spec_that_does_not_exist_is_one_line_before_anything_runs() -> None:
    bundle = build_bundle("print(1)", {}, job_name="j")
    with pytest.raises(PackageError) as caught:
        plan_packages(bundle, Needs(pip=("kfnb-surely-not-a-package==1.0",)), image="x/y:1")
    message = str(caught.value)
    assert "\n" not in message and "kfnb-surely-not-a-package" in message
    assert "No matching distribution" in message


def test_a_pip_spec_that_conflicts_with_tensorflows_pins_is_one_line() -> None:
    bundle = build_bundle("print(1)", {}, job_name="j")
    with pytest.raises(PackageError) as caught:  # TensorFlow 2.21 needs protobuf >= 5
        plan_packages(bundle, Needs(pip=("protobuf==3.20.3",)), image="x/y:1")
    message = str(caught.value)
    assert "\n" not in message and "protobuf" in message


def test_pip_specs_are_resolved_and_pinned() -> None:
    bundle = build_bundle("print(1)", {}, job_name="j")
    plan = plan_packages(
        bundle, Needs(pip=("requests-toolbelt",)), image="tensorflow/tensorflow:2.21.0"
    )
    toolbelt = by_name(plan)["requests-toolbelt"]
    assert toolbelt.version and toolbelt.why == "--pip"
    assert "requests" not in by_name(plan)  # TensorFlow's requests is in the image


def test_pods_get_the_index_settings_but_never_credentials() -> None:
    env = {
        "PIP_INDEX_URL": "https://mirror.example.com/simple",
        "PIP_EXTRA_INDEX_URL": "file:///opt/pypi/simple",
    }
    assert pod_index_env(env) == {"PIP_INDEX_URL": "https://mirror.example.com/simple"}
    with pytest.raises(PackageError, match="credentials"):
        pod_index_env({"PIP_INDEX_URL": "https://alice:s3cret@mirror.example.com/simple"})


def test_the_manifest_installs_with_an_init_container_of_the_same_image(
    tfjob_validators: list[Any], monkeypatch: pytest.MonkeyPatch, fake_kube: FakeKube
) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example.com/simple")
    prepared = prepare(
        "import mlxtend\n", workers=2, backend="kubernetes", names={}, namespace="alice"
    )
    manifest = prepared.manifest
    validate_tfjob(tfjob_validators, manifest)
    pod = manifest["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (main,) = pod["containers"]
    assert init["name"] == PACKAGES_CONTAINER and init["image"] == main["image"]
    assert init["securityContext"]["runAsNonRoot"] is True
    assert {"name": "PIP_INDEX_URL", "value": "https://mirror.example.com/simple"} in init["env"]
    assert {"name": "PYTHONPATH", "value": PACKAGES_DIR} in main["env"]
    assert {"name": PACKAGES_CONTAINER, "emptyDir": {}} in pod["volumes"]
    assert set(prepared.bundle.files) >= {"packages.json", "install_packages.py"}
    plan = json.loads(prepared.bundle.files["packages.json"])
    assert "mlxtend" in {p["name"] for p in plan["packages"]}


def test_the_dry_run_lists_what_will_be_installed_and_why(
    capsys: pytest.CaptureFixture[str], fake_kube: FakeKube
) -> None:
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "kfnb")
    shell.run_cell_magic(
        "tfjob", "--workers 2 --backend kubernetes --namespace alice --dry-run", "import mlxtend\n"
    )
    out = capsys.readouterr().out
    assert "initContainers:" in out
    assert f"tf-keras=={TF_VERSION}" in out and "mlxtend==" in out and "imported by the cell" in out


# -- the wheelhouse and the installer ---------------------------------------------------

SMALL = (Package("six", "1.17.0", "test"), Package("cycler", "0.12.1", "test"))


def small_plan() -> PackagePlan:
    return PackagePlan(SMALL, python="3.11", image="test", known_image=True)


def installer_plan(plan: PackagePlan, wheelhouse_url: str = "") -> dict[str, Any]:
    data = plan.to_json()
    data["wheelhouse"] = wheelhouse_url
    return data


def _fill(root: str) -> None:
    wheelhouse.fill(LocalStore(root), small_plan())


def test_a_wheelhouse_is_filled_once_and_installs_with_the_index_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "wheelhouse")
    plan = small_plan()
    assert wheelhouse.fill(store, plan) is not None
    assert wheelhouse.missing(store, plan) == []
    assert wheelhouse.fill(store, plan) is None  # complete: nothing downloaded again
    # The replica side, with every index unreachable: only the wheelhouse is used.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    target = tmp_path / "packages"
    said = install_packages.install(
        installer_plan(plan, str(tmp_path / "wheelhouse" / plan.key)), target
    )
    assert said.startswith("installed 2 packages")
    assert (target / "six.py").is_file() and (target / "cycler").is_dir()
    assert install_packages.install(installer_plan(plan), target).startswith("packages already")


def test_an_interrupted_or_damaged_wheelhouse_is_never_used(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    plan = small_plan()
    wheelhouse.fill(store, plan)
    house = tmp_path / plan.key
    install_packages.verify_wheelhouse(house, "here")
    wheel = next(house.glob("six-*.whl"))
    wheel.unlink()
    assert wheelhouse.missing(store, plan) == [wheel.name]
    with pytest.raises(install_packages.InstallError, match=f"missing {wheel.name}"):
        install_packages.verify_wheelhouse(house, "here")
    wheelhouse.fill(store, plan)  # the notebook refills what is missing
    install_packages.verify_wheelhouse(house, "here")
    (house / "index.json").unlink()  # as if its filling had been interrupted
    assert wheelhouse.missing(store, plan) is None
    with pytest.raises(install_packages.InstallError, match="not complete"):
        install_packages.verify_wheelhouse(house, "here")


def test_two_notebooks_filling_one_wheelhouse_at_once_leave_it_complete(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    fillers = [context.Process(target=_fill, args=(str(tmp_path),)) for _ in range(2)]
    for process in fillers:
        process.start()
    for process in fillers:
        process.join(300)
        assert process.exitcode == 0
    plan = small_plan()
    assert wheelhouse.missing(LocalStore(tmp_path), plan) == []
    install_packages.verify_wheelhouse(tmp_path / plan.key, "here")


def test_a_wheelhouse_in_s3_is_read_with_the_bundles_minio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_port: int
) -> None:
    from kfnb.storage import open_store
    from tests.s3_server import use_endpoint

    use_endpoint(monkeypatch, moto_port, "wheel-key", "wheel-secret-123")
    store = open_store("s3://wheels/team")
    store.check()
    plan = small_plan()
    wheelhouse.fill(store, plan)
    # The installer runs from a bundle directory: artifact_sync.py and vendor/minio.
    bundle = build_bundle("print(1)", {}, job_name="j", s3=True)
    code = tmp_path / "code"
    bundle.write(code)
    (code / "install_packages.py").write_bytes(Path(install_packages.__file__).read_bytes())
    (code / "packages.json").write_text(
        json.dumps(installer_plan(plan, f"s3://wheels/team/{plan.key}"))
    )
    target = tmp_path / "target"
    done = subprocess.run(
        [sys.executable, str(code / "install_packages.py"), str(target)],
        env={"PATH": "/usr/bin:/bin", "KFNB_CODE_DIR": str(code), **_s3_env(monkeypatch)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "from the wheelhouse s3://wheels/team/" in done.stdout
    assert (target / "six.py").is_file()


def _s3_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    import os

    keys = (
        "S3_ENDPOINT",
        "S3_USE_HTTPS",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    )
    return {k: os.environ[k] for k in keys if k in os.environ}


def test_an_unreachable_index_fails_in_seconds_naming_the_host_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens
    started = time.monotonic()
    with pytest.raises(install_packages.InstallError) as caught:
        install_packages.install(installer_plan(small_plan()), tmp_path / "t")
    assert time.monotonic() - started < install_packages.PROBE_SECONDS + 5
    message = str(caught.value)
    assert "http://127.0.0.1:9" in message and "--wheelhouse" in message and "\n" not in message
    assert not (tmp_path / "t").exists()


def test_kfnb_exports_prepare() -> None:
    assert kfnb.prepare is prepare


def test_gpu_replicas_find_the_cuda_wheels_libraries(
    tfjob_validators: list[Any], fake_kube: FakeKube
) -> None:
    prepared = prepare("print(1)\n", workers=2, gpus=1, backend="kubernetes", names={})
    validate_tfjob(tfjob_validators, prepared.manifest)
    assert prepared.spec.image.endswith("-gpu")
    pod = prepared.manifest["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    paths = env["LD_LIBRARY_PATH"].split(":")
    assert f"{PACKAGES_DIR}/nvidia/cudnn/lib" in paths
    assert paths[-1] == "/usr/local/nvidia/lib64"  # the driver, where the NVIDIA images put it
    assert prepared.packages is not None
    assert "nvidia-cudnn-cu12" in {p.name for p in prepared.packages.packages}


def test_an_offline_notebook_passes_pip_specs_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # nor pip.conf's other indexes
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    bundle = build_bundle("print(1)", {}, job_name="j")
    started = time.monotonic()
    plan = plan_packages(bundle, Needs(pip=("requests-toolbelt>=1",)), image="x/y:1")
    assert time.monotonic() - started < 60
    assert by_name(plan)["requests-toolbelt"].requirement == "requests-toolbelt>=1"
    assert any("cannot reach the package index" in note for note in plan.notes)


def test_imports_inside_notebook_functions_sent_as_source_count() -> None:
    from dataclasses import asdict

    from kfnb.bundle_source import Definition

    bundle = build_bundle("print(1)", {}, job_name="j")
    definition = Definition(
        name="load", source="def load():\n    import mlxtend\n", filename="<cell>", line=1
    )
    files = {**bundle.files, "definitions.json": json.dumps([asdict(definition)]).encode()}
    bundle = type(bundle)(files=files, meta=bundle.meta)
    plan = plan_packages(bundle, Needs(), image="tensorflow/tensorflow:2.21.0")
    assert by_name(plan)["mlxtend"].why == "imported by the notebook's load"


def test_where_replicas_take_their_wheels() -> None:
    choose = wheelhouse.choose_root
    assert choose("auto", "pvc://data/runs", local=False) == "pvc://data/runs/wheelhouse"
    assert choose("auto", "s3://b/runs", local=False) == "s3://b/runs/wheelhouse"
    assert choose("auto", "/home/me/jobs", local=False) == "off"  # pods cannot see it
    assert choose("auto", "/home/me/jobs", local=True) == "/home/me/jobs/wheelhouse"
    with pytest.raises(PackageError, match="s3:// store's settings"):
        choose("s3://b/wheels", "/home/me/jobs", local=False)
    with pytest.raises(PackageError, match="only the store's claim"):
        choose("pvc://other/wheels", "pvc://data/runs", local=False)
    with pytest.raises(PackageError, match="cannot read a directory"):
        choose("/wheels", "s3://b/runs", local=False)


def test_a_wheelhouse_on_the_stores_claim_is_read_where_the_pod_mounts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kfnb.backends.kube_manifests import ClusterSettings, for_cluster
    from kfnb.storage import POD_PVC_ROOT

    plan = small_plan()
    wheelhouse.fill(LocalStore(tmp_path / "claim" / "runs" / "wheelhouse"), plan)
    monkeypatch.setenv("KFNB_PVC_ROOT", str(tmp_path / "claim"))  # as the pod mounts it
    url = f"pvc://data/runs/wheelhouse/{plan.key}"
    said = install_packages.install(installer_plan(plan, url), tmp_path / "target")
    assert said.startswith("installed 2 packages")
    spec = JobSpec(name="j", workers=2, packages=True)
    manifest = for_cluster(spec.to_manifest(), ClusterSettings("alice", "pvc://data/runs"))
    init = manifest["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["initContainers"][0]
    assert {"name": "KFNB_PVC_ROOT", "value": POD_PVC_ROOT} in init["env"]
    assert any(m["mountPath"] == POD_PVC_ROOT and m["readOnly"] for m in init["volumeMounts"])


def test_a_failed_install_leaves_nothing_half_installed(tmp_path: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    (house / "index.json").write_text(json.dumps({"files": {}}))  # complete, and empty
    plan = PackagePlan((Package("six", "1.17.0", "test"),), "3.11", "test", known_image=True)
    with pytest.raises(install_packages.InstallError, match="pip could not install"):
        install_packages.install(installer_plan(plan, str(house)), tmp_path / "cache" / "key")
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []
