"""``%serve --backend kubernetes`` and `kfnb.serve` take the pods' options of ``%%tfjob``:
pull secrets, node selector, tolerations, labels, annotations, priority class and GPU
type. The TF Serving Deployment and the InferenceService predictor carry each one, still
validate and still meet Pod Security ``restricted``; a bad one is one line naming its
flag; the local server refuses them in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from kfnb.api import render_serving, serve
from kfnb.config import settings
from kfnb.pod_options import GPU_PRODUCT_LABEL, ISTIO_INJECT
from kfnb.spec import SpecError
from tests.conftest import schema_errors
from tests.pod_security import restricted_violations

SOURCE = "s3://tfmnist/jobs/a/model"
CANARY = "s3://tfmnist/jobs/b/model"
OPTIONS: dict[str, Any] = {
    "image_pull_secrets": ["regcred"],
    "node_selector": ["pool=serving"],
    "tolerations": ["nvidia.com/gpu:NoSchedule", "dedicated=serving:NoExecute"],
    "labels": ["team=vision"],
    "annotations": ["example.com/owner=alice"],
    "priority_class": "serving-high",
    "gpu_type": "NVIDIA-A100-SXM4-80GB",
}
FLAGS = (
    "--image-pull-secret regcred --node-selector pool=serving "
    "--toleration nvidia.com/gpu:NoSchedule --toleration dedicated=serving:NoExecute "
    "--label team=vision --annotation example.com/owner=alice "
    "--priority-class serving-high --gpu-type NVIDIA-A100-SXM4-80GB"
)
TOLERATIONS = [
    {"key": "nvidia.com/gpu", "effect": "NoSchedule", "operator": "Exists"},
    {"key": "dedicated", "effect": "NoExecute", "operator": "Equal", "value": "serving"},
]


def check_pod(pod: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Every option on a pod spec (``pod``) and its ``metadata`` (labels, annotations)."""
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"pool": "serving", GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"] == TOLERATIONS
    assert pod["priorityClassName"] == "serving-high"
    assert metadata["labels"]["team"] == "vision"
    assert ISTIO_INJECT not in metadata["labels"]  # serving pods keep the mesh
    assert metadata["annotations"]["example.com/owner"] == "alice"


def check_deployment(deployment: dict[str, Any]) -> None:
    template = deployment["spec"]["template"]
    check_pod(template["spec"], template["metadata"])
    assert restricted_violations(template["spec"]) == []
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(deployment, "1.30", strict=True)


def check_isvc(isvc: dict[str, Any]) -> None:
    assert schema_errors(isvc) == []
    predictor = isvc["spec"]["predictor"]
    check_pod(predictor, predictor)  # the InferenceService inlines the pod's fields
    pod = {**predictor, "containers": [predictor["model"]]}
    assert restricted_violations(pod) == []  # what kfnb renders; KServe adds its own


def test_the_deployment_and_inference_services_carry_every_option() -> None:
    deployment, service = render_serving(SOURCE, name="mnist", runtime="tfserving", **OPTIONS)
    check_deployment(deployment)
    assert "imagePullSecrets" not in service["spec"]  # a Service has no pods
    first, rollout = render_serving(SOURCE, name="mnist", canary=CANARY, percent=10, **OPTIONS)
    check_isvc(first)
    check_isvc(rollout)  # the canary's revision runs on the same nodes


def test_options_as_mappings_and_over_the_settings() -> None:
    config = settings()
    config.node_selector = {"pool": "cpu", "zone": "a"}
    config.image_pull_secrets = ["mirror"]
    (isvc,) = render_serving(
        SOURCE, name="mnist", node_selector={"pool": "serving"}, image_pull_secrets=["regcred"]
    )
    predictor = isvc["spec"]["predictor"]
    assert predictor["nodeSelector"] == {"pool": "serving", "zone": "a"}  # a key overrides
    assert predictor["imagePullSecrets"] == [{"name": "mirror"}, {"name": "regcred"}]  # adds


def test_serve_dry_run_flags(shell: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    shell.run_line_magic("serve", f"{SOURCE} --dry-run --runtime tfserving {FLAGS}")
    deployment, _ = yaml.safe_load_all(capsys.readouterr().out)
    check_deployment(deployment)
    shell.run_line_magic("serve", f"{SOURCE} --backend kubernetes --dry-run {FLAGS}")
    (isvc,) = yaml.safe_load_all(capsys.readouterr().out)
    check_isvc(isvc)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--toleration nvidia.com/gpu", "--toleration 'nvidia.com/gpu' is not KEY[=VALUE]:EFFECT"),
        ("--node-selector pool", "--node-selector 'pool' is not KEY=VALUE"),
        ("--label team=a/b", "--label team=a/b is not a Kubernetes label"),
        ("--annotation a/b/c=1", "--annotation 'a/b/c' is not an annotation key"),
        ("--image-pull-secret Reg_Cred", "--image-pull-secret 'Reg_Cred' is not a Kubernetes"),
        ("--priority-class High!", "--priority-class 'High!' is not a Kubernetes name"),
        ("--gpu-type A100/80GB", "--gpu-type 'A100/80GB' is not a label value"),
    ],
)
def test_a_bad_flag_is_one_line_naming_it(shell: Any, flags: str, message: str) -> None:
    for line in (f"{SOURCE} --dry-run {flags}", f"{SOURCE} --backend kubernetes {flags}"):
        with pytest.raises(UsageError) as caught:
            shell.run_line_magic("serve", line)
        assert str(caught.value).startswith(message), (line, caught.value)
        assert "\n" not in str(caught.value)


def test_the_local_server_refuses_them_in_one_line(shell: Any, tmp_path: Path) -> None:
    for line, message in {
        f"{tmp_path} --node-selector pool=serving": "--node-selector applies to a Kubernetes "
        "server (--backend kubernetes): the local server is a process on this machine",
        f"{tmp_path} --backend local --label a=b --gpu-type T4": "--label, --gpu-type apply to",
        f"{tmp_path} --backend auto --image-pull-secret regcred": "--image-pull-secret applies",
        f"{tmp_path} --toleration x:NoSchedule --priority-class p": "--toleration, "
        "--priority-class apply to a Kubernetes server",
        f"{tmp_path} --annotation a=b": "--annotation applies to a Kubernetes server",
    }.items():
        with pytest.raises(UsageError) as caught:
            shell.run_line_magic("serve", line)
        assert str(caught.value).startswith(message), (line, caught.value)
        assert "\n" not in str(caught.value)
    with pytest.raises(SpecError, match="^labels applies to a Kubernetes server .backend kub"):
        serve(str(tmp_path), labels={"team": "vision"})



def test_serve_on_the_fake_cluster_applies_them(shell: Any, fake_kube: Any) -> None:
    from tests.fake_kube import DEPLOYMENTS, ISVCS

    shell.run_line_magic("serve", f"{SOURCE} --backend kubernetes --runtime tfserving {FLAGS}")
    with fake_kube.cond:
        (deployment,) = fake_kube.objects[DEPLOYMENTS].values()
    template = deployment["spec"]["template"]
    check_pod(template["spec"], template["metadata"])
    shell.run_line_magic("serve", "stop mnist")
    serve(SOURCE, name="digits", backend="kubernetes", **OPTIONS)
    with fake_kube.cond:
        (isvc,) = fake_kube.objects[ISVCS].values()
    check_pod(isvc["spec"]["predictor"], isvc["spec"]["predictor"])


def test_a_misspelt_option_from_python_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unknown pod options: label"):
        render_serving(SOURCE, name="mnist", label=["team=vision"])
