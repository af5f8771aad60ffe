"""`JobSpec`: what a ``%%tfjob`` cell asks for, and the TFJob manifest it renders.

The manifest (a ``kubeflow.org/v1`` TFJob as a plain dict) is the single
description of a job: the Kubernetes backend submits it, and the local backend
runs its replicas as processes, so both run exactly the same thing.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kfnb._util import bundle_path_problem
from kfnb.secret_env import SECRET_HOW_TO, secret_reason

if TYPE_CHECKING:
    from kfnb.pod_options import PodOptions

API_VERSION = "kubeflow.org/v1"
KIND = "TFJob"
CONTAINER_NAME = "tensorflow"  # the Training Operator sets TF_CONFIG on this container only
PORT_NAME = "tfjob-port"
DEFAULT_PORT = 2222
CODE_DIR = "/opt/kfnb/code"  # where the bundle is mounted in every replica
PACKAGES_DIR = "/opt/kfnb/packages"  # what the image lacks, installed by the init container
PACKAGES_CONTAINER = "kfnb-packages"
# The init container installs as a user, never root: pip needs no privileges to write
# into the emptyDir (mode 0777), and a root pip in a pod is what Pod Security forbids.
INSTALL_USER = 1000
RESTART_POLICIES = ("Never", "OnFailure", "Always", "ExitCode")
# Manifest keys of the replica types, in the order the operator reconciles them.
REPLICA_TYPES = ("Chief", "PS", "Worker", "Evaluator")
MANAGED_BY = {"app.kubernetes.io/managed-by": "kfnb"}

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SpecError(ValueError):
    """A job specification a user can fix; the message is one line that says how.

    The message names `JobSpec` fields as ``{field}`` placeholders: ``str(err)`` speaks
    of the fields (``workers``), `worded` lets the magics speak of their flags (``--workers``).
    """

    def __init__(self, template: str, *fields: str) -> None:
        self.template = template
        self.fields = fields
        super().__init__(self.worded(str))

    def worded(self, name: Callable[[str], str]) -> str:
        """The message with each field called ``name(field)``."""
        text = self.template
        for field_name in self.fields:  # replace, not format: values may hold braces
            text = text.replace("{" + field_name + "}", name(field_name))
        return text


def validate_name(name: str, called: str = "{name}") -> str:
    """Check a job's or a model server's name: a DNS-1035 label that leaves room for the
    names made from it (a job's replicas'). Every name a user gives goes through here
    before kfnb builds a path, a record or a request from it, so no name is a path.

    ``called`` is how the message refers to the name: ``{name}`` (the field, or the
    magics' ``--name``), or words such as "job name" where it was given otherwise.
    """
    if not isinstance(name, str) or not _DNS_1035.match(name):
        raise SpecError(
            f"{called} {name!r} is not a DNS-1035 label: use lower-case letters, digits "
            "and '-', starting with a letter and ending with a letter or digit",
            "name",
        )
    longest = f"{name}-evaluator-0"
    if len(longest) > 63:
        raise SpecError(
            f"{called} {name!r} is too long: replica names like {longest!r} must fit in "
            f"63 characters, so use at most {63 - len('-evaluator-0')}",
            "name",
        )
    return name


def generate_name(prefix: str = "tfjob") -> str:
    """A fresh name, so re-running a cell never collides with the last run."""
    return f"{prefix}-{secrets.token_hex(3)}"


def replica_name(job: str, replica_type: str, index: int) -> str:
    """The pod and service name the operator gives a replica (``mnist-worker-0``)."""
    return f"{job}-{replica_type.lower()}-{index}"


def configmap_key(index: int, path: str) -> str:
    """A ConfigMap key for a bundle file: keys allow no '/', so the mount maps them back.

    The key is legal by construction (``[-._a-zA-Z0-9]``, at most 253, starting with
    ``f``); the path, which the volume's item mounts it at, is checked as Kubernetes
    would, so a bad one fails while rendering, before anything is created.
    """
    problem = bundle_path_problem(path)
    if problem:
        raise SpecError(f"{{code_files}}: bundle path {path!r} {problem}", "code_files")
    tail = re.sub(r"[^-._a-zA-Z0-9]", "_", path.rsplit("/", 1)[-1])
    return f"f{index:03d}-{tail}"[:253]


def _check_quantity(field_name: str, value: str | None) -> None:
    if value is not None and not _QUANTITY.match(value):
        raise SpecError(
            f"{{{field_name}}} {value!r} is not a Kubernetes quantity: write e.g. 2, 500m, 4Gi",
            field_name,
        )


@dataclass(frozen=True)
class JobSpec:
    """A TFJob as a notebook user describes it.

    ``gpus``, ``cpu`` and ``memory`` are per replica; GPUs go to the replicas that
    train (chief and workers), not to parameter servers or the evaluator.
    """

    name: str
    workers: int = 1
    ps: int = 0
    chief: int = 0
    evaluator: int = 0
    gpus: int = 0
    cpu: str | None = None
    memory: str | None = None
    image: str = "tensorflow/tensorflow:latest"
    env: tuple[tuple[str, str], ...] = ()
    restart_policy: str = "Never"
    backoff_limit: int | None = None
    timeout: int | None = None  # runPolicy.activeDeadlineSeconds
    ttl_seconds: int | None = None  # runPolicy.ttlSecondsAfterFinished
    namespace: str | None = None
    legacy_keras: bool = True
    artifacts: str = ""  # where replicas write logs, events and models
    code_files: tuple[str, ...] = ()  # bundle paths, mounted from the ConfigMap
    # KFNB_STORE and the S3 endpoint settings of an s3:// store, never keys
    # (`kfnb.storage.replica_env`); keys reach pods through a Secret reference.
    storage_env: tuple[tuple[str, str], ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    # An init container installs what the image lacks (`kfnb.packages`), with these
    # PIP_* settings (an index or mirror; never credentials) when there is no wheelhouse.
    packages: bool = False
    packages_env: tuple[tuple[str, str], ...] = ()
    # The init container installs TensorFlow's CUDA wheels (nvidia-*): their libraries'
    # directories, under PACKAGES_DIR, go on the training replicas' LD_LIBRARY_PATH.
    cuda_libraries: tuple[str, ...] = ()
    # Istio, Pod Security, scheduling and pull secrets for every replica pod (None: defaults).
    pod: PodOptions | None = None

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.workers < 0 or self.ps < 0 or self.gpus < 0:
            raise SpecError("{workers}, {ps} and {gpus} take numbers >= 0", "workers", "ps", "gpus")
        if self.chief not in (0, 1) or self.evaluator not in (0, 1):
            raise SpecError(
                "a TFJob has at most one chief and one evaluator: set {chief} and {evaluator} "
                "to 0 or 1",
                "chief",
                "evaluator",
            )
        if self.workers + self.chief == 0:
            raise SpecError(
                "a job needs at least one worker or a chief: set {workers} to 1 or more", "workers"
            )
        if self.ps and not self.workers:
            raise SpecError("parameter servers need workers: set {workers} to 1 or more", "workers")
        if self.restart_policy not in RESTART_POLICIES:
            choices = ", ".join(RESTART_POLICIES)
            raise SpecError(
                f"{{restart_policy}} {self.restart_policy!r} is not one of {choices}",
                "restart_policy",
            )
        for field_name, least in (("backoff_limit", 0), ("timeout", 1)):
            number = getattr(self, field_name)
            if number is not None and number < least:
                raise SpecError(
                    f"{{{field_name}}} takes a positive number, not {number}", field_name
                )
        _check_quantity("cpu", self.cpu)
        _check_quantity("memory", self.memory)
        for key, value in self.env:
            if not _ENV_NAME.match(key):
                raise SpecError(
                    f"{{env}} {key!r} is not a valid variable name: write KEY=VALUE", "env"
                )
            why = secret_reason(key, value)
            if why is not None:
                raise SpecError(
                    f"{{env}} {key} looks like a secret ({why}), and {{env}} values are "
                    f"written into the job's manifest: {SECRET_HOW_TO}",
                    "env",
                )

    @property
    def replica_counts(self) -> dict[str, int]:
        """Replicas per manifest type, only the types the job has."""
        counts = {
            "Chief": self.chief,
            "PS": self.ps,
            "Worker": self.workers,
            "Evaluator": self.evaluator,
        }
        return {kind: n for kind, n in counts.items() if n}

    @property
    def distributed(self) -> bool:
        """The operator's rule: TF_CONFIG is set unless the job has exactly one replica."""
        return sum(self.replica_counts.values()) != 1

    def container_env(self) -> list[dict[str, str]]:
        env = {
            "KFNB_JOB_NAME": self.name,
            "KFNB_CODE_DIR": CODE_DIR,
            "KFNB_ARTIFACTS": self.artifacts,
            "PYTHONUNBUFFERED": "1",  # log lines reach the log as they are printed
        }
        if self.distributed and self.legacy_keras:
            env["TF_USE_LEGACY_KERAS"] = "1"
        env.update(dict(self.storage_env))
        if self.packages:
            env["PYTHONPATH"] = PACKAGES_DIR
        env.update(dict(self.env))
        if self.packages and "PYTHONPATH" in dict(self.env):
            env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{PACKAGES_DIR}"
        return [{"name": k, "value": v} for k, v in env.items()]

    def _library_path(self) -> str:
        """TensorFlow finds the nvidia-* wheels' libraries by RPATH only beside itself; from
        the packages directory they need LD_LIBRARY_PATH, which replaces the image's own, so
        the driver directories the NVIDIA base images list come after them."""
        wheels = [f"{PACKAGES_DIR}/nvidia/{name}/lib" for name in self.cuda_libraries]
        return ":".join([*wheels, "/usr/local/nvidia/lib", "/usr/local/nvidia/lib64"])

    def _packages_container(self) -> dict[str, Any]:
        """Installs the bundle's packages.json into the shared emptyDir, from the same image."""
        env = {
            "KFNB_CODE_DIR": CODE_DIR,
            "HOME": "/tmp",  # pip writes there; the image's HOME is root's
            **dict(self.storage_env),  # an s3:// wheelhouse is read like the store
            **dict(self.packages_env),
        }
        return {
            "name": PACKAGES_CONTAINER,
            "image": self.image,
            "command": ["python", f"{CODE_DIR}/install_packages.py", PACKAGES_DIR],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "volumeMounts": [
                {"name": "kfnb-code", "mountPath": CODE_DIR, "readOnly": True},
                {"name": PACKAGES_CONTAINER, "mountPath": PACKAGES_DIR},
            ],
            # Its last lines become the pod's termination message: the job says why.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {
                "runAsUser": INSTALL_USER,
                "runAsGroup": INSTALL_USER,
                "runAsNonRoot": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }

    def _resources(self, replica_type: str) -> dict[str, Any]:
        limits: dict[str, Any] = {}
        requests: dict[str, Any] = {}
        if self.cpu:
            requests["cpu"] = limits["cpu"] = self.cpu
        if self.memory:
            requests["memory"] = limits["memory"] = self.memory
        if self.gpus and replica_type in ("Chief", "Worker"):
            limits["nvidia.com/gpu"] = self.gpus
        resources: dict[str, Any] = {}
        if limits:
            resources["limits"] = limits
        if requests:
            resources["requests"] = requests
        return resources

    def _pod_template(self, replica_type: str) -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": CONTAINER_NAME,
            "image": self.image,
            "command": ["python", f"{CODE_DIR}/runtime.py"],
            "env": self.container_env(),
            "ports": [{"name": PORT_NAME, "containerPort": DEFAULT_PORT}],
            "volumeMounts": [{"name": "kfnb-code", "mountPath": CODE_DIR, "readOnly": True}],
        }
        resources = self._resources(replica_type)
        if resources:
            container["resources"] = resources
        if "nvidia.com/gpu" in resources.get("limits", {}):
            # The Downward API cannot expose extended resources: the runtime learns its
            # GPU request here and says so when TensorFlow sees no GPU.
            container["env"].append({"name": "KFNB_GPUS", "value": str(self.gpus)})
            if self.cuda_libraries:
                container["env"].append({"name": "LD_LIBRARY_PATH", "value": self._library_path()})
        volume: dict[str, Any] = {"name": f"{self.name}-code"}
        if self.code_files:
            volume["items"] = [
                {"key": configmap_key(i, path), "path": path}
                for i, path in enumerate(self.code_files)
            ]
        pod: dict[str, Any] = {
            "containers": [container],
            "volumes": [{"name": "kfnb-code", "configMap": volume}],
        }
        if self.packages:
            container["volumeMounts"].append(
                {"name": PACKAGES_CONTAINER, "mountPath": PACKAGES_DIR, "readOnly": True}
            )
            pod["initContainers"] = [self._packages_container()]
            pod["volumes"].append({"name": PACKAGES_CONTAINER, "emptyDir": {}})
        from kfnb.pod_options import PodOptions

        template = {"metadata": {"labels": {**MANAGED_BY, "kfnb/job": self.name}}, "spec": pod}
        # Replicas never call the API server: no token in their pods.
        pod["automountServiceAccountToken"] = False
        return (self.pod or PodOptions()).apply(template)

    def to_manifest(self) -> dict[str, Any]:
        """The TFJob, as the Training Operator 1.9 reads it."""
        replica_specs = {
            kind: {
                "replicas": count,
                "restartPolicy": self.restart_policy,
                "template": self._pod_template(kind),
            }
            for kind, count in self.replica_counts.items()
        }
        # Running, not the operator's default None: parameter servers never exit
        # on their own, so without it they would outlive a finished job.
        run_policy: dict[str, Any] = {"cleanPodPolicy": "Running"}
        if self.backoff_limit is not None:
            run_policy["backoffLimit"] = self.backoff_limit
        if self.timeout is not None:
            run_policy["activeDeadlineSeconds"] = self.timeout
        if self.ttl_seconds is not None:
            run_policy["ttlSecondsAfterFinished"] = self.ttl_seconds
        metadata: dict[str, Any] = {"name": self.name, "labels": {**MANAGED_BY, **self.labels}}
        if self.namespace:
            metadata["namespace"] = self.namespace
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": metadata,
            "spec": {"runPolicy": run_policy, "tfReplicaSpecs": replica_specs},
        }


def to_yaml(manifest: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False))
