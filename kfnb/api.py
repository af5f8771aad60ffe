"""The Python API the magics are a thin layer over: `submit`, `render`, `serve`, `attach`.

``%%tfjob`` is `submit` with the cell and its flags, as ipyparallel's ``%px`` is
``View.execute``; scripts, tests and benchmarks call the same functions, so there
is one submit sequence: backend, store, name, bundle, spec, pre-flight, submit, record.
Errors are the library's own (`SpecError`, `BundleError`, `BackendError`,
`StoreError`, `ServeError`); the magics turn them into one-line usage errors.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kfnb.backends import Backend
    from kfnb.bundle import Bundle
    from kfnb.job import Job
    from kfnb.packages import PackagePlan
    from kfnb.pod_options import PodOptions
    from kfnb.serving.kubernetes import Rollout
    from kfnb.serving.served import ServedModel
    from kfnb.spec import JobSpec

__all__ = [
    "attach",
    "prepare",
    "render",
    "render_serving",
    "serve",
    "serve_on_cluster",
    "stop_serving",
    "submit",
]

log = logging.getLogger(__name__)
_announced_backend = False


def default_image(gpus: int) -> str:
    """The official TensorFlow image matching the kernel's TensorFlow, GPU build if asked."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            tag = version(dist)
            break
        except PackageNotFoundError:
            continue
    else:
        tag = "latest"
    return f"tensorflow/tensorflow:{tag}{'-gpu' if gpus else ''}"


@dataclass(frozen=True)
class Submission:
    """A job ready to submit: where it goes, what it ships and the manifest it renders."""

    backend: Backend
    spec: JobSpec
    bundle: Bundle
    manifest: dict[str, Any]
    packages: PackagePlan | None = None  # what an init container installs in each replica


def submit(
    source: str,
    *,
    name: str | None = None,
    workers: int = 1,
    ps: int = 0,
    chief: int = 0,
    evaluator: int = 0,
    gpus: int = 0,
    cpu: str | None = None,
    memory: str | None = None,
    image: str | None = None,
    env: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    restart_policy: str = "Never",
    backoff_limit: int | None = None,
    timeout: int | None = None,
    backend: str | Backend | None = None,
    storage: str | None = None,
    namespace: str | None = None,
    include: Iterable[str] = (),
    names: Mapping[str, Any] | None = None,
    hidden: Iterable[str] = (),
    cwd: Path | None = None,
    pip: Iterable[str] = (),
    requirements: str | None = None,
    wheelhouse: str | None = None,
    image_pull_secrets: Iterable[str] = (),
    node_selector: Mapping[str, str] | Iterable[str] = (),
    tolerations: Iterable[str] = (),
    labels: Mapping[str, str] | Iterable[str] = (),
    annotations: Mapping[str, str] | Iterable[str] = (),
    priority_class: str | None = None,
    gpu_type: str | None = None,
    bundle: Bundle | None = None,
) -> Job:
    """Run ``source`` as a TFJob and return its `Job` at once (``job.wait()`` blocks).

    ``source`` runs in every replica with ``tfjob`` telling it its role and where to
    write. It may read ``names`` (default: the notebook's namespace, or the caller's
    globals outside IPython); those it reads travel with it, as do the files and
    directories in ``include``. ``backend`` is ``"auto"``, ``"local"``, ``"kubernetes"``
    or a backend object (default: ``%config Kfnb.backend``); ``storage`` and
    ``namespace`` apply to a backend named by string. What the replicas' image or
    interpreter lacks (tf-keras, tensorboard, the packages the code imports, ``pip``
    specs and a ``requirements`` file) is installed before the cell runs, from the
    ``wheelhouse`` (default ``%config Kfnb.wheelhouse``) or the package index. The
    other arguments are the `JobSpec` fields and the pods' options (`PodOptions`:
    pull secrets, node selector, ``KEY[=VALUE]:EFFECT`` tolerations, labels, annotations,
    priority class, GPU type), with the ``Kfnb`` settings as defaults. A ``bundle``
    built before (a sweep's trials share one) is shipped instead of bundling ``source``.
    """
    options = {k: v for k, v in locals().items() if k != "source"}  # the arguments, first
    from kfnb.job import Job
    from kfnb.records import JobRecord, load_record, save_record
    from kfnb.spec import SpecError, validate_name

    if name is not None and load_record(validate_name(name)) is not None:
        raise SpecError(
            f"a job named {name!r} exists already: pick another {{name}}, or "
            f"`%kfnb delete {name} --purge` first",
            "name",
        )
    prepared = _prepare(source, options, inspect.currentframe())
    for warning in prepared.backend.preflight(prepared.manifest):
        print(f"kfnb: {warning}", file=sys.stderr)
    if prepared.packages is not None and prepared.packages.wheelhouse:
        _fill_wheelhouse(prepared.packages)
    _announce(prepared.backend.name, backend)
    prepared.backend.submit(prepared.manifest, prepared.bundle)
    log.debug("submitted %s to the %s backend", prepared.spec.name, prepared.backend.name)
    save_record(
        JobRecord(
            prepared.spec.name,
            prepared.backend.name,
            prepared.backend.storage,
            namespace=prepared.backend.namespace,
            image=prepared.spec.image,
            replicas=prepared.spec.replica_counts,
        )
    )
    return Job(prepared.spec.name, prepared.backend)


