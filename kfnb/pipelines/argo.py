"""A pipeline as an Argo ``Workflow`` (or ``CronWorkflow``): what ``%kfnb pipeline export``
writes and ``run --backend kubernetes`` creates.

- one ``dag`` template; a step runs when its dependencies Succeeded or were Skipped and at
  least one Succeeded (``depends``), so a step whose dependencies were all skipped is
  Omitted, as the local runner skips it;
- a ``%%tfjob`` step is a ``resource`` template creating the very TFJob ``%%tfjob`` renders
  (``setOwnerReference``), succeeding on the deciding replica's count and completionTime,
  failing on the Failed condition (Argo's conditions are label selectors over JSON
  paths: a list is indexed, not filtered);
- a ``%%step`` is a ``container`` template: the TFJob's one replica pod (stock image, the
  bundle mounted, the same runtime), writing its outputs as Argo output parameters;
- a ``%serve`` step is a ``resource`` template creating the InferenceService;
- the steps' bundles are one ConfigMap (files deduplicated) created by a ``resource``
  task and owned by the Workflow;
- parameters are ``spec.arguments.parameters``, handed to the runtime in ``KFNB_PARAMS``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from kfnb.pipelines.steps import (
    PipelineError,
    Step,
    graph,
    load_names,
    load_steps,
    names_path,
    parameters,
    parse_overrides,
)
from kfnb.pipelines.when import parse_when

WORKFLOW_API = "argoproj.io/v1alpha1"
OUTPUTS_DIR = "/tmp/kfnb-outputs"
_PLACEHOLDER = "zkfnbwfz-"  # a step's job name until it becomes {{workflow.name}}-<step>
CODE_CONFIGMAP = "{{workflow.name}}-code"  # every step's files, owned by the Workflow
WORKFLOW_LIMIT = 1024 * 1024 - 64 * 1024  # etcd's 1 MiB per object, less room for status


def job_name(step: str) -> str:
    return f"{{{{workflow.name}}}}-{step}"


def _rename(obj: Any, step: str) -> Any:
    """``obj`` with the placeholder job name replaced by the Workflow's name for the step."""
    text = json.dumps(obj).replace(f"{_PLACEHOLDER}{step}", job_name(step))
    return json.loads(text)


def _yaml(obj: dict[str, Any]) -> str:
    from kfnb.spec import to_yaml

    return to_yaml(obj)


def _depends(deps: Iterable[str], code_task: str | None) -> str:
    deps = list(deps)
    parts = [f"{code_task}.Succeeded"] if code_task else []
    if deps:
        parts += [f"({d}.Succeeded || {d}.Skipped)" for d in deps]
        parts.append("(" + " || ".join(f"{d}.Succeeded" for d in deps) + ")")
    return " && ".join(parts)


def _decider(manifest: dict[str, Any]) -> str:
    types = manifest["spec"]["tfReplicaSpecs"]
    return next((t for t in ("Chief", "Master") if t in types), "Worker")


# How many conditions a TFJob can hold at once (Created, Suspended, Running or Restarting,
# Succeeded or Failed: one per type), with room to spare.
_MAX_CONDITIONS = 6


def _tfjob_conditions(manifest: dict[str, Any]) -> tuple[str, str]:
    """Argo's executor parses each condition as a label selector whose keys are gjson paths
    into the object (workflow/executor/resource.go): any failure requirement fails the
    step, all success requirements must hold, failure checked first; a key cannot filter
    a list, only index it. The Training Operator (tensorflow/tfjob_controller.go) ends a
    job, setting ``completionTime``, when the chief has succeeded, else when *worker 0*
    has (not any worker: worker 1 may finish first), counting pods per replica type in
    ``status.replicaStatuses`` (zeros omitted). It fails a job by a ``Failed`` condition:
    for a failed replica, and also past activeDeadlineSeconds or backoffLimit, with no
    failed pod counted; and under restartPolicy ExitCode a retried pod is counted
    ``failed`` while the job is only Restarting. So failure is a ``Failed`` condition at
    any index of ``status.conditions`` (one condition per type), and success the deciding
    type's count together with ``completionTime``."""
    decider = _decider(manifest)
    success = f"status.replicaStatuses.{decider}.succeeded > 0,status.completionTime"
    failure = ",".join(f"status.conditions.{i}.type == Failed" for i in range(_MAX_CONDITIONS))
    return success, failure


