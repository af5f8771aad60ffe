"""A sweep on a cluster: a Katib ``Experiment`` (kubeflow.org/v1beta1), created with the
Kubernetes client (Katib's SDK cannot be installed beside TensorFlow 2.21, and builds no
TFJobs), and its status read back from the Experiment and its Trials.

The trial template is the TFJob ``%%tfjob`` renders, its code in one ConfigMap owned
by the Experiment. Each trial's values reach its replicas as ``KFNB_PARAM_<name>``,
substituted by Katib from ``${trialParameters.<name>}``; the trial's own name (Katib's
``${trialSpec.Name}``) names its job and its place in the store. The metrics collector
follows how the cell reports: ``tfjob.report()`` lines on stdout (StdOut), else the
TensorBoard events of the chief's logdir (TensorFlowEvent), which needs an s3:// store
so the logdir has a fixed path in the pod.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from kfnb.sweeps.record import SweepRecord, TrialState
from kfnb.sweeps.space import Space, SweepError, SweepSpec

if TYPE_CHECKING:
    from kfnb.api import Submission
    from kfnb.sweeps.sweep import SweepStatus

__all__ = [
    "INJECTION_LABEL",
    "create_experiment",
    "delete_experiment",
    "experiment_manifest",
    "experiment_status",
    "render_experiment",
]

API = "/apis/kubeflow.org/v1beta1"
INJECTION_LABEL = "katib.kubeflow.org/metrics-collector-injection"
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"
TRIAL_NAME = "kfnbTrialName"  # the trial parameter holding ${trialSpec.Name}
TRIAL_ARTIFACTS = "/tmp/kfnb-trial"  # the replicas' scratch (the pod's /tmp emptyDir)
# How Katib tells a TFJob's end (its own TFJob examples say the same).
SUCCESS = 'status.conditions.#(type=="Succeeded")#|#(status=="True")#'
FAILURE = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
# The Training Operator labels the chief (or worker 0 without one) job-role=master:
# the replica whose stdout and logdir hold the metrics.
PRIMARY_POD = {"training.kubeflow.org/job-role": "master"}


def _parameter(space: Space) -> dict[str, Any]:
    if space.kind in ("uniform", "loguniform"):
        feasible = {"min": repr(space.low), "max": repr(space.high)}
        feasible["distribution"] = "logUniform" if space.kind == "loguniform" else "uniform"
        return {"name": space.name, "parameterType": "double", "feasibleSpace": feasible}
    if space.kind == "int":
        feasible = {"min": str(int(space.low)), "max": str(int(space.high))}
        return {"name": space.name, "parameterType": "int", "feasibleSpace": feasible}
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in space.values)
    kind = "discrete" if space.kind == "grid" and numeric else "categorical"
    values = [v if isinstance(v, str) else json.dumps(v) for v in space.values]
    return {"name": space.name, "parameterType": kind, "feasibleSpace": {"list": values}}


def _reference(name: str) -> str:
    return "${trialParameters." + name + "}"


def _trial_spec(tfjob: dict[str, Any], job: str, spec: SweepSpec, collector: str) -> dict[str, Any]:
    """The TFJob rendered for ``job`` as Katib's trial template: each trial's own name
    where the job's was, its parameters in the replicas' environment."""
    trial = copy.deepcopy(tfjob)
    trial["metadata"] = {"labels": trial["metadata"].get("labels", {})}  # Katib names it
    name = _reference(TRIAL_NAME)
    params = {f"KFNB_PARAM_{s.name}": _reference(s.name) for s in spec.spaces}
    for replica in trial["spec"]["tfReplicaSpecs"].values():
        pod = replica["template"]
        labels = pod.setdefault("metadata", {}).setdefault("labels", {})
        if "kfnb/job" in labels:
            labels["kfnb/job"] = name
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            env = []
            for item in container.get("env", []):
                item = dict(item)
                if item["name"] in params:
                    continue
                if item["name"] == "KFNB_JOB_NAME":
                    item["value"] = name
                elif item["name"] == "KFNB_STORE" and item.get("value", "").endswith(f"/{job}"):
                    item["value"] = item["value"][: -len(job)] + name
                elif item["name"] == "KFNB_ARTIFACTS" and collector == "TensorFlowEvent":
                    item["value"] = TRIAL_ARTIFACTS
                elif job in item.get("value", ""):
                    item["value"] = item["value"].replace(job, name)
                env.append(item)
            if container["name"] == "tensorflow":
                env += [{"name": key, "value": value} for key, value in params.items()]
            container["env"] = env
    return trial


def _collector(source: str, tfjob: dict[str, Any]) -> dict[str, Any]:
    """StdOut when the cell calls ``tfjob.report``, else its TensorBoard events."""
    if "tfjob.report(" in source:
        return {"collector": {"kind": "StdOut"}}
    stores = {
        e.get("value", "")
        for r in tfjob["spec"]["tfReplicaSpecs"].values()
        for c in r["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if e["name"] == "KFNB_STORE"
    }
    if not any(s.startswith("s3://") for s in stores):
        raise SweepError(
            "on a cluster, Katib reads a trial's TensorBoard events from a fixed path, which "
            "needs an s3:// --storage; or report the objective with tfjob.report(METRIC=value)",
            "storage",
        )
    path = {"path": f"{TRIAL_ARTIFACTS}/tensorboard", "kind": "Directory"}
    return {"collector": {"kind": "TensorFlowEvent"}, "source": {"fileSystemPath": path}}


def experiment_manifest(
    name: str, spec: SweepSpec, source: str, prepared: Submission
) -> dict[str, Any]:
    """The Experiment for ``spec`` over the TFJob ``prepared`` renders (named ``name``)."""
    if spec.algorithm == "hyperband":
        raise SweepError(
            "--algorithm hyperband on Katib needs a resource parameter (its algorithmSettings: "
            "resource_name, eta, r_l) that kfnb does not set: run it locally, or pick tpe",
            "algorithm",
        )
    backend: Any = prepared.backend
    cluster = getattr(backend, "cluster", None)
    tfjob = prepared.manifest
    if cluster is not None:
        from kfnb.backends.kube_manifests import for_cluster

        tfjob = for_cluster(tfjob, cluster)
    collector = _collector(source, tfjob)
    metric = spec.objective.metric
    objective: dict[str, Any] = {
        "type": spec.objective.direction,
        "objectiveMetricName": metric,
        "metricStrategies": [{"name": metric, "value": "latest"}],  # the last epoch's model
    }
    if spec.objective.goal is not None:
        objective["goal"] = spec.objective.goal
    experiment_spec: dict[str, Any] = {
        "objective": objective,
        "algorithm": {"algorithmName": spec.algorithm},
        "parallelTrialCount": spec.parallel,
        "maxTrialCount": spec.trials,
        "parameters": [_parameter(s) for s in spec.spaces],
        "metricsCollectorSpec": collector,
        "trialTemplate": {
            "primaryContainerName": "tensorflow",
            "primaryPodLabels": dict(PRIMARY_POD),
            "successCondition": SUCCESS,
            "failureCondition": FAILURE,
            "trialParameters": [
                *(
                    {"name": s.name, "reference": s.name, "description": s.describe()}
                    for s in spec.spaces
                ),  # fmt: skip
                {
                    "name": TRIAL_NAME,
                    "reference": "${trialSpec.Name}",
                    "description": "the trial's name: its job's, and its place in the store",
                },  # fmt: skip
            ],
            "trialSpec": _trial_spec(
                tfjob, tfjob["metadata"]["name"], spec, collector["collector"]["kind"]
            ),
        },
    }
    if spec.max_failed is not None:
        experiment_spec["maxFailedTrialCount"] = spec.max_failed
    if spec.early_stopping:
        experiment_spec["earlyStopping"] = {"algorithmName": spec.early_stopping}
    namespace = tfjob["metadata"].get("namespace") or backend.namespace
    return {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "kfnb"},
        },
        "spec": experiment_spec,
    }


def render_experiment(
    source: str, sweep: SweepSpec, *, name: str | None = None, **options: Any
) -> dict[str, Any]:
    """The Experiment `start_sweep` would create on the Kubernetes backend (``--dry-run``)."""
    from kfnb.api import prepare
    from kfnb.spec import validate_name
    from kfnb.sweeps.sweep import _example, _pairs, _param_env, fresh_sweep_name

    name = validate_name(name or fresh_sweep_name())
    env = [
        *_pairs(options.pop("env", ())),
        *_param_env({s.name: _example(s) for s in sweep.spaces}),
    ]
    options["backend"] = "kubernetes"
    prepared = prepare(source, **{**options, "name": name, "env": env})
    return experiment_manifest(name, sweep, source, prepared)


def _api(record: SweepRecord) -> Any:
    from kfnb.backends import get_backend

    return get_backend("kubernetes", storage=record.storage, namespace=record.namespace or None).api  # type: ignore[attr-defined]


def check_katib(api: Any, namespace: str) -> list[str]:
    """Katib's CRD is there (else `SweepError`), and what it needs of the namespace."""
    from kfnb.backends import BackendError

    try:
        found = api.request("GET", API)
    except BackendError:
        found = {}
    plurals = (
        {r.get("name") for r in found.get("resources", [])} if isinstance(found, dict) else set()
    )
    if "experiments" not in plurals:
        raise SweepError(
            "this cluster has no Katib (no kubeflow.org/v1beta1 Experiments): install Katib, "
            "or run the sweep here with --backend local"
        )
    try:
        labels = (
            api.request("GET", f"/api/v1/namespaces/{namespace}").get("metadata", {}).get("labels")
            or {}
        )
    except BackendError:
        return [f"could not read namespace {namespace}'s labels: Katib collects metrics only "
                f"where {INJECTION_LABEL}=enabled"]  # fmt: skip
    if labels.get(INJECTION_LABEL) != "enabled":
        return [
            f"namespace {namespace} lacks the label {INJECTION_LABEL}=enabled: Katib will not "
            f"collect the trials' metrics there; ask an admin to run `kubectl label namespace "
            f"{namespace} {INJECTION_LABEL}=enabled`"
        ]
    return []