def render(source: str, **options: Any) -> dict[str, Any]:
    """The TFJob manifest `submit` would send with the same arguments, after the same
    checks (but for a name in use); nothing is submitted."""
    return _prepare(source, options, inspect.currentframe(), rendering=True).manifest


def prepare(source: str, **options: Any) -> Submission:
    """What `submit` would do with the same arguments: the backend, bundle, manifest and
    the packages each replica gets installed (``--dry-run`` shows them); nothing is sent."""
    return _prepare(source, options, inspect.currentframe(), rendering=True)


def _prepare(
    source: str, options: dict[str, Any], frame: FrameType | None, rendering: bool = False
) -> Submission:
    """Bundle ``source`` and render its TFJob from `submit`'s ``options``; ``frame`` is
    the public function's, whose caller's globals are the names outside IPython."""
    from kfnb.bundle import BundleError, build_bundle
    from kfnb.config import settings
    from kfnb.pod_options import POD_FIELDS
    from kfnb.spec import JobSpec, validate_name
    from kfnb.storage import open_store, replica_env

    config = settings()
    if not source.strip():
        raise BundleError("the cell is empty: write the training code to run")
    fields = dict(options)
    names, hidden = fields.pop("names", None), fields.pop("hidden", ())
    if names is None:
        names, hidden = _caller_names(frame)
    name, backend = fields.pop("name", None), fields.pop("backend", None)
    storage, namespace = fields.pop("storage", None), fields.pop("namespace", None)
    include, cwd = fields.pop("include", ()), fields.pop("cwd", None)
    gpus, image = fields.pop("gpus", 0), fields.pop("image", None)
    needs = {k: fields.pop(k, None) for k in ("pip", "requirements", "wheelhouse")}
    pod = _pod_options({k: fields.pop(k, None) for k in POD_FIELDS})
    namespace = namespace or config.namespace or None
    if isinstance(backend, str) or backend is None:
        backend = _backend(backend or config.backend, storage, namespace, rendering)
    store = open_store(backend.storage)
    name = validate_name(name) if name is not None else _fresh_name()
    image = image or config.image or default_image(gpus)
    prebuilt: Bundle | None = fields.pop("bundle", None)
    bundle = prebuilt or build_bundle(
        source,
        names,
        job_name=name,
        hidden=hidden,
        includes=include,
        cwd=cwd or Path.cwd(),
        s3=store.local_root is None,
        replica_python=_replica_python(backend, image),
    )
    job_dir = backend.job_dir(name)
    spec = JobSpec(
        name=name,
        gpus=gpus,
        image=image,
        env=_env_pairs(fields.pop("env", ())),
        namespace=namespace or backend.namespace or None,  # the cluster's, for --dry-run
        legacy_keras=config.legacy_keras,
        artifacts=str(job_dir) if job_dir else "",
        code_files=tuple(bundle.files),
        storage_env=tuple(replica_env(store, name).items()),
        pod=pod,
        **fields,
    )
    packages = None
    if config.install_packages:
        packages = _plan_packages(spec, bundle, backend, store.url, **needs)
    if packages is not None and (packages.packages or not packages.known_image):
        from dataclasses import replace

        from kfnb.packages import PLAN_FILE

        plan = json.dumps(packages.to_json(), indent=1).encode()
        installer = Path(__file__).with_name("install_packages.py").read_bytes()
        files = {**bundle.files, PLAN_FILE: plan, "install_packages.py": installer}
        if packages.wheelhouse.startswith("s3://"):  # read with the bundle's minio client
            from kfnb.bundle import vendored_minio

            files.update(vendored_minio())
        bundle = replace(bundle, files=files)
        spec = replace(
            spec,
            code_files=tuple(files),
            packages=True,
            packages_env=tuple(packages.index.items()),
            cuda_libraries=packages.cuda_libraries,
        )
    return Submission(backend, spec, bundle, spec.to_manifest(), packages)


