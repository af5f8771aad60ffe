"""A pipeline run on the cluster: the Argo Workflow created through the Kubernetes API
(no Argo CLI), and its node statuses read back as the run's steps."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from kfnb.pipelines.run_status import RunStatus, StepState
from kfnb.pipelines.steps import PipelineError

ARGO_GROUP, ARGO_VERSION = "argoproj.io", "v1alpha1"
# What running pipelines needs: the Workflow itself, and workflowtaskresults, which Argo's
# executor (running as the Workflow's service account) writes the steps' outputs with.
PIPELINE_NEEDED = (
    ("create", ARGO_GROUP, "workflows"),
    ("get", ARGO_GROUP, "workflows"),
    ("list", ARGO_GROUP, "workflows"),
    ("watch", ARGO_GROUP, "workflows"),
    ("delete", ARGO_GROUP, "workflows"),
)
EXECUTOR_NEEDED = (
    ("create", ARGO_GROUP, "workflowtaskresults"),
    ("patch", ARGO_GROUP, "workflowtaskresults"),
)


def workflows_path(namespace: str, name: str = "") -> str:
    path = f"/apis/{ARGO_GROUP}/{ARGO_VERSION}/namespaces/{namespace}/workflows"
    return f"{path}/{name}" if name else path


def submit_workflow(
    workflow: dict[str, Any], name: str, service_account: str | None = None
) -> dict[str, Any]:
    """Create ``workflow`` as ``name``: the Argo CRD and the account's rights checked first,
    each missing one said in one line with its fix."""
    from kfnb.backends.kube_api import RBAC_FIX, ApiError, KubeApi
    from kfnb.backends.kubernetes import KubernetesBackend

    namespace = workflow["metadata"]["namespace"]
    api = KubeApi(namespace)
    try:
        found = api.request("GET", f"/apis/{ARGO_GROUP}/{ARGO_VERSION}")
    except ApiError as err:
        if err.status != 404:
            raise
        found = {}
    if not any(r.get("name") == "workflows" for r in found.get("resources", [])):
        from kfnb.checks import OPTIONAL

        install = next(row[4] for row in OPTIONAL if row[2] == "workflows")
        raise PipelineError(
            "the cluster has no Argo Workflow resource (workflows.argoproj.io): "
            f"{install}, or run the pipeline here (--backend local)"
        )
    needs = PIPELINE_NEEDED + (() if service_account else EXECUTOR_NEEDED)
    missing = KubernetesBackend(namespace=namespace, api=api).denied(needs)
    if missing:
        lacks = ", ".join(f"{verb} {what}" for verb, what in missing)
        raise PipelineError(f"your account may not {lacks} in namespace {namespace}, which "
                            f"pipelines need: {RBAC_FIX}")  # fmt: skip
    workflow = {**workflow, "metadata": {**workflow["metadata"], "name": name}}
    workflow["metadata"].pop("generateName", None)
    try:
        return api.request("POST", workflows_path(namespace), body=workflow)
    except ApiError as err:
        raise PipelineError(str(err)) from None


def _time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def workflow_status(base: RunStatus, namespace: str) -> RunStatus:
    """The run as the Workflow's status says: each step's node phase, times, outputs."""
    from kfnb.backends.kube_api import ApiError, KubeApi

    api = KubeApi(namespace)
    try:
        workflow = api.request("GET", workflows_path(namespace, base.name))
    except ApiError as err:
        if err.status == 404:
            return base.with_run(phase="Error", message=f"Workflow {base.name} is gone")
        raise
    status = workflow.get("status") or {}
    steps = dict(base.steps)
    for node in (status.get("nodes") or {}).values():
        step = node.get("displayName", "")
        if step not in steps:
            continue
        outputs = {
            p["name"]: _value(p.get("value", ""))
            for p in (node.get("outputs") or {}).get("parameters", [])
        }
        steps[step] = StepState(
            phase=node.get("phase", "Pending"),
            job=f"{base.name}-{step}",
            started=_time(node.get("startedAt")),
            finished=_time(node.get("finishedAt")),
            message=node.get("message", ""),
            outputs=outputs,
        )
    phase = status.get("phase") or "Pending"
    message = status.get("message", "")
    failed = [n for n, s in steps.items() if s.phase in ("Failed", "Error")]
    if failed and phase in ("Failed", "Error"):
        message = f"step {failed[0]} failed: {steps[failed[0]].message or message}"
    return base.with_run(
        phase=phase, steps=steps, message=message,
        started=_time(status.get("startedAt")), finished=_time(status.get("finishedAt")),
    )  # fmt: skip


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def delete_workflow(name: str, namespace: str) -> None:
    """Delete the Workflow, if kfnb created it; what it owns (its TFJobs, the code
    ConfigMap) goes with it. One of the same name made by someone else is left alone."""
    from kfnb.backends.kube_api import ApiError, KubeApi
    from kfnb.backends.kube_owned import delete_exactly, managed_by_kfnb, not_ours

    api, path = KubeApi(namespace), workflows_path(namespace, name)
    try:
        workflow = api.request("GET", path)
        if not managed_by_kfnb(workflow):
            raise PipelineError(
                f"{not_ours(workflow, 'Workflow', namespace)}; kfnb leaves it alone"
            )
        delete_exactly(api, path, workflow)
    except ApiError as err:
        if err.status != 404:
            raise
