"""Serving on a cluster: from ``%serve``'s arguments to the manifests a cluster receives.

A cluster reads models from the artifact store, never from the notebook's disk,
so the source must be a job whose storage is ``s3://…`` or an ``s3://`` URL.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from kfnb._util import first_line
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
    inference_graph,
    inference_service,
    secret_annotations,
    service_account,
    tf_serving,
)

__all__ = [
    "RUNTIMES",
    "annotate_command",
    "cluster_manifests",
    "parse_split",
    "parse_variants",
    "release_for",
    "stored_model",
    "variant_manifests",
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


def stored_model(uri: str) -> tuple[str, str, str]:
    """``(kind, storage URI, note)`` of the model at ``uri`` (`kfnb.serving.model_kind`):
    KServe's TensorFlow runtime reads the numbered versions, its sklearn runtime the
    newest version's directory. A store the notebook cannot read (no keys here, a claim
    not mounted) or with no version yet (a pipeline's job still to train it) is taken to
    hold SavedModels, as before kfnb knew two kinds; the note says so. A newest version
    that holds no model kfnb knows is a ServeError."""
    from kfnb.artifact_sync import StoreError
    from kfnb.serving.model_kind import UnknownModel, newest_stored_model

    try:
        found = newest_stored_model(uri)
    except StoreError as err:
        why = first_line(err)
        return "tensorflow", uri, f"could not read {uri} ({why}): taken to be TensorFlow"
    except UnknownModel as err:
        raise ServeError(str(err)) from err
    if found is None:
        return "tensorflow", uri, f"no model version at {uri} yet: taken to be TensorFlow"
    if found.kind == "sklearn":
        return found.kind, found.version_uri, ""
    if not found.version:
        raise ServeError(f"{uri} is one SavedModel version: give the directory of numbered "
                         f"versions above it")  # fmt: skip
    return found.kind, uri, ""


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
    kind, uri, note = stored_model(storage_uri(source))
    return ServingSpec(
        name=name,
        storage_uri=uri,
        kind=kind,
        kind_note=note,
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
    """One line each: the server that loads the model (the TF Serving release and why, or
    KServe's sklearn runtime); what the S3 Secret needs for KServe; why the model's kind
    was assumed, when its store could not be read."""
    if spec.kind == "sklearn":
        notes = [
            f"scikit-learn model {spec.storage_uri}: KServe's sklearn runtime unpickles it with "
            f"its own scikit-learn, this kernel has {_version('scikit-learn')}: a model saved "
            "by another version may not load"
        ]
    else:
        notes = [f"TF Serving {spec.release.tag}: {spec.release.why}"]
    wanted = secret_annotations(spec)
    if runtime == "kserve" and wanted and spec.s3_secret:
        notes.append(
            f"KServe reads the S3 endpoint from Secret {spec.s3_secret}'s annotations: "
            + annotate_command(spec.s3_secret, spec.namespace, wanted)
        )
    if spec.kind_note:
        notes.append(spec.kind_note)
    return notes


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:
        return f"no {package}"


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
    variants: Mapping[str, str] | Iterable[str] = (),
    split: str | Sequence[int] | None = None,
    **pod: Any,
) -> list[dict[str, Any]]:
    """The objects to apply, in order. With ``canary``, the InferenceService comes twice:
    first as it serves ``source``, then updated to ``canary`` with ``percent`` of traffic,
    which is how KServe rolls out a canary (the previous revision keeps the rest). With
    ``variants`` (``{"rf": "job2"}`` or ``["rf=job2"]``) and ``split`` (percent per variant,
    ``source`` first as ``main``): one InferenceService per variant and the InferenceGraph
    ``name`` over them (`variant_manifests`). ``pod`` holds the pods' options (`serving_spec`)."""
    check_options(runtime, canary, percent)
    if variants or split is not None:
        return variant_manifests(
            name, source, variants, split, runtime, replicas, gpus, canary, namespace, **pod
        )
    spec = serving_spec(name, source, replicas, gpus, namespace, **pod)
    if runtime == "tfserving":
        if spec.kind != "tensorflow":
            raise ServeError(f"{spec.storage_uri} is a {spec.kind} model: TF Serving loads "
                             "SavedModels only, serve it with --runtime kserve")  # fmt: skip
        return tf_serving(spec)
    # The ServiceAccount only lists the Secret: without one KServe's default account does.
    objects = [service_account(spec)] if spec.s3_secret else []
    objects.append(inference_service(spec))
    if canary is not None:
        kind, uri, note = stored_model(storage_uri(canary))
        rollout = replace(
            spec, storage_uri=uri, kind=kind, kind_note=note, canary_percent=percent,
            release=release_for(canary),
        )  # fmt: skip
        objects.append(inference_service(rollout))
    return objects


# -- variants: an A/B test (a fixed split) through KServe's InferenceGraph

MAIN = "main"  # the variant `%serve SOURCE` names; --variant NAME=SOURCE adds the others
_VARIANT_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def parse_variants(variants: Mapping[str, str] | Iterable[str]) -> dict[str, str]:
    """``{"rf": "job2"}`` from ``["rf=job2"]`` (``--variant rf=job2``) or a mapping:
    names are lower-case DNS labels, unique, and not ``main`` (the served source's)."""
    pairs: list[tuple[str, str]] = []
    if isinstance(variants, Mapping):
        pairs = [(str(k), str(v)) for k, v in variants.items()]
    else:
        for item in variants:
            variant, eq, source = str(item).partition("=")
            if not eq or not variant.strip() or not source.strip():
                raise ServeError(f"--variant {item}: write NAME=JOB_OR_URL, e.g. --variant rf=job2")
            pairs.append((variant.strip(), source.strip()))
    found: dict[str, str] = {}
    for variant, source in pairs:
        if not _VARIANT_NAME.fullmatch(variant) or len(variant) > 20:
            raise ServeError(f"--variant {variant}=...: a variant's name is up to 20 lower-case "
                             "letters, digits and '-', starting with a letter")  # fmt: skip
        if variant == MAIN or variant in found:
            taken = "the served source's" if variant == MAIN else "given twice"
            raise ServeError(f"--variant {variant}=...: that name is {taken}; pick another")
        found[variant] = source
    return found


def parse_split(split: str | Sequence[int] | None, variants: Sequence[str]) -> dict[str, int]:
    """``{"main": 90, "rf": 10}`` from ``"90,10"``: one whole percent per variant, in the
    order given (the served source first), summing to 100."""
    names = ", ".join(variants)
    example = ",".join(str(100 // len(variants) + (i < 100 % len(variants)))
                       for i in range(len(variants)))  # fmt: skip
    fix = f"give one whole percent per variant ({names}) summing to 100, e.g. --split {example}"
    if split is None:
        raise ServeError(f"variants need --split: {fix}")
    text = split if isinstance(split, str) else ",".join(str(w) for w in split)
    try:
        weights = [int(part) for part in text.split(",")]
    except ValueError:
        raise ServeError(f"--split {text}: {fix}") from None
    if len(weights) != len(variants) or sum(weights) != 100 or min(weights) < 0:
        raise ServeError(f"--split {text}: {fix}")
    return dict(zip(variants, weights, strict=True))


def variant_manifests(
    name: str,
    source: str,
    variants: Mapping[str, str] | Iterable[str],
    split: str | Sequence[int] | None,
    runtime: str = "kserve",
    replicas: int = 1,
    gpus: int = 0,
    canary: str | None = None,
    namespace: str | None = None,
    **pod: Any,
) -> list[dict[str, Any]]:
    """An InferenceService ``NAME-VARIANT`` per variant (``main`` serves ``source``), each
    as `cluster_manifests` renders one, then the InferenceGraph ``NAME`` whose Splitter
    sends each request to one of them with its ``split`` share."""
    if runtime != "kserve":
        raise ServeError("--variant needs --runtime kserve: KServe's InferenceGraph splits "
                         "the traffic")  # fmt: skip
    if canary is not None:
        raise ServeError("--canary and --variant do not go together: a canary is a variant, "
                         "e.g. --variant new=JOB2 --split 90,10")  # fmt: skip
    sources = {MAIN: source, **parse_variants(variants)}
    if len(sources) < 2:
        raise ServeError("--split needs a second model: add --variant NAME=JOB_OR_URL")
    weights = parse_split(split, list(sources))
    accounts: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    for variant, variant_source in sources.items():
        spec = serving_spec(
            f"{name}-{variant}", variant_source, replicas, gpus, namespace, **pod
        )
        if spec.s3_secret:
            accounts.append(service_account(spec))
        services.append(inference_service(spec))
    graph = inference_graph(
        name, spec.namespace,
        {f"{name}-{variant}": weight for variant, weight in weights.items()}, spec.pod,
    )  # fmt: skip
    return [*accounts, *services, graph]