def _plan_packages(
    spec: JobSpec,
    bundle: Bundle,
    backend: Backend,
    store_url: str,
    *,
    pip: Iterable[str] | None,
    requirements: str | None,
    wheelhouse: str | None,
) -> PackagePlan:
    """What the replicas' image (or, locally, interpreter) lacks, and where it comes from."""
    from dataclasses import replace

    from kfnb.config import settings
    from kfnb.packages import Needs, interpreter_contents, plan_packages, pod_index_env
    from kfnb.wheelhouse import choose_root

    env = {e["name"]: e["value"] for e in spec.container_env()}
    needs = Needs(
        legacy_keras=env.get("TF_USE_LEGACY_KERAS") == "1",
        gpus=spec.gpus,
        pip=tuple(pip or ()),
        requirements=requirements,
    )
    local = backend.name == "local"
    if local:
        python_path = getattr(backend, "python", sys.executable)
        version, provided = interpreter_contents(python_path)
        plan = plan_packages(
            bundle, needs, image=f"the Python at {python_path}", provided=provided, python=version
        )
    else:
        plan = plan_packages(bundle, needs, image=spec.image)
    root = choose_root(wheelhouse or settings().wheelhouse, store_url, local)
    if local and root.startswith("pvc://"):  # local replicas read the notebook's mount
        from kfnb.storage import open_store

        root = str(open_store(root).local_root)
    if root != "off" and plan.packages:
        return replace(plan, wheelhouse=f"{root.rstrip('/')}/{plan.key}")
    return replace(plan, index=pod_index_env(dict(os.environ)))


def _fill_wheelhouse(plan: PackagePlan) -> None:
    """Fill the plan's wheelhouse from the notebook before the replicas need it."""
    from kfnb.storage import open_store
    from kfnb.wheelhouse import fill, missing

    root = plan.wheelhouse.rsplit("/", 1)[0]
    store = open_store(root)
    if missing(store, plan) != []:  # the download takes a while: say what it is
        print(f"kfnb: filling the wheelhouse {plan.wheelhouse} with {len(plan.packages)} wheels")
    done = fill(store, plan)
    if done:
        print(f"kfnb: {done} in {root}")


def _replica_python(backend: Backend, image: str) -> str | None:
    """The Python the replicas run, where the backend can tell (a known image's, the
    local interpreter's): when it is not the kernel's, names travel by source."""
    probe = getattr(backend, "replica_python", None)
    return probe(image) if callable(probe) else None


def _pod_options(given: dict[str, Any]) -> PodOptions:
    from kfnb.pod_options import PodOptions

    return PodOptions.from_settings(**given)


