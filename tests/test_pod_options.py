"""Every replica pod kfnb renders meets a Kubeflow profile: Istio off, Pod Security
``restricted``, and the scheduling, label and pull-secret options users ask for."""

from __future__ import annotations

from typing import Any

import pytest
from IPython.core.error import UsageError

from kfnb.api import render
from kfnb.config import settings
from kfnb.pod_options import ISTIO_INJECT, PodOptions, merge
from kfnb.spec import JobSpec, SpecError
from tests.conftest import validate_tfjob
from tests.pod_security import restricted_violations

SHAPES: list[dict[str, Any]] = [
    {"workers": 1},
    {"workers": 2, "ps": 1, "chief": 1, "evaluator": 1},
    {"workers": 2, "gpus": 1},
]


def pods(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: s["template"] for k, s in manifest["spec"]["tfReplicaSpecs"].items()}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_every_replica_pod_meets_restricted(
    shape: dict[str, Any], tfjob_validators: list[Any]
) -> None:
    # "import mlxtend" gives the pods the kfnb-packages init container too.
    manifest = render("import mlxtend\n", backend="kubernetes", names={}, **shape)
    validate_tfjob(tfjob_validators, manifest)
    for kind, template in pods(manifest).items():
        pod = template["spec"]
        assert pod["initContainers"], kind
        assert restricted_violations(pod) == [], kind
        assert pod["automountServiceAccountToken"] is False  # replicas never call the API
        (main,) = pod["containers"]
        env = {e["name"]: e["value"] for e in main["env"]}
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        assert env["HOME"] == "/tmp" and mounts["/tmp"] == "kfnb-tmp"


def test_the_check_catches_what_a_restricted_namespace_refuses() -> None:
    """The rules themselves: the manifest as kfnb rendered it before, and templates that
    break them, are refused with the API server's wording."""
    bare = {"containers": [{"name": "tensorflow", "image": "tf"}], "volumes": []}
    said = restricted_violations(bare)
    assert said[0].startswith('allowPrivilegeEscalation != false (container "tensorflow"')
    assert any(s.startswith("unrestricted capabilities") for s in said)
    assert any(s.startswith("runAsNonRoot != true") for s in said)
    assert any(s.startswith("seccompProfile") for s in said)
    spec = JobSpec(
        name="j",
        pod=PodOptions.make(
            pod_template={
                "spec": {
                    "securityContext": {"runAsUser": 0},
                    "volumes": [{"name": "data", "hostPath": {"path": "/data"}}],
                }
            }
        ),
    )
    pod = spec.to_manifest()["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    said = restricted_violations(pod)
    assert any(s.startswith("runAsUser=0") for s in said)
    assert any(s.startswith("hostPath volumes") for s in said)


def test_replicas_leave_the_istio_mesh_as_label_and_annotation() -> None:
    manifest = render("print(1)\n", backend="kubernetes", names={}, workers=2)
    metadata = pods(manifest)["Worker"]["metadata"]
    assert metadata["labels"][ISTIO_INJECT] == "false"
    assert metadata["annotations"][ISTIO_INJECT] == "false"
    settings().istio_sidecar = True
    metadata = pods(render("print(1)\n", backend="kubernetes", names={}))["Worker"]["metadata"]
    assert ISTIO_INJECT not in metadata["labels"]
    assert ISTIO_INJECT not in metadata.get("annotations", {})


def test_scheduling_labels_and_pull_secrets_reach_every_pod(tfjob_validators: list[Any]) -> None:
    settings().node_selector = {"pool": "training"}  # an admin's default, once
    manifest = render(
        "print(1)\n",
        backend="kubernetes",
        names={},
        workers=2,
        ps=1,
        gpus=1,
        image_pull_secrets=["regcred"],
        node_selector=["zone=a"],
        tolerations=["nvidia.com/gpu:NoSchedule", "dedicated=ml:NoExecute"],
        labels=["access-ml-pipeline=true"],
        annotations=["team=vision"],
        priority_class="high",
        gpu_type="NVIDIA-A100-SXM4-80GB",
    )
    validate_tfjob(tfjob_validators, manifest)
    for template in pods(manifest).values():
        pod = template["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert pod["nodeSelector"] == {
            "pool": "training",
            "zone": "a",
            "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
        }
        assert pod["tolerations"] == [
            {"key": "nvidia.com/gpu", "effect": "NoSchedule", "operator": "Exists"},
            {"key": "dedicated", "effect": "NoExecute", "operator": "Equal", "value": "ml"},
        ]
        assert pod["priorityClassName"] == "high"
        assert template["metadata"]["labels"]["access-ml-pipeline"] == "true"
        assert template["metadata"]["annotations"]["team"] == "vision"


def test_the_pod_template_setting_is_merged_last() -> None:
    settings().pod_template = """
spec:
  containers:
  - name: tensorflow
    env:
    - name: EXTRA
      value: "1"
  volumes:
  - name: shm
    emptyDir: {medium: Memory}
"""
    pod = pods(render("print(1)\n", backend="kubernetes", names={}))["Worker"]["spec"]
    (main,) = pod["containers"]
    assert {"name": "EXTRA", "value": "1"} in main["env"]
    assert main["image"].startswith("tensorflow/tensorflow:")  # merged by name, not replaced
    assert {"name": "shm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert restricted_violations(pod) == []


def test_merge_keeps_named_items_and_appends_others() -> None:
    base = {"a": [{"name": "x", "v": 1}], "b": [1], "c": {"d": 1}}
    extra = {"a": [{"name": "x", "w": 2}, {"name": "y"}], "b": [2], "c": {"e": 2}}
    assert merge(base, extra) == {
        "a": [{"name": "x", "v": 1, "w": 2}, {"name": "y"}],
        "b": [1, 2],
        "c": {"d": 1, "e": 2},
    }


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        ("--toleration nvidia.com/gpu", "--toleration 'nvidia.com/gpu' is not KEY[=VALUE]:EFFECT"),
        ("--toleration gpu:Sometimes", "--toleration 'gpu:Sometimes' is not KEY[=VALUE]:EFFECT"),
        ("--node-selector zone", "--node-selector 'zone' is not KEY=VALUE"),
        ("--label a:b=c", "--label a:b=c is not a Kubernetes label"),
        ("--image-pull-secret Reg_Cred", "--image-pull-secret 'Reg_Cred' is not a Kubernetes name"),
    ],
)
def test_flags_that_do_not_parse_are_one_line_usage_errors(flags: str, said: str) -> None:
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "kfnb")
    with pytest.raises(UsageError) as caught:
        shell.run_cell_magic("tfjob", f"--backend kubernetes --dry-run {flags}", "print(1)\n")
    assert str(caught.value).startswith(said)
    assert "\n" not in str(caught.value)