def _inputs_env(step: Step, deps: Iterable[str], steps: Mapping[str, Step], store: str) -> str:
    """``KFNB_INPUTS`` for a step on Argo: its dependencies' jobs, model bases and outputs:
    a %%step's as Argo output parameters (JSON text, substituted in place), a TFJob's read
    by the runtime from its deciding replica's status in the store."""
    found: dict[str, Any] = {}
    raw = {}
    for dep in deps:
        upstream = steps[dep]
        if upstream.kind == "serve":
            continue
        entry: dict[str, Any] = {"job": job_name(dep), "model_dir": _in_store(store, dep, "model")}
        if upstream.kind == "step":
            entry["outputs"] = {}
            for name in upstream.outputs:
                token = f"{{{{tasks.{dep}.outputs.parameters.{name}}}}}"
                entry["outputs"][name] = token
                raw[json.dumps(token)] = token  # the value is JSON text: unquoted
        else:
            entry["outputs"] = None
            decider = "chief-0" if upstream.options.get("chief") else "worker-0"
            entry["status"] = _in_store(store, dep, f"status/{decider}.json")
        found[dep] = entry
    text = json.dumps(found)
    for quoted, token in raw.items():
        text = text.replace(quoted, token)
    return text


def _in_store(store: str, step: str, path: str) -> str:
    """Where a step's file is, as its pods see the store: an s3:// URL, a claim's path."""
    if store.startswith("pvc://"):
        from kfnb.storage import parse_pvc

        return parse_pvc(store).pod_path(job_name(step), path)
    if store.startswith("s3://"):
        return f"{store.rstrip('/')}/{job_name(step)}/{path}"
    return ""


def render_workflow(
    pipeline: str,
    overrides: Iterable[str] = (),
    *,
    namespace: str | None = None,
    storage: str | None = None,
    service_account: str | None = None,
    parallelism: int | None = None,
    schedule: str | None = None,
) -> dict[str, Any]:
    """The Workflow of ``pipeline`` (a CronWorkflow with ``schedule``); no cluster needed."""
    from kfnb.api import _backend

    steps = load_steps(pipeline)
    deps = graph(steps)
    values = {**parameters(steps), **parse_overrides(overrides, steps)}
    backend = _backend("kubernetes", storage, namespace, rendering=True)
    cluster = backend.cluster  # type: ignore[attr-defined]
    for name, step in steps.items():
        for ref, output in parse_when(step.when).refs if step.when else ():
            if steps[ref].kind != "step":
                raise PipelineError(
                    f"step {name}'s --when reads {ref}.{output}, an output of a "
                    f"{steps[ref].kind} step, which Argo cannot read (only %%step cells write "
                    "Argo output parameters): write it from a %%step after it"
                )
    tasks: list[dict[str, Any]] = [{"name": "code", "template": "code"}]
    templates: list[dict[str, Any]] = []
    code: dict[str, bytes] = {}
    for name, step in steps.items():
        task: dict[str, Any] = {"name": name, "template": name}
        if step.kind != "serve":
            templates.append(_job_template(step, deps[name], steps, cluster, backend, code))
        else:
            templates.append(_serve_template(step, cluster.namespace, backend.storage))
        depends = _depends(deps[name], "code" if step.kind != "serve" else None)
        if depends:
            task["depends"] = depends
        if step.when:
            task["when"] = parse_when(step.when).argo()
        tasks.append(task)
    spec: dict[str, Any] = {
        "entrypoint": "main",
        "templates": [
            {"name": "main", "dag": {"tasks": tasks}},
            _code_template(code, cluster.namespace),
            *templates,
        ],
    }
    if values:
        spec["arguments"] = {
            "parameters": [{"name": k, "value": json.dumps(v)} for k, v in values.items()]
        }
    if service_account:
        spec["serviceAccountName"] = service_account
    if parallelism:
        spec["parallelism"] = parallelism
    from kfnb.spec import MANAGED_BY

    metadata = {
        "generateName": f"{pipeline}-",
        "namespace": cluster.namespace,
        "labels": {**MANAGED_BY, "kfnb/pipeline": pipeline},
    }
    workflow = {"apiVersion": WORKFLOW_API, "kind": "Workflow", "metadata": metadata, "spec": spec}
    size = len(json.dumps(workflow))
    if size > WORKFLOW_LIMIT:
        raise PipelineError(
            f"the Workflow is {size / 1e6:.1f} MB with its steps' bundles, over what one "
            "object holds: --include less, or read large data from the store"
        )
    if schedule is None:
        return workflow
    if len(schedule.split()) != 5:
        raise PipelineError(f"--schedule {schedule!r} is not a cron line of 5 fields: '0 3 * * *'")
    cron: dict[str, Any] = {
        "apiVersion": WORKFLOW_API,
        "kind": "CronWorkflow",
        "metadata": {
            "name": pipeline,
            "namespace": cluster.namespace,
            "labels": metadata["labels"],
        },
        "spec": {"schedules": [schedule], "concurrencyPolicy": "Forbid", "workflowSpec": spec},
    }
    return cron


def _share_code(
    manifest: dict[str, Any], files: Mapping[str, bytes], code: dict[str, bytes]
) -> None:
    """Point the job's code volume at the Workflow's one ConfigMap, whose keys are the
    files' content hashes: runtime.py, cloudpickle and minio are stored once for all steps."""
    import hashlib

    from kfnb.spec import configmap_key

    keys = {}
    for index, (path, data) in enumerate(files.items()):
        key = "k" + hashlib.sha256(data).hexdigest()[:32]
        code[key] = data
        keys[configmap_key(index, path)] = key
    for spec in manifest["spec"]["tfReplicaSpecs"].values():
        for volume in spec["template"]["spec"].get("volumes", []):
            source = volume.get("configMap")
            if source is not None and source["name"].endswith("-code"):
                source["name"] = CODE_CONFIGMAP
                for item in source.get("items", []):
                    item["key"] = keys[item["key"]]