def _backend(name: str, storage: str | None, namespace: str | None, rendering: bool) -> Backend:
    """The backend ``name``; for rendering only, the Kubernetes one even with no cluster
    configured (``--dry-run`` prints what a cluster would get)."""
    from kfnb.backends import get_backend

    if rendering and name == "kubernetes":
        from kfnb.backends.kube_api import cluster_configured
        from kfnb.backends.kubernetes import KubernetesBackend

        if not cluster_configured():
            return KubernetesBackend.offline(storage, namespace)
    return get_backend(name, storage=storage, namespace=namespace)


def _fresh_name() -> str:
    from kfnb.records import load_record
    from kfnb.spec import generate_name

    while load_record(name := generate_name()) is not None:
        pass
    return name


def _caller_names(frame: FrameType | None) -> tuple[Mapping[str, Any], Iterable[str]]:
    """The notebook's names when IPython runs, else the globals of ``frame``'s caller."""
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        return shell.user_ns, shell.user_ns_hidden
    caller = frame.f_back if frame is not None else None
    return (caller.f_globals if caller is not None else {}), ()


def _env_pairs(env: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = env.items() if isinstance(env, Mapping) else env
    return tuple((str(key), str(value)) for key, value in items)


def _announce(backend: str, asked: str | Backend | None) -> None:
    """Say once per kernel which backend jobs run on, when the user did not name one."""
    global _announced_backend
    from kfnb.config import settings

    if asked not in (None, "auto") or _announced_backend:
        return
    _announced_backend = True
    why = ""
    if (asked or settings().backend) == "auto":
        from kfnb.backends.kubernetes import choose_auto

        why = f": {choose_auto().reason}"
    print(
        f"kfnb: running jobs on the {backend} backend{why} "
        "(--backend or %config Kfnb.backend to change)"
    )


def attach(name: str) -> Job:
    """The `Job` named ``name`` from its record, e.g. after a kernel restart."""
    from kfnb.job import Job

    return Job.attach(name)


def serve(
    source: str,
    *,
    name: str = "mnist",
    port: int | None = None,
    grpc_port: int | None = None,
    host: str = "127.0.0.1",
    backend: str | None = None,
    replicas: int = 1,
    gpus: int = 0,
    canary: str | None = None,
    percent: int | None = None,
    variants: Mapping[str, str] | Iterable[str] = (),
    split: str | Sequence[int] | None = None,
    runtime: str = "kserve",
    image_pull_secrets: Iterable[str] = (),
    node_selector: Mapping[str, str] | Iterable[str] = (),
    tolerations: Iterable[str] = (),
    labels: Mapping[str, str] | Iterable[str] = (),
    annotations: Mapping[str, str] | Iterable[str] = (),
    priority_class: str | None = None,
    gpu_type: str | None = None,
    allowed_hosts: Iterable[str] = (),
) -> ServedModel:
    """Serve ``source`` (a job name, a SavedModel directory or an s3:// URL) as ``name``.

    Locally (the default) a model server process answers TF Serving's REST and gRPC
    APIs and picks up new versions; with ``backend="kubernetes"`` KServe or TF
    Serving (``runtime``) serves it in the cluster, ``canary`` taking ``percent``, its
    pods with the pods' options of `submit` (pull secrets, node selector, tolerations,
    labels, annotations, priority class, GPU type) over the ``Kfnb`` settings.
    ``variants`` (``{"rf": "job2"}`` or ``["rf=job2"]``) with ``split`` (``"90,10"``:
    percent per variant, ``source`` first) serve an A/B test as KServe's InferenceGraph
    (``backend="kubernetes"`` only, for now). ``allowed_hosts``: ``Host`` names a local
    server answers besides localhost and IP addresses (with ``Kfnb.allowed_hosts``),
    such as the name a proxy reaches it by.
    """
    hosts = tuple(allowed_hosts)
    pod = _given_pod(locals())
    from kfnb.serving.local import LocalServing, model_base_path
    from kfnb.spec import validate_name

    validate_name(name)
    source = _best_of_sweep(source)
    serving = LocalServing()
    if backend == "kubernetes":
        served, _ = serve_on_cluster(
            source, name=name, runtime=runtime, replicas=replicas, gpus=gpus,
            canary=canary, percent=percent, variants=variants, split=split, **pod,
        )  # fmt: skip
        return served
    _check_local_serving(backend, replicas, gpus, canary, percent, pod)
    if variants or split is not None:
        from kfnb.spec import SpecError

        raise SpecError(
            "{variants} and {split} are not available with the local server yet (a local "
            "router is to come): serve the variants with {backend} kubernetes",
            "variants",
            "split",
            "backend",
        )
    base = model_base_path(source, name, serving.root.parent)
    return serving.start(name, base, source, port, grpc_port, host=host, allowed_hosts=hosts)


def stop_serving(name: str) -> ServedModel:
    """Stop the server of ``name``: the local process, or its InferenceService or
    Deployment on the cluster (then its record is forgotten). Returns what was stopped."""
    from kfnb.serving.kubernetes import ClusterServing
    from kfnb.serving.local import LocalServing, ServeError
    from kfnb.serving.served import ClusterServer

    serving = LocalServing()
    served = serving.get(name)
    if isinstance(served, ClusterServer):
        left = ClusterServing(served.namespace).delete(name, served.runtime, served.variants)
        serving.forget(name)  # what kfnb served is gone, even where another object has the name
        if left:
            raise ServeError(f"stopped {name}, and left {'; '.join(left)}")
        return served
    return serving.stop(name)


def render_serving(source: str, *, name: str = "mnist", **options: Any) -> list[dict[str, Any]]:
    """The Kubernetes manifests `serve` would apply with ``backend="kubernetes"`` and the
    same cluster arguments (``runtime``, ``replicas``, ``gpus``, ``canary``, ``percent``,
    ``variants``, ``split`` and the pods' options)."""
    from kfnb.serving.cluster import cluster_manifests, parse_variants
    from kfnb.spec import validate_name

    if options.get("variants"):  # each a job, a URL or a sweep (its best trial's job)
        variants = parse_variants(options["variants"])
        options["variants"] = {k: _best_of_sweep(v) for k, v in variants.items()}
    return cluster_manifests(validate_name(name), _best_of_sweep(source), **options)


def serving_notes(
    source: str, *, name: str = "mnist", runtime: str = "kserve", gpus: int = 0
) -> list[str]:
    """What serving ``source`` on a cluster relies on, one line each: the TF Serving
    release that loads its model and why, and what KServe needs on the S3 Secret."""
    from kfnb.serving.cluster import serving_notes as notes
    from kfnb.serving.cluster import serving_spec

    source = _best_of_sweep(source)

    return notes(serving_spec(name, source, gpus=gpus), runtime)


def serve_on_cluster(
    source: str,
    *,
    name: str = "mnist",
    runtime: str = "kserve",
    replicas: int = 1,
    gpus: int = 0,
    canary: str | None = None,
    percent: int | None = None,
    variants: Mapping[str, str] | Iterable[str] = (),
    split: str | Sequence[int] | None = None,
    image_pull_secrets: Iterable[str] = (),
    node_selector: Mapping[str, str] | Iterable[str] = (),
    tolerations: Iterable[str] = (),
    labels: Mapping[str, str] | Iterable[str] = (),
    annotations: Mapping[str, str] | Iterable[str] = (),
    priority_class: str | None = None,
    gpu_type: str | None = None,
) -> tuple[ServedModel, Rollout]:
    """`serve` on Kubernetes, with the rollout KServe reports (its traffic split; with
    variants, the InferenceGraph's weights by InferenceService)."""
    pod = _given_pod(locals())
    source = _best_of_sweep(source)
    if variants or split is not None:
        return _serve_variants_on_cluster(
            source, name, runtime, replicas, gpus, canary, variants, split, pod
        )
    from kfnb.serving.cluster import serving_spec, storage_uri
    from kfnb.serving.kubernetes import ClusterServing
    from kfnb.serving.local import LocalServing
    from kfnb.serving.served import ClusterServer

    manifests = render_serving(
        source, name=name, runtime=runtime, replicas=replicas, gpus=gpus, canary=canary,
        percent=percent, **pod,
    )  # fmt: skip
    cluster = ClusterServing()
    spec = serving_spec(name, source, replicas, gpus, cluster.namespace, **pod)
    cluster.check_s3(spec, runtime)
    cluster.apply(manifests)
    rollout = cluster.wait(name, runtime)
    served = ClusterServer.from_rollout(rollout, canary or source, storage_uri(canary or source))
    LocalServing().save(served)  # the record, so `%serve list` and `stop` find it
    return served, rollout


def _best_of_sweep(source: str) -> str:
    """The best trial's job when ``source`` names a sweep (and no job): `%serve SWEEP`."""
    from kfnb.records import load_record
    from kfnb.sweeps.record import load_sweep

    if "/" in source or load_record(source) is not None or load_sweep(source) is None:
        return source
    from kfnb.sweeps import Sweep, SweepError

    best = Sweep.attach(source).best
    if best is None:
        raise SweepError(f"sweep {source} has no succeeded trial with an objective yet: wait")
    return best.job.name


def _serve_variants_on_cluster(
    source: str,
    name: str,
    runtime: str,
    replicas: int,
    gpus: int,
    canary: str | None,
    variants: Mapping[str, str] | Iterable[str],
    split: str | Sequence[int] | None,
    pod: Mapping[str, Any],
) -> tuple[ServedModel, Rollout]:
    """An InferenceService per variant and the InferenceGraph ``name`` splitting between them."""
    from kfnb.serving.cluster import MAIN, parse_variants, serving_spec, storage_uri
    from kfnb.serving.kubernetes import ClusterServing
    from kfnb.serving.local import LocalServing
    from kfnb.serving.served import ClusterServer

    # Once (a generator is read once); a sweep stands for its best trial's job.
    variants = {k: _best_of_sweep(v) for k, v in parse_variants(variants).items()}
    manifests = render_serving(
        source, name=name, runtime=runtime, replicas=replicas, gpus=gpus, canary=canary,
        variants=variants, split=split, **pod,
    )  # fmt: skip
    cluster = ClusterServing()
    for variant, variant_source in {MAIN: source, **variants}.items():
        spec = serving_spec(f"{name}-{variant}", variant_source, replicas, gpus,
                            cluster.namespace, **pod)  # fmt: skip
        cluster.check_s3(spec, runtime)
    cluster.apply(manifests)
    rollout = cluster.wait_graph(name)
    served = ClusterServer.from_rollout(
        rollout, source, storage_uri(source), variants=(MAIN, *variants)
    )
    LocalServing().save(served)  # the record, so `%serve list` and `stop` find it
    return served, rollout


def _given_pod(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The pods' options among a function's ``arguments``."""
    from kfnb.pod_options import POD_FIELDS

    return {field: arguments[field] for field in POD_FIELDS}


def _check_local_serving(
    backend: str | None,
    replicas: int,
    gpus: int,
    canary: str | None,
    percent: int | None,
    pod: Mapping[str, Any],
) -> None:
    """Options that only mean something on Kubernetes are refused locally, with the reason."""
    from kfnb.spec import SpecError

    if backend not in (None, "auto", "local"):
        raise SpecError(f"{{backend}} {backend!r}: use auto, local or kubernetes", "backend")
    given = [field for field, value in pod.items() if value]
    if given:
        fields = ", ".join("{" + f + "}" for f in given)
        raise SpecError(
            f"{fields} {'apply' if len(given) > 1 else 'applies'} to a Kubernetes server "
            "({backend} kubernetes): the local server is a process on this machine, not a "
            "pod: leave them out",
            *given,
            "backend",
        )
    if replicas != 1 or gpus:
        raise SpecError(
            "{replicas} and {gpus} apply to a Kubernetes server; the local server is one "
            "process that batches concurrent requests: leave them out",
            "replicas",
            "gpus",
        )
    if canary or percent is not None:
        raise SpecError(
            "{canary} needs the Kubernetes backend (KServe splits the traffic)", "canary"
        )