def test_a_bad_option_from_python_names_the_argument() -> None:
    with pytest.raises(SpecError, match="^tolerations 'x' is not"):
        render("print(1)\n", backend="kubernetes", names={}, tolerations=["x"])


def test_dry_run_prints_what_a_cluster_would_get_with_no_cluster_configured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "kfnb")
    shell.run_cell_magic("tfjob", "--backend kubernetes --dry-run --workers 2", "print(1)\n")
    out = capsys.readouterr().out
    assert "kind: TFJob" in out and "namespace: default" in out
    shell.run_cell_magic("tfjob", "--backend kubernetes --dry-run --namespace bob", "print(1)\n")
    assert "namespace: bob" in capsys.readouterr().out
    with pytest.raises(UsageError, match="no Kubernetes cluster is configured"):
        shell.run_cell_magic("tfjob", "--backend kubernetes", "print(1)\n")


def test_serving_pods_meet_restricted_and_keep_the_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    from kfnb.api import render_serving
    from tests.conftest import schema_errors

    monkeypatch.setenv("KFNB_S3_SECRET", "minio-creds")
    settings().tolerations = ["nvidia.com/gpu:NoSchedule"]
    (deployment, _) = render_serving("s3://runs/mnist/model", name="mnist", runtime="tfserving")
    template = deployment["spec"]["template"]
    assert restricted_violations(template["spec"]) == []
    assert ISTIO_INJECT not in template["metadata"]["labels"]  # KServe and the mesh expect it
    assert template["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    isvc = next(
        m
        for m in render_serving("s3://runs/mnist/model", name="mnist")
        if m["kind"] == "InferenceService"
    )
    assert schema_errors(isvc) == []
    predictor = isvc["spec"]["predictor"]
    pod = {**predictor, "containers": [predictor["model"]]}
    assert restricted_violations(pod) == []  # what kfnb renders; KServe adds its own containers
    assert predictor["tolerations"][0]["key"] == "nvidia.com/gpu"
