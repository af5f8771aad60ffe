"""Serving manifests for a cluster: a KServe ``InferenceService``, or TF Serving itself.

``ServingSpec`` says what to serve (a model in the artifact store, by URL) and
how; ``inference_service`` renders KServe's serving.kserve.io/v1beta1 object
(``modelFormat: tensorflow`` with ``runtimeVersion``, or ``modelFormat: sklearn`` for a
``model.joblib``; ``storageUri``, a ServiceAccount that lists the S3 Secret,
``canaryTrafficPercent``), ``inference_graph`` KServe's serving.kserve.io/v1alpha1
``InferenceGraph`` whose ``Splitter`` root shares requests between InferenceServices
by weight, and ``tf_serving`` a Deployment
and Service running TF Serving, whose model an init container copies from S3 first
(TF Serving no longer reads ``s3://``). Both run the TF Serving release
`kfnb.serving.compat.serving_release` picks for the job's TensorFlow. Keys never
appear here: pods get them from the Secret by reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kfnb.pod_options import PodOptions
from kfnb.serving.compat import ServingRelease, serving_release

__all__ = [
    "ServingSpec",
    "inference_graph",
    "inference_service",
    "secret_annotations",
    "service_account",
    "tf_serving",
]

MC_IMAGE = "minio/mc:RELEASE.2024-11-21T17-21-54Z"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kfnb"}


@dataclass(frozen=True)
class ServingSpec:
    """A model to serve on a cluster. ``storage_uri`` holds numbered versions (``<job>/model``)."""

    name: str
    storage_uri: str
    namespace: str = "default"
    replicas: int = 1
    gpus: int = 0
    s3_secret: str = ""  # a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
    s3_endpoint: str = ""  # host:port; "" for AWS
    s3_use_https: bool = True
    s3_region: str = "us-east-1"
    canary_percent: int | None = None  # the new storage_uri gets this share; KServe only
    source: str = ""  # the job (or path) it came from, kept as an annotation
    # `kfnb.serving.model_kind`: "tensorflow" (storage_uri holds numbered versions) or
    # "sklearn" (storage_uri is the version directory holding model.joblib).
    kind: str = "tensorflow"
    kind_note: str = ""  # why the kind was assumed, when the store could not be read
    cpu: str = "1"
    memory: str = "2Gi"
    release: ServingRelease = serving_release(None)  # the TF Serving that loads the model
    # Pod Security restricted, pull secrets, scheduling, labels: `kfnb.pod_options`.
    pod: PodOptions = PodOptions()

    @property
    def service_account(self) -> str:
        return f"{self.name}-kfnb-s3"

    def _metadata(self, name: str) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "labels": {**MANAGED_BY, "kfnb.io/model": self.name},
        }
        if self.source:
            metadata["annotations"] = {"kfnb.io/source": self.source}
        return metadata

    def _resources(self) -> dict[str, Any]:
        limits: dict[str, Any] = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            limits["nvidia.com/gpu"] = self.gpus
        return {"requests": {"cpu": self.cpu, "memory": self.memory}, "limits": limits}


def secret_annotations(spec: ServingSpec) -> dict[str, str]:
    """The annotations KServe's storage initializer needs on the S3 **Secret** ({} for AWS).

    KServe reads ``serving.kserve.io/s3-*`` from the annotations of each Secret the
    ServiceAccount lists (kserve ``pkg/credentials/service_account_credentials.go``,
    ``s3.BuildSecretEnvs``), not from the ServiceAccount's own, and without an
    endpoint it goes to AWS. The Secret holds the keys and belongs to its user, so kfnb
    neither renders nor rewrites it: `ClusterServing.check_secret` compares these with
    the Secret's and names the ``kubectl annotate`` that adds them.
    """
    if not spec.s3_endpoint or spec.s3_endpoint.endswith("amazonaws.com"):
        return {}  # AWS: KServe's default, its region the storage initializer finds
    return {
        "serving.kserve.io/s3-endpoint": spec.s3_endpoint,
        "serving.kserve.io/s3-usehttps": "1" if spec.s3_use_https else "0",
        "serving.kserve.io/s3-region": spec.s3_region,
    }


def service_account(spec: ServingSpec) -> dict[str, Any]:
    """The ServiceAccount KServe's storage initializer runs as: it lists the S3 Secret.

    It carries no S3 annotations: KServe reads them from the Secret (`secret_annotations`),
    from a ServiceAccount only beside an IRSA role (``eks.amazonaws.com/role-arn``).
    """
    account: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": spec._metadata(spec.service_account),
    }
    if spec.s3_secret:
        account["secrets"] = [{"name": spec.s3_secret}]
    return account


def inference_service(spec: ServingSpec) -> dict[str, Any]:
    """KServe's InferenceService: the TensorFlow runtime (TF Serving inside KServe) for a
    SavedModel, KServe's sklearn runtime (its ``kserve-sklearnserver``) for a joblib file."""
    model: dict[str, Any] = {"modelFormat": {"name": spec.kind}}
    if spec.kind == "tensorflow":
        # Always set: without it the kserve-tensorflow-serving runtime runs its default
        # tensorflow/serving:2.6.2, which cannot load recent SavedModels. The runtime
        # takes it as the image tag, "-gpu" suffix for the GPU build.
        model["runtimeVersion"] = spec.release.runtime_version(spec.gpus)
    # sklearn: the runtime's default image, whose scikit-learn unpickles the file
    # (`kfnb.serving.cluster.serving_notes` names the kernel's version to compare).
    model.update(storageUri=spec.storage_uri, resources=spec._resources())
    predictor: dict[str, Any] = {
        "minReplicas": spec.replicas,
        "maxReplicas": spec.replicas,
        "model": model,
    }
    if spec.storage_uri.startswith("s3://"):
        predictor["serviceAccountName"] = spec.service_account
    if spec.canary_percent is not None:
        predictor["canaryTrafficPercent"] = spec.canary_percent
    predictor = spec.pod.apply_to_predictor(predictor)
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": spec._metadata(spec.name),
        "spec": {"predictor": predictor},
    }


