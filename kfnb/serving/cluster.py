"""Serving on a cluster: from ``%serve``'s arguments to the manifests a cluster receives.

A cluster reads models from the artifact store, never from the notebook's disk,
so the source must be a job whose storage is ``s3://…`` or an ``s3://`` URL.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from kfnb.artifact_sync import S3Config
from kfnb.config import settings
from kfnb.pod_options import PodOptions
from kfnb.serving.compat import (
    ServingRelease,
    image_tf_version,
    kernel_tf_version,
    serving_release,
)
from kfnb.serving.local import ServeError
from kfnb.serving.manifests import (
    ServingSpec,
    inference_service,
    secret_annotations,
    service_account,
    tf_serving,
)

__all__ = [
    "RUNTIMES",
    "annotate_command",
    "cluster_manifests",
    "release_for",
    "serving_notes",
    "serving_spec",
    "storage_uri",
]

RUNTIMES = ("kserve", "tfserving")
SHARED = ("s3://", "pvc://")  # stores a cluster's model servers read (KServe reads pvc://)


def storage_uri(source: str) -> str:
    """The ``s3://`` or ``pvc://`` URL of the numbered model versions that ``source`` names."""
    if source.startswith(SHARED):
        return source.rstrip("/")
    from kfnb.records import load_record

    record = load_record(source)
    if record is None:
        raise ServeError(
            f"a cluster serves jobs trained with s3:// storage or s3:// URLs; {source} is "
            "neither: give a job from `%kfnb list` or an s3://bucket/path of model versions"
        )
    if not record.storage.startswith(SHARED):
        raise ServeError(
            f"job {source} keeps its model on this machine ({record.storage}), which a cluster "
            "cannot read: train it with --storage s3://bucket/prefix"
        )
    return f"{record.storage.rstrip('/')}/{source}/model"


def release_for(source: str) -> ServingRelease:
    """The TF Serving release that loads what ``source`` exported: by the TensorFlow of the
    job's image, else (an s3:// URL, an image kfnb cannot read) this kernel's, which
    kfnb's default image for jobs matches."""
    record = None
    if not source.startswith(SHARED):
        from kfnb.records import load_record

        record = load_record(source)
    if record is not None and (version := image_tf_version(record.image)):
        return serving_release(version, f"job {source} ({record.image})")
    return serving_release(kernel_tf_version(), "the exporter, taken to be this kernel,")


def serving_spec(
    name: str,
    source: str,
    replicas: int = 1,
    gpus: int = 0,
    namespace: str | None = None,
    **pod: Any,
) -> ServingSpec:
    """What to serve and how, from ``%serve``'s arguments and the notebook's settings;
    ``pod`` holds the pods' options given (`kfnb.pod_options.POD_FIELDS`), over the
    settings as for a job's replicas."""
    config = settings()
    # The notebook's S3 settings, as the store reads them; the keys stay out.
    s3 = S3Config.from_env(os.environ, endpoint=config.s3_endpoint or None)
    return ServingSpec(
        name=name,
        storage_uri=storage_uri(source),
        namespace=namespace or config.namespace or "default",
        replicas=replicas,
        gpus=gpus,
        s3_secret=config.s3_secret,
        s3_endpoint=s3.endpoint,
        s3_use_https=s3.secure,
        s3_region=s3.region or "us-east-1",
        source=source,
        release=release_for(source),
        pod=PodOptions.from_settings(**pod),
    )


def serving_notes(spec: ServingSpec, runtime: str) -> list[str]:
    """One line each: the TF Serving release and why; what the S3 Secret needs for KServe."""
    notes = [f"TF Serving {spec.release.tag}: {spec.release.why}"]
    wanted = secret_annotations(spec)
    if runtime == "kserve" and wanted and spec.s3_secret:
        notes.append(
            f"KServe reads the S3 endpoint from Secret {spec.s3_secret}'s annotations: "
            + annotate_command(spec.s3_secret, spec.namespace, wanted)
        )
    return notes


def annotate_command(secret: str, namespace: str, annotations: dict[str, str]) -> str:
    """The ``kubectl annotate`` that gives a Secret what KServe reads from it."""
    pairs = " ".join(f"{key}={value}" for key, value in annotations.items())
    return f"kubectl -n {namespace} annotate secret {secret} --overwrite {pairs}"


def check_options(runtime: str, canary: str | None, percent: int | None) -> None:
    if runtime not in RUNTIMES:
        raise ServeError(f"--runtime {runtime}: use one of {', '.join(RUNTIMES)}")
    if (canary is None) != (percent is None):
        raise ServeError(
            "--canary JOB and --percent P go together, e.g. --canary job2 --percent 10"
        )
    if percent is not None and not 1 <= percent <= 99:
        raise ServeError(f"--percent {percent}: give the canary's share of requests, 1-99")
    if runtime == "tfserving" and canary is not None:
        raise ServeError("--canary needs --runtime kserve: KServe splits the traffic")


def cluster_manifests(
    name: str,
    source: str,
    runtime: str = "kserve",
    replicas: int = 1,
    gpus: int = 0,
    canary: str | None = None,
    percent: int | None = None,
    namespace: str | None = None,
    **pod: Any,
) -> list[dict[str, Any]]:
    """The objects to apply, in order. With ``canary``, the InferenceService comes twice:
    first as it serves ``source``, then updated to ``canary`` with ``percent`` of traffic,
    which is how KServe rolls out a canary (the previous revision keeps the rest).
    ``pod`` holds the pods' options (`serving_spec`)."""
    check_options(runtime, canary, percent)
    spec = serving_spec(name, source, replicas, gpus, namespace, **pod)
    if runtime == "tfserving":
        return tf_serving(spec)
    # The ServiceAccount only lists the Secret: without one KServe's default account does.
    objects = [service_account(spec)] if spec.s3_secret else []
    objects.append(inference_service(spec))
    if canary is not None:
        rollout = replace(
            spec, storage_uri=storage_uri(canary), canary_percent=percent,
            release=release_for(canary),
        )  # fmt: skip
        objects.append(inference_service(rollout))
    return objects
