"""Settings, as traitlets so that ``%config Kfnb.storage = ...`` works in a notebook.

Every setting also reads a ``KFNB_*`` environment variable, so a JupyterHub admin
can set defaults for all users in the spawner without touching notebooks.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from traitlets import Bool, CaselessStrEnum, Dict, List, Unicode, Union, default, observe
from traitlets.config import Configurable

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "kfnb"


class Kfnb(Configurable):
    """kfnb's settings. Change them with ``%config Kfnb.<name> = value``."""

    home = Unicode(help="Where kfnb keeps job records (KFNB_HOME).").tag(config=True)
    storage = Unicode(
        help="Where jobs write code, logs, TensorBoard events and models (KFNB_STORAGE)."
    ).tag(config=True)
    backend = Unicode(help="auto, local or kubernetes (KFNB_BACKEND).").tag(config=True)
    namespace = Unicode("", help="Kubernetes namespace (KFNB_NAMESPACE).").tag(config=True)
    python = Unicode(
        help="Python interpreter the local backend runs replicas with (KFNB_PYTHON)."
    ).tag(config=True)
    image = Unicode(
        "", help="Container image for Kubernetes replicas; empty picks the TensorFlow image."
    ).tag(config=True)
    s3_endpoint = Unicode(
        help="host:port of the S3/MinIO server for s3:// storage (S3_ENDPOINT; empty: AWS)."
    ).tag(config=True)
    s3_secret = Unicode(
        "",
        help="Kubernetes Secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, which "
        "pods get by reference (KFNB_S3_SECRET); keys never enter a manifest.",
    ).tag(config=True)
    pvc_mounts = Dict(
        help="Where this notebook has each PersistentVolumeClaim mounted, {claim: path}, for "
        "pvc://CLAIM/PATH storage (KFNB_PVC_MOUNTS, JSON). In a notebook pod, found from the "
        "pod's own spec when the API allows; set it where it does not.",
    ).tag(config=True)
    legacy_keras = Bool(
        True,
        help="Set TF_USE_LEGACY_KERAS=1 in multi-worker jobs: Keras 3 cannot fit under "
        "MultiWorkerMirroredStrategy (keras-team/keras#20585), tf-keras can.",
    ).tag(config=True)
    istio_sidecar = Bool(
        False,
        help="Let Istio inject its sidecar into TFJob replicas. Off: replicas are labelled and "
        "annotated sidecar.istio.io/inject=false, since a sidecar keeps a finished replica "
        "Running and can start after TensorFlow (kubeflow/trainer#1778).",
    ).tag(config=True)
    allowed_hosts = List(
        Unicode(),
        help="Host names local model servers answer besides localhost and IP addresses, "
        "e.g. a Service or gateway name (%serve --allowed-host; .DOMAIN for the names under "
        "it; KFNB_ALLOWED_HOSTS, comma-separated, is read by the servers themselves).",
    ).tag(config=True)
    image_pull_secrets = List(
        Unicode(), help="Secrets for pulling images (--image-pull-secret)."
    ).tag(config=True)
    node_selector = Dict(help="Node labels every replica pod needs (--node-selector).").tag(
        config=True
    )
    tolerations = List(Unicode(), help="KEY[=VALUE]:EFFECT taints replicas tolerate.").tag(
        config=True
    )
    labels = Dict(help="Labels of every replica pod: PodDefaults select by them (--label).").tag(
        config=True
    )
    annotations = Dict(help="Annotations of every replica pod (--annotation).").tag(config=True)
    priority_class = Unicode("", help="PriorityClass of replica pods (--priority-class).").tag(
        config=True
    )
    gpu_type = Unicode(
        "", help="nvidia.com/gpu.product nodes must have for GPU jobs (--gpu-type)."
    ).tag(config=True)
    pod_template = Union(
        [Dict(), Unicode()],
        default_value={},
        help="A pod template (dict or YAML) merged into every replica pod, for what no flag "
        "covers; named lists (containers, volumes, env) merge by name.",
    ).tag(config=True)
    install_packages = Bool(
        True,
        help="Install in each replica what its image lacks of what the job needs (tf-keras, "
        "tensorboard, the notebook's packages), with an init container (KFNB_INSTALL_PACKAGES).",
    ).tag(config=True)
    wheelhouse = Unicode(
        help="Where replicas take the wheels they install: 'auto' (a wheelhouse in the job's "
        "store that the notebook fills once per set of pins, where the replicas can read the "
        "store), 'off' (the package index, in each replica), or a directory or s3:// URL "
        "(KFNB_WHEELHOUSE)."
    ).tag(config=True)

    log_level = CaselessStrEnum(
        LOG_LEVELS,
        help="How much kfnb's logger ``kfnb`` says on stderr: DEBUG shows what the backends, "
        "stores and servers do (submits, status changes, processes, S3 calls); never keys or "
        "tokens (KFNB_LOG_LEVEL).",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.log_level != "WARNING":  # asked for (KFNB_LOG_LEVEL, a config file)
            configure_logging(self.log_level)

    @default("log_level")
    def _log_level_default(self) -> str:
        level = os.environ.get("KFNB_LOG_LEVEL", "").strip().upper()
        return level if level in LOG_LEVELS else "WARNING"

    @observe("log_level")
    def _log_level_changed(self, change: Any) -> None:
        configure_logging(change["new"])

    @default("home")
    def _home_default(self) -> str:
        return os.environ.get("KFNB_HOME") or str(_data_home())

    @default("storage")
    def _storage_default(self) -> str:
        return os.environ.get("KFNB_STORAGE") or str(Path(self.home) / "jobs")

    @default("backend")
    def _backend_default(self) -> str:
        return os.environ.get("KFNB_BACKEND") or "auto"

    @default("s3_endpoint")
    def _s3_endpoint_default(self) -> str:
        return os.environ.get("S3_ENDPOINT", "")

    @default("s3_secret")
    def _s3_secret_default(self) -> str:
        return os.environ.get("KFNB_S3_SECRET", "")

    @default("pvc_mounts")
    def _pvc_mounts_default(self) -> dict[str, str]:
        return _json_mapping("KFNB_PVC_MOUNTS")

    @default("wheelhouse")
    def _wheelhouse_default(self) -> str:
        return os.environ.get("KFNB_WHEELHOUSE") or "auto"

    @default("install_packages")
    def _install_packages_default(self) -> bool:
        return os.environ.get("KFNB_INSTALL_PACKAGES", "1").strip().lower() not in ("0", "false")

    @default("python")
    def _python_default(self) -> str:
        return os.environ.get("KFNB_PYTHON") or sys.executable


def _json_mapping(variable: str) -> dict[str, str]:
    """A ``{"name": "value"}`` JSON object from the environment ({} when unset); a value
    that is not one is refused with the variable's name, not ignored."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return {}
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
        example = '{"claim": "/home/jovyan/data"}'
        raise ValueError(f"{variable} must be a JSON object of paths, such as {example}")
    return {str(k): v for k, v in found.items()}


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a line is logged (the kernel's, pytest's)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def configure_logging(level: str) -> logging.Logger:
    """Set the ``kfnb`` logger's level, with one handler to stderr (added once).

    kfnb's modules log to children of ``kfnb`` (``kfnb.backends.local``,
    ``kfnb.storage``, ``kfnb.serving.local``...); nothing is shown below WARNING
    unless this is called, by ``%config Kfnb.log_level = "DEBUG"`` or KFNB_LOG_LEVEL.
    """
    logger = logging.getLogger("kfnb")
    logger.setLevel(level.upper())
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    return logger


_settings: Kfnb | None = None


def settings(**kwargs: Any) -> Kfnb:
    """The one settings object of this process (created with ``kwargs`` the first time)."""
    global _settings
    if _settings is None:
        _settings = Kfnb(**kwargs)
    return _settings


def use_settings(config: Kfnb) -> None:
    """Make ``config`` (the one ``%config`` changes) the settings object."""
    global _settings
    _settings = config


def reset_settings() -> None:
    """Forget the settings object (tests, and a fresh ``%load_ext``)."""
    global _settings
    _settings = None
