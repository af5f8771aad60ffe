"""Shared fixtures: every test gets its own kfnb home, so records and jobs never mix."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kfnb.config import reset_settings, settings

SCHEMAS = Path(__file__).resolve().parent / "schemas"  # copies with their sources: README.md


@pytest.fixture(autouse=True)
def kfnb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "kfnb-home"
    monkeypatch.setenv("KFNB_HOME", str(home))
    monkeypatch.delenv("KFNB_STORAGE", raising=False)
    monkeypatch.delenv("KFNB_BACKEND", raising=False)
    monkeypatch.setenv("KFNB_PYTHON", sys.executable)
    # Replicas install from the index unless a test fills a wheelhouse on purpose, so
    # no test downloads wheels into a store by accident (tests/test_packages.py does).
    monkeypatch.setenv("KFNB_WHEELHOUSE", "off")
    # No cluster unless a test brings its fake one: `auto` must not find a real kubeconfig.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr("kfnb.api._announced_backend", False)  # each test a fresh kernel
    reset_settings()
    settings()
    yield home
    _stop_leftover_sweeps()
    _stop_leftover_jobs(home)
    _stop_leftover_servers(home)
    _forget_clusters()
    reset_settings()


@pytest.fixture
def fake_kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The fake API server (tests/fake_kube.py) and a kubeconfig pointing at it (context
    namespace alice). A fake, not Kubernetes."""
    from tests.fake_kube import FakeKube

    with FakeKube() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.kubeconfig(tmp_path / "kubeconfig")))
        yield fake


@pytest.fixture
def in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The fake in in-cluster mode, as a notebook pod sees its API server: HTTPS with a CA
    made for the test, a bearer token required, and a service-account directory (token,
    ca.crt, namespace alice) in place of /var/run/secrets/kubernetes.io/serviceaccount.
    No kubeconfig exists (kfnb_home), so only the in-cluster path can reach it."""
    from tests.fake_kube import FakeKube

    with FakeKube(tls=True) as fake:
        for key, value in fake.service_account(tmp_path / "serviceaccount").items():
            monkeypatch.setenv(key, value)
        yield fake


@pytest.fixture(scope="module")
def moto_port() -> Iterator[int]:
    """A real S3 server (moto's) on 127.0.0.1, one per test module that asks for it."""
    from kfnb.backends.supervisor import free_port
    from tests.s3_server import start_moto

    port = free_port()
    server: Any = start_moto(port)
    yield port
    server.stop()


@pytest.fixture
def shell(kfnb_home: Path) -> Iterator[Any]:
    """IPython's test shell with kfnb loaded; names a test defines are removed after it."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    import kfnb

    ip = start_ipython() or get_ipython()  # the first call starts it, later ones return None
    assert ip is not None
    ip.config.pop("Kfnb", None)  # %config values live in the shell's config: start clean
    before = set(ip.user_ns)
    kfnb.load_ipython_extension(ip)
    yield ip
    kfnb.unload_ipython_extension(ip)
    ip.config.pop("Kfnb", None)
    for name in set(ip.user_ns) - before:
        del ip.user_ns[name]


def _stop_leftover_sweeps() -> None:
    """Nor local sweep runners starting trials."""
    from kfnb.sweeps import Sweep
    from kfnb.sweeps.record import list_sweeps

    for record in list_sweeps():
        if record.backend == "local":
            Sweep(record).delete()


def _stop_leftover_jobs(home: Path) -> None:
    """A failing test must not leave replicas running into the next one."""
    from kfnb.backends.local import LocalBackend

    backend = LocalBackend(storage=home / "jobs")
    for status in backend.list_jobs():
        if not status.finished:
            backend.delete(status.name)


def _stop_leftover_servers(home: Path) -> None:
    """Nor model servers started by %serve."""
    from kfnb.serving.local import LocalServing

    serving = LocalServing(home)
    for served in serving.list():
        if served.backend == "local":
            serving.stop(served.name)
def _forget_clusters() -> None:
    """Watches of one test's fake cluster must not outlive it; auto chooses afresh."""
    import kfnb.backends.kubernetes as kube

    kube.stop_watchers()
    kube.reset_auto()
    kube._checked.clear()


def _strict(schema: Any) -> Any:
    """The schema with additionalProperties: false wherever properties are listed,
    so a misspelt field fails (the CRD schemas alone accept unknown fields)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


# kind -> (file, the root the manifest is checked against); see tests/schemas/README.md.
_SCHEMA_ROOTS = {
    "TFJob": ("tfjob-v1.json", None),
    "InferenceService": ("inferenceservice-v1beta1.json", None),
    "InferenceGraph": ("inferencegraph-v1alpha1.json", None),
    "Workflow": ("argo-workflows-jsonschema.json", "io.argoproj.workflow.v1alpha1.Workflow"),
    "CronWorkflow": (
        "argo-workflows-jsonschema.json",
        "io.argoproj.workflow.v1alpha1.CronWorkflow",
    ),
    "Experiment": ("katib-v1beta1-openapi.json", "v1beta1.Experiment"),
}


@functools.cache
def schema_validators(kind: str) -> list[Any]:
    """Validators for the real schema of ``kind``, as given and strict."""
    jsonschema = pytest.importorskip("jsonschema")
    file, root = _SCHEMA_ROOTS[kind]
    schema = json.loads((SCHEMAS / file).read_text())
    if "components" in schema:  # OpenAPI 3 (Katib): its types, referred to as definitions
        text = json.dumps(schema["components"]["schemas"])
        text = text.replace("#/components/schemas/", "#/definitions/")
        schema = {"definitions": json.loads(text)}
    if root is not None:
        schema = {"$ref": f"#/definitions/{root}", "definitions": schema["definitions"]}
    return [jsonschema.Draft7Validator(schema), jsonschema.Draft7Validator(_strict(schema))]


def schema_errors(manifest: dict[str, Any]) -> list[str]:
    """Every message the schema of the manifest's kind has against it, as given or strict."""
    return [
        error.message
        for validator in schema_validators(manifest["kind"])
        for error in sorted(validator.iter_errors(manifest), key=str)
    ]


@pytest.fixture(scope="session")
def tfjob_validators() -> list[Any]:
    return schema_validators("TFJob")


def validate_tfjob(validators: list[Any], manifest: dict[str, Any]) -> None:
    for validator in validators:
        errors = sorted(validator.iter_errors(manifest), key=str)
        assert not errors, "\n".join(e.message for e in errors[:5])


@pytest.fixture(scope="session")
def mnist_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two MNIST SavedModel versions (untrained, briefly trained) and their outputs,
    exported once per session (see tests/serving_helpers.py)."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("needs tensorflow")
    from tests.serving_helpers import export_models

    return export_models(tmp_path_factory.mktemp("mnist-models"))