def create_experiment(
    record: SweepRecord, spec: SweepSpec, source: str, prepared: Submission
) -> dict[str, Any]:
    """Create the Experiment and its code ConfigMap (owned by it); warn of what Katib lacks."""
    from kfnb.backends import BackendError
    from kfnb.backends.kube_manifests import configmap_for, owned_by

    backend: Any = prepared.backend
    api = backend.api
    manifest = experiment_manifest(record.name, spec, source, prepared)
    namespace = manifest["metadata"]["namespace"]
    for warning in check_katib(api, namespace):
        print(f"kfnb: {warning}", file=sys.stderr)
    job = prepared.manifest["metadata"]["name"]
    configmap = configmap_for(prepared.bundle, job, namespace)
    created = api.request("POST", f"{API}/namespaces/{namespace}/experiments", body=manifest)
    try:
        api.request(
            "POST", f"/api/v1/namespaces/{namespace}/configmaps", body=owned_by(configmap, created)
        )
    except BackendError:
        api.request("DELETE", f"{API}/namespaces/{namespace}/experiments/{record.name}")
        raise
    return dict(created)


def delete_experiment(record: SweepRecord) -> None:
    from kfnb.backends import BackendError

    api = _api(record)
    try:
        api.request("DELETE", f"{API}/namespaces/{api.namespace}/experiments/{record.name}")
    except BackendError as err:
        if "not found" not in str(err).lower():
            raise