def _code_template(code: Mapping[str, bytes], namespace: str) -> dict[str, Any]:
    import base64

    from kfnb.spec import MANAGED_BY

    text, binary = {}, {}
    for key, data in code.items():
        try:
            text[key] = data.decode("utf-8")
        except UnicodeDecodeError:
            binary[key] = base64.b64encode(data).decode()
    configmap: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CODE_CONFIGMAP, "namespace": namespace, "labels": dict(MANAGED_BY)},
        **({"data": text} if text else {}),
        **({"binaryData": binary} if binary else {}),
    }
    size = len(json.dumps(configmap))
    if size > WORKFLOW_LIMIT // 2:
        raise PipelineError(
            f"the steps' code is {size / 1e6:.1f} MB, over what one ConfigMap in a Workflow "
            "holds: --include less, or read large data from the store"
        )
    return {
        "name": "code",
        "resource": {"action": "create", "setOwnerReference": True, "manifest": _yaml(configmap)},
    }


def _job_template(
    step: Step,
    deps: Iterable[str],
    steps: Mapping[str, Step],
    cluster: Any,
    backend: Any,
    code: dict[str, bytes],
) -> dict[str, Any]:
    from kfnb.api import prepare
    from kfnb.backends.kube_manifests import for_cluster

    names = load_names(names_path(step.pipeline, step.name))
    options = dict(step.options)
    for key in ("backend", "storage", "namespace", "cwd"):
        options.pop(key, None)
    env = [tuple(pair) for pair in options.pop("env", [])]
    env.append(("KFNB_INPUTS", _inputs_env(step, deps, steps, backend.storage)))
    params = {n: f"{{{{workflow.parameters.{n}}}}}" for n in step.params}
    if params:
        env.append(("KFNB_PARAMS", json.dumps(params)))
    env.append(("KFNB_OUTPUTS_DIR", OUTPUTS_DIR))
    placeholder = f"{_PLACEHOLDER}{step.name}"
    prepared = prepare(step.source, name=placeholder, names=names, hidden=(), env=env,
                       backend=backend, cwd=None, **options)  # fmt: skip
    manifest = for_cluster(prepared.manifest, cluster)
    _share_code(manifest, prepared.bundle.files, code)
    retry = {"retryStrategy": {"limit": str(step.retry)}} if step.retry else {}
    if step.kind == "tfjob":
        success, failure = _tfjob_conditions(manifest)
        template = {
            "name": step.name,
            "resource": {
                "action": "create",
                "setOwnerReference": True,
                "successCondition": success,
                "failureCondition": failure,
                "manifest": _yaml(_rename(manifest, step.name)),
            },
            **retry,
        }
        return template
    pod = _rename(manifest["spec"]["tfReplicaSpecs"]["Worker"]["template"], step.name)
    container = dict(pod["spec"]["containers"][0])
    container.pop("name", None)
    container.pop("ports", None)
    template = {
        "name": step.name,
        "container": container,
        "volumes": pod["spec"].get("volumes", []),
        "outputs": {
            "parameters": [
                {"name": o, "valueFrom": {"path": f"{OUTPUTS_DIR}/{o}"}} for o in step.outputs
            ]
        },
        **retry,
    }
    for key in ("initContainers", "securityContext", "nodeSelector", "tolerations"):
        if pod["spec"].get(key):
            template[key] = pod["spec"][key]
    if not step.outputs:
        del template["outputs"]
    if pod.get("metadata"):
        template["metadata"] = {
            k: v for k, v in pod["metadata"].items() if k in ("labels", "annotations")
        }
    return template


def _serve_template(step: Step, namespace: str, storage: str) -> dict[str, Any]:
    from kfnb.serving.cluster import cluster_manifests

    source = step.source
    if source in load_steps(step.pipeline):
        source = f"{storage.rstrip('/')}/{_PLACEHOLDER}{source}/model"
    manifests = cluster_manifests(step.options.get("name") or "mnist", source, namespace=namespace)
    service = next(m for m in manifests if m["kind"] == "InferenceService")
    text = json.dumps(service).replace(_PLACEHOLDER, "{{workflow.name}}-")
    return {
        "name": step.name,
        "resource": {
            "action": "apply",
            # KServe's model status: Loaded once the predictor serves the new model, and
            # FailedToLoad when it cannot (status.url is set before either).
            "successCondition": "status.modelStatus.states.activeModelState == Loaded",
            "failureCondition": "status.modelStatus.states.targetModelState == FailedToLoad",
            "manifest": _yaml(json.loads(text)),
        },
    }
