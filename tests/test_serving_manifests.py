"""Serving manifests (KServe InferenceService, TF Serving Deployment and Service) validate
against the real InferenceService CRD schema and Kubernetes' own schemas, and hold no keys."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from kfnb.serving.compat import serving_release
from kfnb.serving.manifests import (
    ServingSpec,
    inference_service,
    secret_annotations,
    service_account,
    tf_serving,
)
from tests.conftest import schema_validators

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SPEC = ServingSpec(
    "mnist",
    "s3://tfmnist/jobs/tfjob-abc/model",
    namespace="kubeflow-user",
    replicas=2,
    s3_secret="minio-s3",
    s3_endpoint="minio-service.kubeflow:9000",
    s3_use_https=False,
    source="tfjob-abc",
    release=serving_release("2.21.0"),
)


@pytest.fixture(scope="module")
def isvc_validators() -> list[Any]:
    return schema_validators("InferenceService")


def check_isvc(validators: list[Any], manifest: dict[str, Any]) -> None:
    for validator in validators:
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(manifest)]
        assert not errors, errors


def check_core(manifest: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(manifest, "1.30", strict=True)


def test_inference_service_validates_and_says_what_kserve_needs(
    isvc_validators: list[Any],
) -> None:
    isvc = inference_service(SPEC)
    check_isvc(isvc_validators, isvc)
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["modelFormat"] == {"name": "tensorflow"}
    assert predictor["model"]["storageUri"] == "s3://tfmnist/jobs/tfjob-abc/model"
    assert predictor["serviceAccountName"] == "mnist-kfnb-s3"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 2)
    assert "canaryTrafficPercent" not in predictor
    assert isvc["metadata"]["namespace"] == "kubeflow-user"

    # No tensorflow/serving 2.21 image: TF 2.21's export is served by 2.20.0, not KServe's
    # default 2.6.2 (which lacks DisableCopyOnRead).
    assert predictor["model"]["runtimeVersion"] == "2.20.0"

    account = service_account(SPEC)
    check_core(account)
    assert account["secrets"] == [{"name": "minio-s3"}]
    # KServe reads S3 settings from the Secret's annotations, not the ServiceAccount's.
    assert not any(k.startswith("serving.kserve.io/") for k in account["metadata"]["annotations"])
    assert secret_annotations(SPEC) == {
        "serving.kserve.io/s3-endpoint": "minio-service.kubeflow:9000",
        "serving.kserve.io/s3-usehttps": "0",
        "serving.kserve.io/s3-region": "us-east-1",
    }
    assert secret_annotations(replace(SPEC, s3_endpoint="s3.amazonaws.com")) == {}


def test_canary_and_gpus(isvc_validators: list[Any]) -> None:
    canary = inference_service(replace(SPEC, canary_percent=10, gpus=1))
    check_isvc(isvc_validators, canary)
    predictor = canary["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert predictor["model"]["runtimeVersion"] == "2.20.0-gpu"
    (deployment, _) = tf_serving(replace(SPEC, gpus=1))
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "tensorflow/serving:2.20.0-gpu"
    )
    with pytest.raises(ValueError, match="a canary needs KServe"):
        tf_serving(replace(SPEC, canary_percent=10))


def test_strict_validation_catches_a_misspelt_field(isvc_validators: list[Any]) -> None:
    isvc = inference_service(SPEC)
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop(
        "storageUri"
    )
    given, strict = isvc_validators
    assert not list(given.iter_errors(isvc))  # the CRD schema alone lets it through
    assert list(strict.iter_errors(isvc))


def test_tf_serving_deployment_and_service_validate_and_copy_from_s3() -> None:
    deployment, service = tf_serving(SPEC)
    check_core(deployment)
    check_core(service)
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == [
        "mc", "mirror", "--quiet", "store/tfmnist/jobs/tfjob-abc/model", "/models/mnist"
    ]  # fmt: skip
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["MC_HOST_store"].endswith("@minio-service.kubeflow:9000")
    assert env["MC_HOST_store"].startswith("http://")
    # Its log's tail becomes the termination message kfnb reports when the copy fails.
    assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in init["env"] if "valueFrom" in e}
    assert refs == {
        "AWS_ACCESS_KEY_ID": {"name": "minio-s3", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "minio-s3", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    (server,) = pod["containers"]
    assert "--model_base_path=/models/mnist" in server["args"]
    assert server["image"] == "tensorflow/serving:2.20.0"  # the same rule as KServe's
    assert {p["containerPort"] for p in server["ports"]} == {8500, 8501}
    assert {p["port"] for p in service["spec"]["ports"]} == {8500, 8501}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_no_manifest_holds_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    rendered = json.dumps([inference_service(SPEC), service_account(SPEC), *tf_serving(SPEC)])
    assert SECRET not in rendered and "AKIAEXAMPLEKEYID" not in rendered


def test_serve_dry_run_prints_what_a_cluster_gets(
    shell: Any, capsys: pytest.CaptureFixture[str], isvc_validators: list[Any]
) -> None:
    import yaml
    from IPython.core.error import UsageError

    from kfnb.serving.cluster import release_for
    from kfnb.serving.compat import kernel_tf_version

    shell.run_line_magic("config", "Kfnb.s3_secret = 'minio-s3'")
    shell.run_line_magic("config", "Kfnb.s3_endpoint = 'minio-service.kubeflow:9000'")
    line = "s3://tfmnist/jobs/a/model --dry-run --canary s3://tfmnist/jobs/b/model --percent 10"
    shell.run_line_magic("serve", line)
    out = capsys.readouterr().out
    release = release_for("s3://tfmnist/jobs/a/model")
    assert release == serving_release(kernel_tf_version(), "the exporter, taken to be this kernel,")
    # Which TF Serving loads the model and why, then what the Secret needs: YAML comments.
    notes = [line for line in out.splitlines() if line.startswith("# ")]
    assert notes[0] == f"# TF Serving {release.tag}: {release.why}"
    assert "the exporter, taken to be this kernel, exports with TensorFlow" in notes[0]
    assert notes[1].endswith(
        "kubectl -n default annotate secret minio-s3 --overwrite serving.kserve.io/s3-endpoint="
        "minio-service.kubeflow:9000 serving.kserve.io/s3-usehttps=1 "
        "serving.kserve.io/s3-region=us-east-1"
    )
    objects = list(yaml.safe_load_all(out))
    kinds = [o["kind"] for o in objects]
    assert kinds == ["ServiceAccount", "InferenceService", "InferenceService"]
    first, rollout = objects[1], objects[2]
    for isvc in (first, rollout):
        check_isvc(isvc_validators, isvc)
        assert isvc["spec"]["predictor"]["model"]["runtimeVersion"] == release.tag
    assert first["spec"]["predictor"]["model"]["storageUri"] == "s3://tfmnist/jobs/a/model"
    assert "canaryTrafficPercent" not in first["spec"]["predictor"]
    assert rollout["spec"]["predictor"]["model"]["storageUri"] == "s3://tfmnist/jobs/b/model"
    assert rollout["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert objects[0]["secrets"] == [{"name": "minio-s3"}]

    shell.run_line_magic("serve", "s3://tfmnist/jobs/a/model --dry-run --runtime tfserving")
    kinds = [o["kind"] for o in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds == ["Deployment", "Service"]

    for bad, message in {
        "nojob --dry-run": "a cluster serves jobs trained with s3:// storage or s3:// URLs",
        "s3://b/m --dry-run --percent 10": "--canary JOB and --percent P go together",
        "s3://b/m --dry-run --canary s3://b/n --percent 100": "give the canary's share",
        "s3://b/m --dry-run --runtime triton": "--runtime triton: use one of kserve, tfserving",
    }.items():
        with pytest.raises(UsageError, match=message):
            shell.run_line_magic("serve", bad)
