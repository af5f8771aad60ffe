"""Sweeps on a cluster: the Katib Experiment kfnb renders, validated against Katib's own
schema (as given and strict), and created against the FAKE API server, whose fake Katib
controller makes Trials (and their TFJobs) and observations. Not Katib, not Kubernetes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kfnb.sweeps import SweepError, SweepFailed, SweepSpec, start_sweep
from kfnb.sweeps.katib import INJECTION_LABEL, render_experiment
from tests.conftest import schema_errors, schema_validators

CELL = "print(tfjob.params['lr'], tfjob.params['batch'])\n"
STORE = "s3://bucket/runs"


def sweep_spec(**counts: Any) -> SweepSpec:
    return SweepSpec.build(
        ["lr=loguniform(1e-4, 1e-2)", "batch=choice(32, 64)", "layers=int(1, 3)"],
        "maximize validation/epoch_accuracy",
        **{"trials": 6, "parallel": 2, "algorithm": "tpe", **counts},
    )


def env_of(tfjob: dict[str, Any]) -> dict[str, str]:
    container = tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_the_experiment_validates_and_its_trials_are_the_cells_tfjob() -> None:
    experiment = render_experiment(
        CELL,
        sweep_spec(max_failed=2, goal=0.99, early_stopping="medianstop"),
        name="sw",
        workers=2,
        storage=STORE,
        namespace="alice",
    )
    assert schema_errors(experiment) == []  # Katib's schema, as given and strict
    spec = experiment["spec"]
    template = spec["trialTemplate"]
    trial = template["trialSpec"]
    assert trial["kind"] == "TFJob" and "name" not in trial["metadata"]  # Katib names trials
    for validator in schema_validators("TFJob"):  # the trial template is a valid TFJob
        assert not list(validator.iter_errors({**trial, "metadata": {"name": "sw-abc"}}))
    assert template["primaryContainerName"] == "tensorflow"
    assert (
        template["successCondition"] == 'status.conditions.#(type=="Succeeded")#|#(status=="True")#'
    )
    assert template["failureCondition"] == 'status.conditions.#(type=="Failed")#|#(status=="True")#'
    assert template["primaryPodLabels"] == {"training.kubeflow.org/job-role": "master"}
    references = {p["name"]: p["reference"] for p in template["trialParameters"]}
    assert references == {"lr": "lr", "batch": "batch", "layers": "layers",
                          "kfnbTrialName": "${trialSpec.Name}"}  # fmt: skip
    env = env_of(trial)
    assert env["KFNB_PARAM_lr"] == "${trialParameters.lr}"
    assert env["KFNB_PARAM_batch"] == "${trialParameters.batch}"
    assert env["KFNB_JOB_NAME"] == "${trialParameters.kfnbTrialName}"
    assert env["KFNB_STORE"] == f"{STORE}/${{trialParameters.kfnbTrialName}}"
    assert env["KFNB_ARTIFACTS"] == "/tmp/kfnb-trial"
    assert trial["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2
    text = json.dumps(experiment)
    used = {part.split("}")[0] for part in text.split("${trialParameters.")[1:]}
    assert used <= set(references)  # every reference is a declared trial parameter
    assert spec["metricsCollectorSpec"] == {
        "collector": {"kind": "TensorFlowEvent"},
        "source": {"fileSystemPath": {"path": "/tmp/kfnb-trial/tensorboard", "kind": "Directory"}},
    }
    assert spec["objective"] == {
        "type": "maximize",
        "objectiveMetricName": "validation/epoch_accuracy",
        "metricStrategies": [{"name": "validation/epoch_accuracy", "value": "latest"}],
        "goal": 0.99,
    }
    assert spec["parameters"] == [
        {"name": "lr", "parameterType": "double",
         "feasibleSpace": {"min": "0.0001", "max": "0.01", "distribution": "logUniform"}},
        {"name": "batch", "parameterType": "categorical", "feasibleSpace": {"list": ["32", "64"]}},
        {"name": "layers", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "3"}},
    ]  # fmt: skip
    assert (spec["parallelTrialCount"], spec["maxTrialCount"], spec["maxFailedTrialCount"]) == (
        2,
        6,
        2,
    )
    assert spec["algorithm"] == {"algorithmName": "tpe"}
    assert spec["earlyStopping"] == {"algorithmName": "medianstop"}


def test_reported_metrics_use_the_stdout_collector_and_events_need_s3() -> None:
    reported = render_experiment(
        "tfjob.report(accuracy=0.9)\n", sweep_spec(), name="sw", storage=STORE
    )
    assert reported["spec"]["metricsCollectorSpec"] == {"collector": {"kind": "StdOut"}}
    assert schema_errors(reported) == []
    with pytest.raises(SweepError, match="needs an s3:// --storage"):
        render_experiment(CELL, sweep_spec(), name="sw", storage="/data/jobs")
    with pytest.raises(SweepError, match="hyperband on Katib needs a resource parameter"):
        render_experiment(CELL, sweep_spec(algorithm="hyperband"), name="sw", storage=STORE)


def test_dry_run_prints_the_experiment_without_a_cluster(shell: Any, capsys: Any) -> None:
    line = (
        "--backend kubernetes --dry-run --name sw --storage s3://bucket/runs "
        '--sweep "lr=uniform(0.1, 0.2)" --objective "minimize loss" --trials 4'
    )
    assert shell.run_cell_magic("tfjob", line, CELL.replace(", tfjob.params['batch']", "")) is None
    out = capsys.readouterr().out
    assert "kind: Experiment" in out and "kind: TFJob" in out
    assert "${trialParameters.lr}" in out and "maxTrialCount: 4" in out


def test_a_sweep_on_the_fake_cluster(fake_kube: Any, capsys: Any) -> None:
    from tests.fake_kube import CORE, TFJOBS

    fake_kube.katib_results = [0.5, None, 0.9]
    sweep = start_sweep(CELL, sweep_spec(trials=3), name="sw", backend="kubernetes", storage=STORE)
    said = capsys.readouterr().err
    assert f"namespace alice lacks the label {INJECTION_LABEL}=enabled" in said
    created = fake_kube.get("apis/kubeflow.org/v1beta1", "experiments", "alice", "sw")
    assert (
        created is not None
        and created["spec"]["trialTemplate"]["primaryContainerName"] == "tensorflow"
    )
    configmap = fake_kube.get(CORE, "configmaps", "alice", "sw-code")
    assert configmap["metadata"]["ownerReferences"][0]["kind"] == "Experiment"
    status = sweep.wait(timeout=30)
    assert status.phase == "Succeeded" and status.reason == "ExperimentMaxTrialsReached"
    assert [t.state for t in status.trials] == ["Succeeded", "Failed", "Succeeded"]
    assert [t.objective for t in status.trials] == [0.5, None, 0.9]
    assert status.trials[0].params == {"lr": 0.0001, "batch": 32, "layers": 1}
    best = sweep.best
    assert best is not None and best.objective == 0.9 and best.name == status.trials[2].name
    assert best.params == {"lr": 0.0001, "batch": 32, "layers": 1}
    # The fake controller's TFJob for that trial: the template with its values substituted.
    tfjob = fake_kube.get(*TFJOBS, "alice", best.name)
    env = env_of(tfjob)
    assert env["KFNB_PARAM_batch"] == "32" and env["KFNB_JOB_NAME"] == best.name
    assert env["KFNB_STORE"] == f"{STORE}/{best.name}"
    assert best.job.backend.name == "kubernetes"  # a Job handle like any other
    assert "Sweep sw (kubernetes): Succeeded" in sweep.summary()
    from kfnb.sweeps.record import load_sweep

    assert sweep.delete(purge=True).phase == "Succeeded"
    assert fake_kube.get("apis/kubeflow.org/v1beta1", "experiments", "alice", "sw") is None
    assert fake_kube.get(*TFJOBS, "alice", best.name) is None  # its trials' jobs purged
    assert load_sweep("sw") is None


def test_failed_trials_past_max_failed_fail_the_sweep(fake_kube: Any) -> None:
    fake_kube.katib_results = [None, None, 0.9]
    sweep = start_sweep(
        CELL, sweep_spec(trials=3, max_failed=1), name="sw", backend="kubernetes", storage=STORE
    )
    with pytest.raises(SweepFailed) as caught:
        sweep.wait(timeout=30)
    assert caught.value.status.reason == "ExperimentMaxFailedTrialsReached"
    assert "Trial has failed" in caught.value.status.first_failure


def test_labelled_namespace_is_not_warned_of(fake_kube: Any, capsys: Any) -> None:
    from tests.fake_kube import CORE

    def label(namespace: dict[str, Any]) -> None:
        namespace["metadata"]["labels"][INJECTION_LABEL] = "enabled"

    fake_kube.update(CORE, "namespaces", "", "alice", label)
    fake_kube.katib_results = [0.1]
    start_sweep(
        CELL, sweep_spec(trials=1, parallel=1), name="sw", backend="kubernetes", storage=STORE
    )
    assert INJECTION_LABEL not in capsys.readouterr().err


def test_no_katib_on_the_cluster_is_one_line(fake_kube: Any) -> None:
    fake_kube.katib = False
    with pytest.raises(SweepError) as caught:
        start_sweep(CELL, sweep_spec(), name="sw", backend="kubernetes", storage=STORE)
    assert "this cluster has no Katib" in str(caught.value) and "\n" not in str(caught.value)
    from kfnb.sweeps.record import load_sweep

    assert load_sweep("sw") is None  # nothing recorded for a sweep that never started
