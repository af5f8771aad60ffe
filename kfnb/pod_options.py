"""What a Kubeflow profile asks of every pod kfnb renders, and what a user adds to it.

- **Istio**: the profile controller labels profile namespaces ``istio-injection:
  enabled``; a TFJob replica with a sidecar stays Running after TensorFlow exits (the
  proxy keeps running, kubeflow/trainer#1778) and can start before the proxy is ready
  (kubeflow/kubeflow#3935). So replicas carry ``sidecar.istio.io/inject: "false"``, as a
  label and as an annotation: the annotation alone is reported not to work everywhere
  (kubeflow/manifests community-distribution#2798). Serving pods keep the mesh.
- **Pod Security**: Kubeflow 1.10+ profiles enforce ``baseline``, many clusters
  ``restricted``. Every pod meets ``restricted``: a numeric non-root user, no privilege
  escalation, all capabilities dropped, the runtime's default seccomp profile, only
  ``restricted``-allowed volume types, and an ``emptyDir`` for ``/tmp`` (``HOME``), where
  TensorFlow, Keras, pip and the runtime write.
- **Scheduling and credentials**: image pull secrets, node selectors (``--gpu-type`` is
  one on ``nvidia.com/gpu.product``), tolerations, labels (PodDefaults select pods by
  label: that is how a profile injects credentials and mirrors), annotations, a priority
  class, and ``Kfnb.pod_template`` merged last for what no flag covers.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kfnb.spec import SpecError

ISTIO_INJECT = "sidecar.istio.io/inject"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set by NVIDIA's GPU feature discovery
POD_USER = 1000  # any numeric non-root user: the stock images run as root by default
SCRATCH_VOLUME = "kfnb-tmp"
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# The options a caller gives per job or server (the rest come from settings only).
POD_FIELDS = (
    "image_pull_secrets",
    "node_selector",
    "tolerations",
    "labels",
    "annotations",
    "priority_class",
    "gpu_type",
)
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(
    rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_NAME}$"
)
_LABEL_VALUE = re.compile(rf"^({_NAME})?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def pod_security_context() -> dict[str, Any]:
    """The pod's part of Pod Security ``restricted``; ``fsGroup`` makes volumes writable."""
    return {
        "runAsNonRoot": True,
        "runAsUser": POD_USER,
        "runAsGroup": POD_USER,
        "fsGroup": POD_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Each container's part of Pod Security ``restricted``."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def restrict(pod: dict[str, Any], scratch: str = "/tmp") -> None:
    """Make the pod spec ``pod`` meet ``restricted``, with an emptyDir at ``scratch``."""
    pod["securityContext"] = {**pod_security_context(), **pod.get("securityContext", {})}
    volumes = pod.setdefault("volumes", [])
    if not any(v["name"] == SCRATCH_VOLUME for v in volumes):
        volumes.append({"name": SCRATCH_VOLUME, "emptyDir": {}})
    for container in pod.get("initContainers", []) + pod["containers"]:
        container["securityContext"] = {
            **container_security_context(),
            **container.get("securityContext", {}),
        }
        mounts = container.setdefault("volumeMounts", [])
        if not any(m["mountPath"] == scratch for m in mounts):
            mounts.append({"name": SCRATCH_VOLUME, "mountPath": scratch})
        env = container.setdefault("env", [])
        if not any(e["name"] == "HOME" for e in env):
            env.append({"name": "HOME", "value": scratch})  # root's HOME is not the user's


def key_value_pairs(
    field_name: str, items: Iterable[str] | Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    if isinstance(items, Mapping):
        return tuple((str(k), str(v)) for k, v in items.items())
    pairs = []
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise SpecError(f"{{{field_name}}} {item!r} is not KEY=VALUE", field_name)
        pairs.append((key, value))
    return tuple(pairs)


def parse_toleration(text: str) -> dict[str, Any]:
    """``KEY[=VALUE]:EFFECT`` (``nvidia.com/gpu:NoSchedule``) as a Kubernetes toleration."""
    head, sep, effect = text.rpartition(":")
    if not sep or effect not in TOLERATION_EFFECTS or not head:
        raise SpecError(
            f"{{tolerations}} {text!r} is not KEY[=VALUE]:EFFECT with EFFECT one of "
            f"{', '.join(TOLERATION_EFFECTS)} (e.g. nvidia.com/gpu:NoSchedule)",
            "tolerations",
        )
    key, has_value, value = head.partition("=")
    if not _LABEL_KEY.match(key) or (has_value and not _LABEL_VALUE.match(value)):
        raise SpecError(f"{{tolerations}} {text!r}: {key!r} is not a taint key", "tolerations")
    toleration: dict[str, Any] = {"key": key, "effect": effect}
    if has_value:
        toleration.update(operator="Equal", value=value)
    else:
        toleration["operator"] = "Exists"
    return toleration


@dataclass(frozen=True)
class PodOptions:
    """Per-pod settings from flags and ``%config Kfnb.*``; checked when made."""

    image_pull_secrets: tuple[str, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    priority_class: str = ""
    gpu_type: str = ""
    istio_sidecar: bool = False
    pod_template: str = ""  # JSON of Kfnb.pod_template, merged into every replica pod

    @classmethod
    def make(
        cls,
        *,
        image_pull_secrets: Iterable[str] = (),
        node_selector: Iterable[str] | Mapping[str, str] = (),
        tolerations: Iterable[str] = (),
        labels: Iterable[str] | Mapping[str, str] = (),
        annotations: Iterable[str] | Mapping[str, str] = (),
        priority_class: str = "",
        gpu_type: str = "",
        istio_sidecar: bool = False,
        pod_template: Mapping[str, Any] | str | None = None,
    ) -> PodOptions:
        """From flags (``KEY=VALUE`` strings) or settings (dicts), checked."""
        template = pod_template or {}
        if isinstance(template, str):
            template = _load_template(template)
        return cls(
            image_pull_secrets=tuple(image_pull_secrets),
            node_selector=key_value_pairs("node_selector", node_selector),
            tolerations=tuple(tolerations),
            labels=key_value_pairs("labels", labels),
            annotations=key_value_pairs("annotations", annotations),
            priority_class=priority_class,
            gpu_type=gpu_type,
            istio_sidecar=istio_sidecar,
            pod_template=json.dumps(dict(template), sort_keys=True) if template else "",
        )

    @classmethod
    def from_settings(cls, **given: Any) -> PodOptions:
        """The ``given`` arguments over the ``Kfnb`` settings: lists add up, a mapping's
        keys override the setting's, a name given replaces the setting."""
        from kfnb.config import settings

        unknown = sorted(set(given) - set(POD_FIELDS))
        if unknown:
            raise TypeError(f"unknown pod options: {', '.join(unknown)}")

        config = settings()
        options: dict[str, Any] = {}
        for key in ("image_pull_secrets", "tolerations"):
            options[key] = [*getattr(config, key), *(given.get(key) or ())]
        for key in ("node_selector", "labels", "annotations"):
            extra = dict(key_value_pairs(key, given.get(key) or ()))
            options[key] = {**getattr(config, key), **extra}
        for key in ("priority_class", "gpu_type"):
            options[key] = given.get(key) or getattr(config, key)
        return cls.make(
            **options, istio_sidecar=config.istio_sidecar, pod_template=config.pod_template
        )

    def __post_init__(self) -> None:
        for field_name, pairs in (("node_selector", self.node_selector), ("labels", self.labels)):
            for key, value in pairs:
                if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
                    raise SpecError(
                        f"{{{field_name}}} {key}={value} is not a Kubernetes label: keys are "
                        "[prefix/]name, values at most 63 letters, digits, '-', '_' or '.'",
                        field_name,
                    )
        for key, _ in self.annotations:
            if not _LABEL_KEY.match(key):
                raise SpecError(f"{{annotations}} {key!r} is not an annotation key", "annotations")
        for name in (*self.image_pull_secrets, self.priority_class):
            if name and not _DNS_SUBDOMAIN.match(name):
                field_name = (
                    "priority_class" if name == self.priority_class else "image_pull_secrets"
                )
                raise SpecError(f"{{{field_name}}} {name!r} is not a Kubernetes name", field_name)
        if self.gpu_type and not _LABEL_VALUE.match(self.gpu_type):
            raise SpecError(
                f"{{gpu_type}} {self.gpu_type!r} is not a label value: write it as the nodes' "
                f"{GPU_PRODUCT_LABEL} label has it (e.g. NVIDIA-A100-SXM4-80GB)",
                "gpu_type",
            )
        for text in self.tolerations:
            parse_toleration(text)

    def apply(self, template: dict[str, Any], *, replica: bool = True) -> dict[str, Any]:
        """``template`` (a pod template: metadata + spec) with these options and
        ``restricted`` security; ``replica`` pods also leave the Istio mesh."""
        template = copy.deepcopy(template)
        metadata = template.setdefault("metadata", {})
        pod = template["spec"]
        labels = metadata.setdefault("labels", {})
        annotations = dict(self.annotations)
        labels.update(dict(self.labels))
        if replica and not self.istio_sidecar:
            labels[ISTIO_INJECT] = annotations[ISTIO_INJECT] = "false"
        if annotations:
            metadata["annotations"] = {**metadata.get("annotations", {}), **annotations}
        selector = dict(self.node_selector)
        if self.gpu_type:
            selector[GPU_PRODUCT_LABEL] = self.gpu_type
        if selector:
            pod["nodeSelector"] = selector
        if self.tolerations:
            pod["tolerations"] = [parse_toleration(t) for t in self.tolerations]
        if self.image_pull_secrets:
            pod["imagePullSecrets"] = [{"name": n} for n in self.image_pull_secrets]
        if self.priority_class:
            pod["priorityClassName"] = self.priority_class
        restrict(pod)
        if self.pod_template:
            template = merge(template, json.loads(self.pod_template))
        return template

    def apply_to_predictor(self, predictor: dict[str, Any]) -> dict[str, Any]:
        """A KServe predictor with these options: the InferenceService inlines the pod's
        fields in ``predictor`` and the model container's in ``predictor.model``. KServe's
        own containers (storage initializer, queue proxy) are KServe's to secure."""
        predictor = copy.deepcopy(predictor)
        template = self.apply(
            {"metadata": {}, "spec": {"containers": [predictor["model"]]}}, replica=False
        )
        pod, metadata = template["spec"], template["metadata"]
        (predictor["model"],) = pod.pop("containers")
        pod.pop("volumes", None)  # /tmp's emptyDir: the runtime's container has its own
        predictor["model"].pop("volumeMounts", None)
        predictor["model"]["env"] = [e for e in predictor["model"]["env"] if e["name"] != "HOME"]
        if not predictor["model"]["env"]:
            del predictor["model"]["env"]
        predictor.update(pod)
        for key in ("labels", "annotations"):
            if metadata.get(key):
                predictor[key] = metadata[key]
        return predictor


def _load_template(text: str) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(
            f"{{pod_template}} is not YAML: {str(err).splitlines()[0]}", "pod_template"
        ) from err
    if not isinstance(loaded, dict):
        raise SpecError(
            "{pod_template} must be a pod template: a mapping with spec", "pod_template"
        )
    return loaded


def merge(base: Any, extra: Any) -> Any:
    """``extra`` merged into ``base``: mappings key by key, lists of named items (containers,
    volumes, env) item by item by name, other lists appended, scalars replaced."""
    if isinstance(base, dict) and isinstance(extra, dict):
        merged = dict(base)
        for key, value in extra.items():
            merged[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(extra, list):
        named = all(isinstance(i, dict) and "name" in i for i in base + extra)
        if not named:
            return base + copy.deepcopy(extra)
        merged_list = list(base)
        for item in extra:
            at = next((i for i, b in enumerate(merged_list) if b["name"] == item["name"]), None)
            if at is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[at] = merge(merged_list[at], item)
        return merged_list
    return copy.deepcopy(extra)
