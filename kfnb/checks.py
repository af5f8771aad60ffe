"""`kfnb.check()`: what a first job needs, asked before it runs (``%kfnb check``).

One row per thing a user on a new cluster would otherwise learn from a failed job:
the backend and why, the namespace and what the account may do in it, which of the
Training Operator, KServe, Argo and Katib the cluster serves, its GPUs, the
namespace's Istio and Pod Security labels, the store, the replicas' Python and where
they get packages. Each row turns its own failure into its answer, so one refusal (a
profile's account may read neither its namespace nor the cluster's nodes) never hides
the other rows. Rows are data; ``%kfnb check`` prints them as a table.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kfnb.config import settings

if TYPE_CHECKING:
    from kfnb.backends.kube_api import ApiError, KubeApi
    from kfnb.backends.kubernetes import BackendChoice

__all__ = ["CheckResult", "backend_choice", "check"]

Status = Literal["ok", "warn", "fail"]
OPERATOR_NAMESPACE, OPERATOR_DEPLOYMENT = "kubeflow", "training-operator"
ISTIO_LABEL, ISTIO_REVISION = "istio-injection", "istio.io/rev"
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
PROBE = ".kfnb-check/probe"  # written and removed again to prove the store writable
NODES_FIX = "ask your cluster admin to apply deploy/rbac-nodes.yaml (cluster-wide, read-only)"
# Components kfnb uses when a cluster has them: row, group/version, plural, use, install.
OPTIONAL = (
    (
        "Argo Workflows",
        "argoproj.io/v1alpha1",
        "workflows",
        "pipelines run on the cluster",
        "install Argo Workflows: kubectl create namespace argo && kubectl apply -n argo -f "
        "https://github.com/argoproj/argo-workflows/releases/latest/download/install.yaml",
    ),
    (
        "Katib",
        "kubeflow.org/v1beta1",
        "experiments",
        "sweeps run on the cluster",
        'install Katib: kubectl apply -k "github.com/kubeflow/katib.git/manifests/v1beta1/'
        'installs/katib-standalone?ref=v0.17.0"',
    ),
)


@dataclass(frozen=True)
class CheckResult:
    """One row: ``what`` was checked, how it stands, in words, and what to do about it."""

    what: str
    status: Status
    detail: str
    fix: str = ""  # empty when nothing is to be done, or ``detail`` already says it


def backend_choice(name: str | None = None) -> BackendChoice:
    """The backend jobs go to (``name``, else ``Kfnb.backend``) and why."""
    from kfnb.backends.kubernetes import BackendChoice, choose_auto

    asked = f"--backend {name}" if name else f"Kfnb.backend is {settings().backend!r}"
    name = name or settings().backend
    return choose_auto() if name == "auto" else BackendChoice(name, asked)


def check(
    backend: str | None = None, namespace: str | None = None, storage: str | None = None
) -> list[CheckResult]:
    """Every row of ``%kfnb check``, for ``backend``, ``namespace`` and ``storage`` (default:
    the settings). ``auto`` asks the cluster again: it may have come up since."""
    from kfnb.backends.kube_api import cluster_configured
    from kfnb.backends.kubernetes import reset_auto

    reset_auto()
    choice = backend_choice(backend)
    rows = [_backend_row(choice)]
    on_cluster = choice.name == "kubernetes"
    if on_cluster or cluster_configured():  # a configured cluster kfnb cannot use: say why
        rows += _cluster_rows(namespace)
    if not on_cluster:
        rows.append(_guarded("GPUs", _local_gpus))
    store = str(storage or settings().storage)
    rows.append(_guarded("store", lambda: _store_row(store, on_cluster)))
    rows.append(_guarded("Python", lambda: _python_row(on_cluster)))
    rows.append(_guarded("packages", lambda: _packages_row(store, on_cluster)))
    return rows


def _guarded(what: str, row: Callable[[], CheckResult]) -> CheckResult:
    """The row, or its failure as one line (the library's errors name their fix)."""
    from kfnb.backends import BackendError
    from kfnb.packages import PackageError
    from kfnb.storage import StoreError

    try:
        return row()
    except (BackendError, PackageError, StoreError) as err:
        return CheckResult(what, "fail", str(err))


def _backend_row(choice: BackendChoice) -> CheckResult:
    if choice.name not in ("local", "kubernetes"):
        fix = "%config Kfnb.backend = 'auto' (or local, kubernetes)"
        return CheckResult("backend", "fail", f"unknown backend {choice.name!r}", fix=fix)
    unusable = choice.reason.startswith("the cluster is not usable")
    return CheckResult("backend", "warn" if unusable else "ok", f"{choice.name}: {choice.reason}")


def _local_gpus() -> CheckResult:
    from kfnb.backends.local import local_gpus

    found = local_gpus()
    if not found:
        return CheckResult("GPUs", "ok", "none on this machine: --gpus jobs run on its CPUs")
    return CheckResult("GPUs", "ok", f"{len(found)} on this machine (nvidia-smi)")


# -- the cluster -------------------------------------------------------------------


def _cluster_rows(namespace: str | None) -> list[CheckResult]:
    from kfnb.backends import BackendError
    from kfnb.backends.kube_api import ApiError, KubeApi

    try:
        api = KubeApi(namespace or settings().namespace or None, timeout=5.0)
    except BackendError as err:
        return [CheckResult("cluster", "fail", str(err))]
    try:
        labels: dict[str, str] | ApiError = _namespace_labels(api)
    except ApiError as err:
        if err.status not in (403, 404):  # no answer, credentials refused, not an API server
            return [CheckResult("cluster", "fail", str(err))]
        labels = err
    rows = [
        CheckResult("cluster", "ok", f"{api.info.server} ({_source(api)})"),
        _namespace_row(api, labels),
    ]
    checks: list[tuple[str, Callable[[], CheckResult]]] = [
        ("access", lambda: _access_row(api)),
        ("TFJob", lambda: _operator_row(api)),
        ("KServe", lambda: _kserve_row(api)),
        ("TF Serving", _serving_row),
        *((o[0], lambda o=o: _optional_row(api, *o)) for o in OPTIONAL),
        ("GPU nodes", lambda: _gpu_row(api)),
        ("Istio", lambda: _istio_row(api, labels)),
        ("Pod Security", lambda: _pod_security_row(api, labels)),
    ]
    return rows + [_guarded(what, row) for what, row in checks]


def _source(api: KubeApi) -> str:
    if api.info.source == "in-cluster":
        return "in-cluster, this pod's service-account token"
    return f"kubeconfig {api.info.source}"


def _namespace_labels(api: KubeApi) -> dict[str, str]:
    """The namespace's labels; also the first request, which shows the server answers."""
    found = api.request("GET", f"/api/v1/namespaces/{api.namespace}")
    return dict(found.get("metadata", {}).get("labels") or {})


def _namespace_row(api: KubeApi, labels: dict[str, str] | ApiError) -> CheckResult:
    if settings().namespace:
        source = "Kfnb.namespace"
    elif api.info.source == "in-cluster":
        source = "this pod's service-account namespace"
    else:
        source = "the kubeconfig context's, else default"
    if not isinstance(labels, dict) and labels.status == 404:
        return CheckResult("namespace", "fail", str(labels))
    return CheckResult("namespace", "ok", f"{api.namespace} ({source})")


def _access_row(api: KubeApi) -> CheckResult:
    from kfnb.backends.kube_api import RBAC_FIX
    from kfnb.backends.kubernetes import NEEDED, KubernetesBackend

    missing = KubernetesBackend(api=api).denied()
    if missing is None:
        return CheckResult(
            "access",
            "warn",
            "unknown: this account may not ask (403 on SelfSubjectAccessReview); a job's "
            "first refused request will name what it lacks",
            fix="ask your cluster admin for create on selfsubjectaccessreviews (every "
            "authenticated user has it by default, through system:basic-user)",
        )
    if missing:
        lacks = ", ".join(f"{verb} {what}" for verb, what in missing)
        return CheckResult("access", "fail", f"may not {lacks} in {api.namespace}", fix=RBAC_FIX)
    return CheckResult(
        "access", "ok", f"all {len(NEEDED)} permissions kfnb needs are granted in {api.namespace}"
    )


def _served(api: KubeApi, group_version: str, plural: str) -> bool:
    """Whether API discovery lists ``plural`` (a CRD's group alone is not enough)."""
    from kfnb.backends.kube_api import ApiError

    try:
        found = api.request("GET", f"/apis/{group_version}")
    except ApiError as err:
        if err.status == 404:
            return False
        raise
    return any(r.get("name") == plural for r in found.get("resources", []))


def _operator_row(api: KubeApi) -> CheckResult:
    from kfnb.backends.kube_api import OPERATOR_INSTALL, TFJOB_GROUP, TFJOB_VERSION

    if not _served(api, f"{TFJOB_GROUP}/{TFJOB_VERSION}", "tfjobs"):
        return CheckResult(
            "TFJob",
            "fail",
            "no TFJob resource (kubeflow.org/v1): no job can run here",
            fix=f"install the Training Operator 1.9: {OPERATOR_INSTALL}",
        )
    return CheckResult("TFJob", "ok", f"kubeflow.org/v1 served; {_operator_version(api)}")


def _operator_version(api: KubeApi) -> str:
    """The Training Operator's image tag, where its Deployment may be read."""
    from kfnb.backends.kube_api import ApiError

    where = f"Deployment {OPERATOR_NAMESPACE}/{OPERATOR_DEPLOYMENT}"
    path = f"/apis/apps/v1/namespaces/{OPERATOR_NAMESPACE}/deployments/{OPERATOR_DEPLOYMENT}"
    try:
        deployment = api.request("GET", path)
    except ApiError as err:
        why = {403: f"this account may not read {where}", 404: f"no {where}"}
        return f"operator version unknown ({why.get(err.status, f'{where}: HTTP {err.status}')})"
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
    image = str((containers or [{}])[0].get("image", ""))
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag (a port, or a digest only): the image says it all
        return f"operator image {image or 'unknown'}"
    return f"Training Operator {tag} ({image})"


def _kserve_row(api: KubeApi) -> CheckResult:
    from kfnb.serving.kubernetes import KSERVE_INSTALL

    if _served(api, "serving.kserve.io/v1beta1", "inferenceservices"):
        return CheckResult("KServe", "ok", "serving.kserve.io/v1beta1 InferenceService served")
    return CheckResult(
        "KServe",
        "warn",
        "no InferenceService resource: %serve --backend kubernetes cannot use KServe",
        fix=f"install KServe ({KSERVE_INSTALL}), or %serve with --runtime tfserving",
    )


def _serving_row() -> CheckResult:
    """Which TF Serving release loads what the default image's TensorFlow exports."""
    from kfnb.api import default_image
    from kfnb.serving.compat import image_tf_version, kernel_tf_version, serving_release

    image = settings().image or default_image(0)
    if version := image_tf_version(image):
        release = serving_release(version, f"a job on {image}")
    else:
        release = serving_release(kernel_tf_version(), "a job, taken to export as this kernel,")
    return CheckResult("TF Serving", "ok", f"{release.image()}: {release.why}")


def _optional_row(
    api: KubeApi, what: str, group_version: str, plural: str, use: str, install: str
) -> CheckResult:
    if _served(api, group_version, plural):
        return CheckResult(what, "ok", f"{group_version} {plural} served: {use}")
    return CheckResult(what, "warn", f"not installed: no {use}", fix=install)


def _gpu_row(api: KubeApi) -> CheckResult:
    from kfnb.backends.kube_api import ApiError
    from kfnb.backends.kube_nodes import CLUSTER_PODS_GRANT, gpu_nodes

    try:
        report = gpu_nodes(api)
    except ApiError as err:
        if err.status != 403:
            raise
        detail = "unknown: this account may not list nodes cluster-wide"
        return CheckResult("GPU nodes", "warn", detail, fix=NODES_FIX)
    nodes = [n for n in report.nodes if n.allocatable]
    if not nodes:
        return CheckResult(
            "GPU nodes",
            "warn",
            "no node offers nvidia.com/gpu: a --gpus job would stay Pending",
            fix="run without --gpus, or ask your cluster admin for GPU nodes (NVIDIA's plugin)",
        )
    total, used = sum(n.allocatable for n in nodes), sum(n.allocated for n in nodes)
    names = ", ".join(n.name for n in nodes)
    if report.namespace:  # only its own pods could be counted: no "free" figure to give
        return CheckResult(
            "GPU nodes",
            "ok",
            f"{len(nodes)} ({names}): {total} GPUs, {used} allocated to {report.namespace}'s "
            f"pods (other namespaces' not counted: {CLUSTER_PODS_GRANT})",
        )
    return CheckResult(
        "GPU nodes", "ok", f"{len(nodes)} ({names}): {total} GPUs, {total - used} free"
    )


def _unreadable(what: str, api: KubeApi, error: ApiError, fix: str) -> CheckResult:
    """A namespace the account may not read (usual for a profile's): unknown, not failed."""
    detail = f"unknown: this account may not read namespace {api.namespace} (HTTP {error.status})"
    return CheckResult(what, "warn", detail, fix=fix)


def _istio_row(api: KubeApi, labels: dict[str, str] | ApiError) -> CheckResult:
    sidecar = settings().istio_sidecar
    if not isinstance(labels, dict):
        fix = "none needed: replicas opt out with sidecar.istio.io/inject=false"
        return _unreadable("Istio", api, labels, "" if sidecar else fix)
    injected = labels.get(ISTIO_LABEL) == "enabled" or ISTIO_REVISION in labels
    if not injected:
        return CheckResult("Istio", "ok", f"no sidecar injection in {api.namespace}")
    if sidecar:
        return CheckResult(
            "Istio",
            "warn",
            f"injection on in {api.namespace} and Kfnb.istio_sidecar lets replicas have a "
            "sidecar, which keeps a finished replica Running (kubeflow/trainer#1778)",
            fix="%config Kfnb.istio_sidecar = False",
        )
    detail = (
        f"injection on in {api.namespace}: replicas opt out (sidecar.istio.io/inject=false), "
        "serving pods keep the mesh"
    )
    return CheckResult("Istio", "ok", detail)


def _pod_security_row(api: KubeApi, labels: dict[str, str] | ApiError) -> CheckResult:
    template = bool(settings().pod_template)
    if not isinstance(labels, dict):
        fix = "" if template else "none needed: kfnb's pods meet restricted, the strictest level"
        return _unreadable("Pod Security", api, labels, fix)
    level = labels.get(ENFORCE_LABEL, "")
    if template and level in ("baseline", "restricted"):
        return CheckResult(
            "Pod Security",
            "warn",
            f"{level} enforced in {api.namespace}, and Kfnb.pod_template is merged into every "
            "replica last: the API server refuses pods it makes break the level",
            fix=f"keep Kfnb.pod_template within {level} (no root user, privilege, host paths)",
        )
    said = f"{level} enforced" if level else "no level enforced"
    return CheckResult(
        "Pod Security", "ok", f"{said} in {api.namespace}: kfnb's pods meet restricted"
    )


# -- what every backend needs ------------------------------------------------------


def _store_row(url: str, on_cluster: bool) -> CheckResult:
    """Reachable and writable: a probe object written, read back and removed."""
    from kfnb.backends.kube_manifests import ClusterSettings
    from kfnb.storage import open_store

    store = open_store(url)
    store.check()
    store.write(PROBE, b"kfnb check\n")
    if store.read(PROBE) != b"kfnb check\n":
        return CheckResult("store", "fail", f"{store.url} did not give back what kfnb wrote")
    store.delete_prefix(PROBE.split("/")[0])
    if on_cluster and not ClusterSettings("", url).shared_store:
        return CheckResult(
            "store",
            "warn",
            f"{store.url} is on this machine: pods cannot reach it, so models and TensorBoard "
            "events stay in the pods and go with them",
            fix="%config Kfnb.storage = 's3://bucket/prefix' (or --storage)",
        )
    if on_cluster and url.startswith("s3://") and not settings().s3_secret:
        return CheckResult(
            "store",
            "warn",
            f"{store.url} is writable from here, but no Secret with the S3 keys is named, so "
            "pods get none",
            fix="create a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, then "
            "%config Kfnb.s3_secret = 'its-name'",
        )
    return CheckResult("store", "ok", f"{store.url}: reachable and writable")


def _python_row(on_cluster: bool) -> CheckResult:
    """The replicas' Python against the kernel's: pickled values load only under the same."""
    kernel = f"{sys.version_info.major}.{sys.version_info.minor}"
    if on_cluster:
        from kfnb.api import default_image
        from kfnb.backends.kube_manifests import image_python

        where = settings().image or default_image(0)
        python = image_python(where)
        unknown_fix = f"use an image with Python {kernel}, or build such values in the cell"
    else:
        from kfnb.backends.local import interpreter_python

        where = settings().python
        python = interpreter_python(where)
        if python is None:
            return CheckResult(
                "Python",
                "fail",
                f"cannot run Kfnb.python {where}",
                fix="%config Kfnb.python = '/path/to/python' (one with TensorFlow)",
            )
        unknown_fix = ""
    if python is None:
        detail = f"kfnb cannot tell which Python {where} has: values shipped from the notebook "
        detail += f"load only under Python {kernel}, this kernel's"
        return CheckResult("Python", "warn", detail, fix=unknown_fix)
    if python != kernel:
        detail = f"{where} has Python {python}, this kernel {kernel}: notebook functions travel "
        detail += "as source, and values that can only be pickled (arrays) are refused"
        return CheckResult(
            "Python", "warn", detail, fix=f"build such values in the cell, or use Python {kernel}"
        )
    return CheckResult("Python", "ok", f"{python} in {where}, as in this kernel")


def _packages_row(store: str, on_cluster: bool) -> CheckResult:
    """Where replicas install what their image lacks: a wheelhouse, or the package index."""
    from kfnb.packages import pod_index_env
    from kfnb.wheelhouse import choose_root

    config = settings()
    if not config.install_packages:
        detail = "not installed (Kfnb.install_packages is off): replicas have only what "
        detail += "their image has" if on_cluster else "Kfnb.python has"
        return CheckResult("packages", "ok", detail)
    root = choose_root(config.wheelhouse, store, local=not on_cluster)
    if root != "off":
        detail = f"wheelhouse {root}: filled once per set of pins from here, replicas install "
        return CheckResult("packages", "ok", detail + "from it with no index")
    index: dict[str, Any] = pod_index_env(dict(os.environ)) if on_cluster else dict(os.environ)
    url = index.get("PIP_INDEX_URL") or "https://pypi.org/simple (pip's default)"
    extra = f" and {index['PIP_EXTRA_INDEX_URL']}" if index.get("PIP_EXTRA_INDEX_URL") else ""
    if not on_cluster:
        return CheckResult("packages", "ok", f"the package index {url}{extra}")
    return CheckResult(
        "packages",
        "ok",
        f"the package index {url}{extra}, from each replica: pods must reach it (else "
        "--wheelhouse s3://…)",
    )
