"""JobSpec renders TFJobs that the real CRD schema accepts, with the operator's fields."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from kfnb.spec import (
    CONTAINER_NAME,
    JobSpec,
    SpecError,
    configmap_key,
    generate_name,
    to_yaml,
    validate_name,
)
from tests.conftest import validate_tfjob


def container(manifest: dict[str, Any], kind: str) -> dict[str, Any]:
    containers = manifest["spec"]["tfReplicaSpecs"][kind]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


SHAPES = [
    {"workers": 1},
    {"workers": 2, "gpus": 1},
    {"workers": 4, "ps": 2, "chief": 1, "evaluator": 1, "gpus": 2, "cpu": "2", "memory": "4Gi"},
    {"workers": 0, "chief": 1, "restart_policy": "ExitCode", "backoff_limit": 3, "timeout": 600},
    {"workers": 2, "restart_policy": "OnFailure", "env": (("EPOCHS", "3"),), "ttl_seconds": 60},
]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_manifest_validates_against_the_tfjob_crd(
    tfjob_validators: list[Any], shape: dict[str, Any]
) -> None:
    spec = JobSpec(name="mnist", namespace="alice", code_files=("cell.py", "include/a.py"), **shape)
    manifest = spec.to_manifest()
    validate_tfjob(tfjob_validators, manifest)
    assert manifest["apiVersion"] == "kubeflow.org/v1" and manifest["kind"] == "TFJob"
    for kind, count in spec.replica_counts.items():
        replica = manifest["spec"]["tfReplicaSpecs"][kind]
        assert replica["replicas"] == count
        assert replica["restartPolicy"] == spec.restart_policy
        assert container(manifest, kind)["name"] == CONTAINER_NAME


def test_strict_schema_catches_a_misspelt_field(tfjob_validators: list[Any]) -> None:
    manifest = JobSpec(name="mnist").to_manifest()
    manifest["spec"]["tfReplicaSpecz"] = manifest["spec"].pop("tfReplicaSpecs")
    with pytest.raises(AssertionError):
        validate_tfjob(tfjob_validators, manifest)


def test_gpus_go_to_the_training_replicas_only() -> None:
    manifest = JobSpec(name="g", workers=2, ps=1, chief=1, evaluator=1, gpus=2).to_manifest()
    for kind in ("Chief", "Worker"):
        assert container(manifest, kind)["resources"]["limits"]["nvidia.com/gpu"] == 2
    for kind in ("PS", "Evaluator"):
        assert "resources" not in container(manifest, kind)


def test_replicas_with_gpus_are_told_their_request() -> None:
    """KFNB_GPUS lets the runtime say when TensorFlow sees none of the GPUs asked for."""
    manifest = JobSpec(name="g", workers=2, ps=1, gpus=2).to_manifest()
    env = {
        kind: {e["name"]: e["value"] for e in container(manifest, kind)["env"]}
        for kind in ("Worker", "PS")
    }
    assert env["Worker"]["KFNB_GPUS"] == "2"
    assert "KFNB_GPUS" not in env["PS"]
    cpu_only = JobSpec(name="c", workers=2).to_manifest()
    assert "KFNB_GPUS" not in {e["name"] for e in container(cpu_only, "Worker")["env"]}


def test_run_policy_and_cleanup() -> None:
    manifest = JobSpec(name="r", workers=2, ps=1, backoff_limit=4, timeout=90).to_manifest()
    run_policy = manifest["spec"]["runPolicy"]
    # Running, so parameter servers are stopped when the job ends.
    assert run_policy == {
        "cleanPodPolicy": "Running",
        "backoffLimit": 4,
        "activeDeadlineSeconds": 90,
    }


def test_legacy_keras_only_for_distributed_jobs() -> None:
    def env(spec: JobSpec) -> dict[str, str]:
        return {e["name"]: e["value"] for e in container(spec.to_manifest(), "Worker")["env"]}

    assert "TF_USE_LEGACY_KERAS" not in env(JobSpec(name="one"))
    assert env(JobSpec(name="two", workers=2))["TF_USE_LEGACY_KERAS"] == "1"
    assert "TF_USE_LEGACY_KERAS" not in env(JobSpec(name="off", workers=2, legacy_keras=False))
    # The user's --env wins, which is how a single job opts out.
    opted_out = JobSpec(name="opt", workers=2, env=(("TF_USE_LEGACY_KERAS", "0"),))
    assert env(opted_out)["TF_USE_LEGACY_KERAS"] == "0"


def test_distributed_follows_the_operator_rule() -> None:
    assert not JobSpec(name="a").distributed
    assert not JobSpec(name="b", workers=0, chief=1).distributed
    assert JobSpec(name="c", workers=1, evaluator=1).distributed
    assert JobSpec(name="d", workers=2).distributed


def test_code_volume_maps_configmap_keys_back_to_paths() -> None:
    files = ("cell.py", "include/model/mnist.py", "vendor/cloudpickle/__init__.py")
    manifest = JobSpec(name="v", code_files=files).to_manifest()
    volume = manifest["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["volumes"][0]
    items = volume["configMap"]["items"]
    assert [i["path"] for i in items] == list(files)
    keys = [i["key"] for i in items]
    assert len(set(keys)) == len(keys)
    assert all("/" not in k for k in keys)
    assert configmap_key(1, "include/model/mnist.py") == "f001-mnist.py"


@pytest.mark.parametrize("name", ["Mnist", "1mnist", "mn_ist", "mnist-", "", "a" * 60])
def test_bad_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(SpecError) as error:
        validate_name(name)
    assert "\n" not in str(error.value)


def test_generated_names_are_valid_and_unique() -> None:
    names = {generate_name() for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert validate_name(name) == name


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"workers": 0}, "at least one worker"),
        ({"workers": -1}, ">= 0"),
        ({"chief": 2}, "at most one chief"),
        ({"ps": 1, "workers": 0, "chief": 1}, "need workers"),
        ({"restart_policy": "Sometimes"}, "not one of"),
        ({"backoff_limit": -1}, "positive"),
        ({"timeout": 0}, "positive"),
        ({"cpu": "two"}, "Kubernetes quantity"),
        ({"memory": "4 GB"}, "Kubernetes quantity"),
        ({"env": (("1BAD", "x"),)}, "not a valid variable name"),
        ({"env": (("AWS_SECRET_ACCESS_KEY", "x"),)}, "looks like a secret"),
    ],
)
def test_bad_specs_say_what_to_do(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError, match=words) as error:
        JobSpec(name="bad", **fields)
    assert "\n" not in str(error.value)


def test_yaml_round_trips() -> None:
    manifest = JobSpec(name="y", workers=2, gpus=1).to_manifest()
    assert yaml.safe_load(to_yaml(manifest)) == manifest


# --env values are written into the manifest: secrets are refused, by name or by value.
SECRET_ENV = [
    ("WANDB_API_KEY", "abc123"),
    ("API_KEY", "abc123"),
    ("AWS_SECRET_ACCESS_KEY", "abc123"),
    ("AWS_ACCESS_KEY_ID", "AKIA0000"),
    ("DB_PASS", "hunter2"),
    ("PGPASSWORD", "hunter2"),
    ("MYSQL_PASSWORD", "hunter2"),
    ("GITHUB_PAT", "ghp_0000"),
    ("HF_TOKEN", "hf_0000"),
    ("SLACK_BOT_TOKEN", "xoxb-0000"),
    ("OAUTH_CLIENT_SECRET", "abc"),
    ("GOOGLE_APPLICATION_CREDENTIALS", "/home/me/key.json"),
    ("DATABASE_URL", "postgres://u:p@host:5432/db"),
    ("EXTRA_ARGS", "--index https://__token__:pypi-0000@example.com/simple"),
    ("REPO", "https://ghp_0000@github.com/me/repo.git"),
]
HARMLESS_ENV = [
    ("TOKENIZERS_PARALLELISM", "false"),  # Hugging Face tokenizers, set by many notebooks
    ("KEYBOARD", "us"),
    ("PASSES", "3"),
    ("BYPASS_CACHE", "1"),
    ("COMPASS_HEADING", "90"),
    # Where a secret lives is no secret (the *_FILE convention of official images).
    ("POSTGRES_PASSWORD_FILE", "/run/secrets/db"),
    ("SSH_KEY_PATH", "/home/me/.ssh/id_ed25519"),
    ("DATABASE_URL", "postgres://host:5432/db"),
    ("REPO", "ssh://git@github.com/me/repo.git"),  # a user name, no password
    ("TF_CPP_MIN_LOG_LEVEL", "2"),
]


@pytest.mark.parametrize(("key", "value"), SECRET_ENV)
def test_env_that_looks_like_a_secret_is_refused_without_echoing_it(key: str, value: str) -> None:
    with pytest.raises(SpecError, match=f"{key} looks like a secret") as error:
        JobSpec(name="leaky", env=((key, value),))
    message = str(error.value)
    assert "\n" not in message and value not in message
    # It says how to pass one instead, locally and on a cluster.
    assert "os.environ" in message and "secretKeyRef" in message


@pytest.mark.parametrize(("key", "value"), HARMLESS_ENV)
def test_common_harmless_env_is_not_taken_for_a_secret(key: str, value: str) -> None:
    manifest = JobSpec(name="plain", env=((key, value),)).to_manifest()
    assert {"name": key, "value": value} in container(manifest, "Worker")["env"]