def _condition(obj: dict[str, Any]) -> tuple[str, str, str]:
    """The newest True condition: (type, reason, message)."""
    conditions = [
        c for c in obj.get("status", {}).get("conditions", []) if c.get("status") == "True"
    ]
    if not conditions:
        return "Created", "", ""
    last = conditions[-1]
    return last.get("type", ""), last.get("reason", ""), last.get("message", "")


def _stamp(text: str | None) -> float | None:
    if not text:
        return None
    import calendar

    return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _trial(number: int, obj: dict[str, Any], metric: str) -> TrialState:
    state, _reason, message = _condition(obj)
    status = obj.get("status", {})
    metrics = status.get("observation", {}).get("metrics", []) or []
    found = next((m for m in metrics if m.get("name") == metric), None)
    objective = None
    if found is not None:
        try:
            objective = float(found.get("latest"))
        except (TypeError, ValueError):  # "unavailable"
            objective = None
    params = {
        p["name"]: _value(str(p.get("value", "")))
        for p in obj.get("spec", {}).get("parameterAssignments", [])
    }
    return TrialState(
        number,
        obj["metadata"]["name"],
        params,
        state,
        objective,
        _stamp(status.get("startTime")),
        _stamp(status.get("completionTime")),
        message,
        [(0, objective)] if objective is not None else [],
    )


def experiment_status(record: SweepRecord) -> SweepStatus:
    """The sweep as Katib tells it: the Experiment's condition, its Trials with their
    parameters and observations. Each trial gets a job record (its TFJob), so
    ``sweep.best`` is a `Job` like any other."""
    from kfnb.records import JobRecord, load_record, save_record
    from kfnb.sweeps.sweep import SweepStatus

    api = _api(record)
    namespace = api.namespace
    experiment = api.request("GET", f"{API}/namespaces/{namespace}/experiments/{record.name}")
    found = api.request(
        "GET",
        f"{API}/namespaces/{namespace}/trials",
        query={"labelSelector": f"{EXPERIMENT_LABEL}={record.name}"},
    )
    items = sorted(found.get("items", []), key=lambda t: t["metadata"].get("creationTimestamp", ""))
    metric = SweepSpec.from_json(record.spec).objective.metric
    trials = [_trial(i, t, metric) for i, t in enumerate(items)]
    for trial in trials:
        if load_record(trial.name) is None:
            save_record(JobRecord(trial.name, "kubernetes", record.storage, namespace=namespace))
    phase, reason, message = _condition(experiment)
    if phase not in ("Succeeded", "Failed"):
        phase = "Running" if phase in ("Running", "Restarting") else "Created"
    first = next((t for t in trials if t.state == "Failed"), None)
    status = experiment.get("status", {})
    return SweepStatus(
        record.name,
        phase,
        reason,
        message,
        trials,
        _stamp(status.get("startTime")),
        _stamp(status.get("completionTime")),
        f"trial {first.name}: {first.message}" if first else "",
    )