def inference_graph(
    name: str, namespace: str, weights: dict[str, int], pod: PodOptions | None = None
) -> dict[str, Any]:
    """KServe's InferenceGraph ``name``: a ``Splitter`` root that sends each request to one of
    the InferenceServices ``weights`` names, with that share (percent, summing to 100).

    Its router pod takes the node selector, tolerations and labels of ``pod`` (the fields an
    InferenceGraph has; its security context and image are KServe's to set)."""
    from kfnb.pod_options import parse_toleration

    pod = pod or PodOptions()
    steps = [{"serviceName": service, "weight": weight} for service, weight in weights.items()]
    spec: dict[str, Any] = {"nodes": {"root": {"routerType": "Splitter", "steps": steps}}}
    if pod.node_selector:
        spec["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        spec["tolerations"] = [parse_toleration(t) for t in pod.tolerations]
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**dict(pod.labels), **MANAGED_BY, "kfnb.io/model": name},
        },
        "spec": spec,
    }


def tf_serving(spec: ServingSpec) -> list[dict[str, Any]]:
    """A TF Serving Deployment (REST 8501, gRPC 8500) and its Service.

    An init container mirrors ``storage_uri`` into an emptyDir with MinIO's ``mc``, run
    without a shell (each value one argument, nothing to quote). Its alias comes from
    ``MC_HOST_store``, which the kubelet fills from the Secret's two keys (``$(VAR)``
    expands variables defined before it): the keys are in the container's environment
    only, never on a command line, and the manifest holds only their names. (mc takes
    the secret key up to the host's ``@``; a secret key with ``:`` would be read as
    key and session token, which AWS and MinIO keys do not contain.)
    """
    if spec.canary_percent is not None:
        raise ValueError("a canary needs KServe (--runtime kserve): TF Serving splits no traffic")
    if spec.kind != "tensorflow":
        raise ValueError(f"{spec.storage_uri} is a {spec.kind} model: serve it with KServe "
                         "(--runtime kserve), TF Serving loads only SavedModels")  # fmt: skip
    labels = {**MANAGED_BY, "kfnb.io/model": spec.name, "app": f"{spec.name}-tf-serving"}
    bucket_path = spec.storage_uri.removeprefix("s3://")
    scheme = "https" if spec.s3_use_https else "http"
    endpoint = spec.s3_endpoint or f"s3.{spec.s3_region}.amazonaws.com"
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    key_env = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": spec.s3_secret, "key": key}}}
        for key in (keys if spec.s3_secret else ())
    ]
    credentials = "$(AWS_ACCESS_KEY_ID):$(AWS_SECRET_ACCESS_KEY)@" if spec.s3_secret else ""
    alias = {"name": "MC_HOST_store", "value": f"{scheme}://{credentials}{endpoint}"}
    copy = ["mc", "mirror", "--quiet", f"store/{bucket_path}", f"/models/{spec.name}"]
    image = spec.release.image(spec.gpus)
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**spec._metadata(f"{spec.name}-tf-serving"), "labels": labels},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": {"app": labels["app"]}},
            "template": spec.pod.apply(
                {
                    "metadata": {"labels": labels},
                    "spec": {
                        "initContainers": [
                            {
                                "name": "copy-model",
                                "image": MC_IMAGE,
                                "command": copy,
                                "env": [
                                    {"name": "MC_CONFIG_DIR", "value": "/tmp/mc"},
                                    *key_env,
                                    alias,  # after the keys it refers to
                                ],
                                "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                                # A failed copy's last log lines become its termination
                                # message, which kfnb reports (`ClusterServing.wait`).
                                "terminationMessagePolicy": "FallbackToLogsOnError",
                            }
                        ],
                        "containers": [
                            {
                                "name": "tf-serving",
                                "image": image,
                                "args": [
                                    "--port=8500",
                                    "--rest_api_port=8501",
                                    f"--model_name={spec.name}",
                                    f"--model_base_path=/models/{spec.name}",
                                ],
                                "ports": [
                                    {"name": "grpc", "containerPort": 8500},
                                    {"name": "http", "containerPort": 8501},
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": f"/v1/models/{spec.name}", "port": 8501},
                                    "periodSeconds": 5,
                                },
                                "resources": spec._resources(),
                                "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                            }
                        ],
                        "volumes": [{"name": "models", "emptyDir": {}}],
                    },
                },
                replica=False,  # serving pods keep the Istio sidecar KServe expects
            ),
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {**spec._metadata(f"{spec.name}-tf-serving"), "labels": labels},
        "spec": {
            "selector": {"app": labels["app"]},
            "ports": [
                {"name": "grpc", "port": 8500, "targetPort": 8500},
                {"name": "http", "port": 8501, "targetPort": 8501},
            ],
        },
    }
    if spec.storage_uri.startswith("pvc://"):
        _serve_from_claim(deployment, spec)
    return [deployment, service]


def _serve_from_claim(deployment: Any, spec: ServingSpec) -> None:
    """TF Serving reads the model straight from a pvc:// store's claim, mounted read-only
    where replicas mount it: no copy, and no S3 keys."""
    from kfnb.backends.kube_manifests import mount_claim
    from kfnb.storage import parse_pvc

    pvc = parse_pvc(spec.storage_uri)
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    pod.pop("initContainers", None)
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "models"]
    server = pod["containers"][0]
    server["volumeMounts"] = [m for m in server["volumeMounts"] if m["name"] != "models"]
    server["args"] = [a for a in server["args"] if not a.startswith("--model_base_path=")]
    server["args"].append(f"--model_base_path={pvc.pod_path()}")
    mount_claim(pod, pvc.claim, read_only=True)
