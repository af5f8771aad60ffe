"""Pipelines from cells, run locally by the detached runner with Argo's DAG semantics.

Trivial cells (no TensorFlow): the steps are real local jobs, so each test is seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from kfnb.job import JobFailed
from kfnb.pipelines.run import PipelineFailed, PipelineRun
from kfnb.pipelines.when import WhenError, parse_when


def step(ip: InteractiveShell, line: str, cell: str) -> Any:
    return ip.run_cell_magic("step", line, cell)


def pipeline(ip: InteractiveShell, line: str) -> Any:
    return ip.run_line_magic("kfnb", f"pipeline {line}")


def usage_error(call: Any, *args: Any) -> str:
    with pytest.raises(UsageError) as error:
        call(*args)
    message = str(error.value)
    assert "\n" not in message.strip(), message
    return message


def test_when_is_govaluate_without_eval() -> None:
    when = parse_when("evaluate.accuracy >= 0.97 && (train.loss < 0.1 || !(ok-step.done == true))")
    outputs = {"evaluate": {"accuracy": 0.98}, "train": {"loss": 0.5}, "ok-step": {"done": False}}
    assert when.evaluate(outputs) is True
    assert when.evaluate({**outputs, "evaluate": {"accuracy": 0.5}}) is False
    assert parse_when("a.label == 'cat'").evaluate({"a": {"label": "cat"}})
    assert "{{tasks.evaluate.outputs.parameters.accuracy}} >= 0.97" in when.argo()
    for bad in ("evaluate.accuracy >=", "__import__('os').system('x')", "a.b + 1 > 2", "1 < 2"):
        with pytest.raises(WhenError):
            parse_when(bad)
    with pytest.raises(WhenError, match="wrote no output 'accuracy'"):
        parse_when("evaluate.accuracy > 1").evaluate({"evaluate": {}})


def test_three_steps_run_with_outputs_inputs_parameters_and_when(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_cell("epochs = 3\nthreshold = 0.5")
    step(shell, "train --pipeline p1 --record-only",
         "tfjob.output('accuracy', epochs / 10)\nprint('trained', epochs)\n")  # fmt: skip
    step(shell, "evaluate --pipeline p1 --after train --record-only",
         "acc = tfjob.inputs['train'].outputs['accuracy']\ntfjob.output('accuracy', acc)\n"
         "tfjob.output('passed', acc >= threshold)\n")  # fmt: skip
    step(shell, "publish --pipeline p1 --when 'evaluate.passed == true' --record-only",
         "print('published')\n")  # fmt: skip
    step(shell, "report --pipeline p1 --after train --record-only", "print('report')\n")
    capsys.readouterr()
    pipeline(shell, "show p1")
    shown = capsys.readouterr().out
    assert "publish" in shown and "evaluate" in shown and "epochs=3" in shown

    run = pipeline(shell, "run p1 -p epochs=7 --wait")
    status = run.status()
    assert status.phase == "Succeeded", status
    assert status.steps["train"].outputs == {"accuracy": 0.7}
    assert status.steps["evaluate"].outputs == {"accuracy": 0.7, "passed": True}
    assert status.steps["publish"].phase == "Succeeded"
    assert status.parameters["epochs"] == 7
    # the independent steps ran side by side: report started before evaluate ended
    assert status.steps["report"].started < status.steps["evaluate"].finished
    capsys.readouterr()
    pipeline(shell, f"logs {run.name} train")
    assert "trained 7" in capsys.readouterr().out

    low = pipeline(shell, "run p1 -p epochs=2 --wait --parallelism 1")
    assert low.status().steps["publish"].phase == "Skipped"
    assert low.status().phase == "Succeeded"
    pipeline(shell, f"status {low.name}")
    assert "Skipped" in capsys.readouterr().out


def test_a_failed_step_fails_the_run_with_its_traceback_after_retries(
    shell: InteractiveShell, tmp_path: Any
) -> None:
    counter = tmp_path / "tries"
    shell.user_ns["counter"] = str(counter)
    step(shell, "flaky --pipeline p2 --retry 1 --record-only",
         "import pathlib\np = pathlib.Path(counter)\np.write_text(p.read_text() + 'x' "
         "if p.exists() else 'x')\nraise ValueError('bad data in ' + 'shard 3')\n")  # fmt: skip
    step(shell, "after --pipeline p2 --after flaky --record-only", "print('never')\n")
    run = pipeline(shell, "run p2")
    with pytest.raises(PipelineFailed) as failed:
        run.wait(timeout=60)
    assert counter.read_text() == "xx"  # one retry, as retryStrategy.limit: 1
    status = failed.value.status
    assert "step flaky failed" in status.message
    assert status.steps["after"].phase == "Omitted" and not status.steps["after"].job
    rendered = "\n".join(failed.value._render_traceback_())
    assert "ValueError: bad data in shard 3" in rendered and "step flaky" in rendered


def test_bad_pipelines_are_one_line_errors(shell: InteractiveShell) -> None:
    step(shell, "a --pipeline p3 --after b --record-only", "tfjob.output('x', 1)\n")
    step(shell, "b --pipeline p3 --after a --record-only", "print(1)\n")
    assert "cycle" in usage_error(pipeline, shell, "run p3")
    step(shell, "b --pipeline p3 --after nope --record-only", "print(1)\n")
    assert "'nope', which is not a step" in usage_error(pipeline, shell, "run p3")
    step(shell, "b --pipeline p3 --when 'a.y > 1' --record-only", "print(1)\n")
    assert "writes no output 'y'" in usage_error(pipeline, shell, "run p3")
    step(shell, "b --pipeline p3 --when 'a.x > 0' --record-only", "print(1)\n")
    assert "cycle" in usage_error(pipeline, shell, "run p3")  # --when reads a: b after a
    assert "does not parse" in usage_error(step, shell, "c --pipeline p3 --when 'a.x >'", "1\n")
    step(shell, "a --pipeline p3 --record-only", "tfjob.output('x', 1)\n")
    assert "no step reads 'lr'" in usage_error(pipeline, shell, "run p3 -p lr=0.1")
    assert "no pipeline named 'p9'" in usage_error(pipeline, shell, "run p9")
    assert "go with --step NAME" in usage_error(shell.run_cell_magic, "tfjob", "--after a", "1\n")


def test_pipeline_and_run_names_that_are_paths_touch_nothing(
    shell: InteractiveShell, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"  # looks like a run directory, and like a pipeline's
    victim.mkdir()
    status = {"name": "r", "pipeline": "p", "backend": "local", "phase": "Succeeded"}
    (victim / "status.json").write_text(json.dumps(status))
    (victim / "a.json").write_text('{"record_version": 1, "name": "a"}')
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for name in (str(victim), "../../victim"):
        for line in (f"delete {name}", f"status {name}", f"attach {name}", f"show {name}",
                     f"run {name}"):  # fmt: skip
            assert "DNS-1035" in usage_error(pipeline, shell, line)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_run_goes_on_when_the_kernel_that_started_it_exits(
    shell: InteractiveShell, tmp_path: Any
) -> None:
    go = tmp_path / "go"
    shell.user_ns["go"] = str(go)
    step(shell, "wait --pipeline p4 --record-only",
         "import pathlib, time\nwhile not pathlib.Path(go).exists():\n    time.sleep(0.05)\n"
         "tfjob.output('done', 1)\n")  # fmt: skip
    # another kernel starts the run and exits at once
    code = "from kfnb.pipelines.run import start_run; print(start_run('p4').name)"
    name = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    time.sleep(0.5)
    run = PipelineRun.attach(name)
    assert not run.status().done  # the runner waits for `go`, its kernel gone
    go.touch()
    assert run.wait(timeout=60).steps["wait"].outputs == {"done": 1}


def test_a_step_cell_runs_now_with_its_dependencies_latest_outputs(
    shell: InteractiveShell,
) -> None:
    job = step(shell, "train --pipeline p5 --wait", "tfjob.output('loss', 0.25)\n")
    assert job.status().phase == "Succeeded"
    later = step(
        shell,
        "evaluate --pipeline p5 --after train --wait",
        "i = tfjob.inputs['train']\nprint('got', i.outputs['loss'], i.job, bool(i.model_dir))\n",
    )
    assert f"got 0.25 {job.name} False" in later.logs()
    with pytest.raises(JobFailed) as failed:
        step(shell, "bad --pipeline p5 --wait", "tfjob.output('no good', 1)\n")
    assert "output name 'no good' is not an identifier" in (failed.value.traceback or "")


def test_export_renders_a_valid_argo_workflow_and_cron_workflow(
    shell: InteractiveShell, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from tests.conftest import schema_errors, schema_validators

    shell.run_cell("epochs = 3")
    tfjob_cell = "tfjob.output('loss', 0.1)\nprint(epochs)\n"
    shell.run_cell_magic("tfjob", "--workers 2 --step train --pipeline mnist --record-only",
                         tfjob_cell)  # fmt: skip
    step(shell, "evaluate --pipeline mnist --after train --retry 2 --record-only",
         "tfjob.output('accuracy', 0.98)\n")  # fmt: skip
    shell.run_line_magic(
        "serve", "train --name mnist --step publish --pipeline mnist "
        "--when 'evaluate.accuracy >= 0.97' --record-only",
    )  # fmt: skip
    step(shell, "report --pipeline mnist --after evaluate --record-only", "print(1)\n")
    out = tmp_path / "mnist.yaml"
    pipeline(shell, f"export mnist -o {out} --storage s3://bucket/jobs -p epochs=20 "
             "--service-account pipeline-runner")  # fmt: skip
    workflow = yaml.safe_load(out.read_text())
    assert schema_errors(workflow) == []
    spec = workflow["spec"]
    assert spec["arguments"]["parameters"] == [{"name": "epochs", "value": "20"}]
    assert spec["serviceAccountName"] == "pipeline-runner"
    tasks = {t["name"]: t for t in spec["templates"][0]["dag"]["tasks"]}
    assert tasks["publish"]["when"] == "{{tasks.evaluate.outputs.parameters.accuracy}} >= 0.97"
    assert "(train.Succeeded || train.Skipped)" in tasks["publish"]["depends"]
    templates = {t["name"]: t for t in spec["templates"]}
    train = templates["train"]["resource"]
    assert train["action"] == "create" and train["setOwnerReference"] is True
    assert train["successCondition"] == (
        "status.replicaStatuses.Worker.succeeded > 0,status.completionTime"
    )
    tfjob = yaml.safe_load(train["manifest"])
    assert tfjob["kind"] == "TFJob" and tfjob["metadata"]["name"] == "{{workflow.name}}-train"
    for validator in schema_validators("TFJob"):
        assert not list(validator.iter_errors(tfjob))
    assert tfjob["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2
    evaluate = templates["evaluate"]
    assert evaluate["retryStrategy"] == {"limit": "2"}
    assert evaluate["outputs"]["parameters"][0]["valueFrom"]["path"].endswith("/accuracy")

    def inputs(template: dict[str, Any]) -> dict[str, Any]:
        """KFNB_INPUTS as the runtime gets it once Argo has substituted the names."""
        env = {e["name"]: e.get("value") for e in template["container"]["env"]}
        text = env["KFNB_INPUTS"].replace("{{workflow.name}}", "wf-1")
        return json.loads(text.replace("{{tasks.evaluate.outputs.parameters.accuracy}}", "0.98"))

    assert inputs(evaluate)["train"] == {
        "job": "wf-1-train", "outputs": None,
        "model_dir": "s3://bucket/jobs/wf-1-train/model",
        "status": "s3://bucket/jobs/wf-1-train/status/worker-0.json",
    }  # fmt: skip
    assert inputs(templates["report"])["evaluate"]["outputs"] == {"accuracy": 0.98}
    code = yaml.safe_load(templates["code"]["resource"]["manifest"])
    assert code["kind"] == "ConfigMap" and code["metadata"]["name"] == "{{workflow.name}}-code"
    publish = templates["publish"]["resource"]
    assert publish["successCondition"].endswith("activeModelState == Loaded")
    isvc = yaml.safe_load(templates["publish"]["resource"]["manifest"])
    assert isvc["kind"] == "InferenceService"
    assert "{{workflow.name}}-train/model" in json.dumps(isvc)

    pipeline(shell, f"export mnist -o {out} --storage s3://bucket/jobs --schedule '0 3 * * *'")
    cron = yaml.safe_load(out.read_text())
    assert cron["kind"] == "CronWorkflow" and cron["spec"]["schedules"] == ["0 3 * * *"]
    cron_validators = schema_validators("CronWorkflow")
    for validator in cron_validators:
        assert not [e.message for e in validator.iter_errors(cron)]


def _cluster_pipeline(shell: InteractiveShell) -> None:
    shell.run_cell_magic("tfjob", "--workers 2 --step train --pipeline kp --record-only",
                         "tfjob.output('loss', 0.1)\n")  # fmt: skip
    step(shell, "evaluate --pipeline kp --after train --record-only",
         "tfjob.output('accuracy', 0.98)\n")  # fmt: skip
    step(shell, "publish --pipeline kp --when 'evaluate.accuracy >= 0.97' --record-only",
         "print('published')\n")  # fmt: skip


def test_a_run_on_the_cluster_is_an_argo_workflow_against_the_fake(
    shell: InteractiveShell, fake_kube: Any
) -> None:
    """Against the fake API server, whose Argo controller is scripted (a fake, not Argo)."""
    from tests.conftest import schema_errors
    from tests.fake_kube import WORKFLOWS

    _cluster_pipeline(shell)
    fake_kube.workflow_script = {"evaluate": ("Succeeded", {"accuracy": "0.98"}, "")}
    run = pipeline(shell, "run kp --backend kubernetes --wait")
    workflow = fake_kube.get(*WORKFLOWS, "alice", run.name)
    submitted = {k: v for k, v in workflow.items() if k != "status"}
    submitted["metadata"] = {
        k: v for k, v in workflow["metadata"].items()
        if k in ("name", "namespace", "labels")
    }  # fmt: skip
    assert schema_errors(submitted) == []
    status = run.status()
    assert status.phase == "Succeeded" and status.backend == "kubernetes"
    assert status.steps["evaluate"].outputs == {"accuracy": 0.98}
    assert status.steps["publish"].phase == "Succeeded"

    fake_kube.workflow_script = {"evaluate": ("Succeeded", {"accuracy": "0.5"}, "")}
    low = pipeline(shell, "run kp --backend kubernetes --wait")
    assert low.status().steps["publish"].phase == "Skipped"


def test_a_tfjob_step_on_the_fake_is_decided_by_its_rendered_conditions(
    shell: InteractiveShell, fake_kube: Any
) -> None:
    """The fake Argo creates the train step's TFJob (owned by the Workflow) and follows the
    rendered success/failure conditions, parsed as label selectors, as the fake Training
    Operator counts replicaStatuses; a script saying otherwise is not read for it."""
    from tests.fake_kube import TFJOBS, WORKFLOWS, ReplicaScript

    _cluster_pipeline(shell)
    fake_kube.workflow_script = {
        "train": ("Failed", {}, "the script is not asked about resource steps"),
        "evaluate": ("Succeeded", {"accuracy": "0.98"}, ""),
    }
    run = pipeline(shell, "run kp --backend kubernetes --wait")
    assert run.status().phase == "Succeeded"
    assert run.status().steps["publish"].phase == "Succeeded"
    workflow = fake_kube.get(*WORKFLOWS, "alice", run.name)
    tfjob = fake_kube.get(*TFJOBS, "alice", f"{run.name}-train")
    assert tfjob["metadata"]["ownerReferences"][0]["uid"] == workflow["metadata"]["uid"]
    assert tfjob["status"]["replicaStatuses"] == {"Worker": {"succeeded": 2}}
    # The train node ended no earlier than the TFJob it waited for.
    nodes = {n["displayName"]: n for n in workflow["status"]["nodes"].values()}
    assert nodes["train"]["finishedAt"] >= tfjob["status"]["completionTime"]

    fake_kube.script = lambda job, replica: ReplicaScript(
        ["boom"], exit_code=1 if replica == "worker-0" else 0
    )
    failing = pipeline(shell, "run kp --backend kubernetes")
    with pytest.raises(
        PipelineFailed,
        match=r"step train failed: failure condition 'status.conditions.2.type==Failed'",
    ):
        failing.wait(timeout=30)
    assert failing.status().steps["evaluate"].phase == "Pending"  # never started
    failed = fake_kube.get(*TFJOBS, "alice", f"{failing.name}-train")["status"]
    assert failed["replicaStatuses"]["Worker"] == {"succeeded": 1, "failed": 1}


def test_the_rendered_conditions_follow_how_the_operator_ends_a_tfjob() -> None:
    """Read as the fake reads them (as Argo's executor does): as the Training Operator ends
    a job without a chief on worker 0, a worker 1 that ended first is no success; a pod
    retried under ExitCode is no failure; a job failed past its deadline is one."""
    from kfnb.pipelines.argo import _tfjob_conditions
    from tests.fake_kube import _requirement_matches, _selector

    manifest = {"spec": {"tfReplicaSpecs": {"Worker": {"replicas": 2}}}}
    success, failure = (_selector(c) for c in _tfjob_conditions(manifest))

    def decided(status: dict[str, Any]) -> tuple[bool, bool]:
        job = {"status": status}
        return (all(_requirement_matches(r, job) for r in success),
                any(_requirement_matches(r, job) for r in failure))  # fmt: skip

    assert decided({"replicaStatuses": {"Worker": {"active": 1, "succeeded": 1}}}) == (False, False)
    ended = {
        "replicaStatuses": {"Worker": {"succeeded": 2}},
        "completionTime": "2026-01-01T00:00:00Z",
    }
    assert decided(ended) == (True, False)
    # Under restartPolicy ExitCode, a retried pod counts as failed while the job restarts.
    restarting = [{"type": "Created"}, {"type": "Restarting"}]
    counted = {"replicaStatuses": {"Worker": {"failed": 1}}, "conditions": restarting}
    assert decided(counted) == (False, False)
    # Past activeDeadlineSeconds: Failed, with no failed pod counted.
    deadline = [{"type": "Created"}, {"type": "Suspended"}, {"type": "Running"}]
    deadline.append({"type": "Failed", "status": "True", "reason": "DeadlineExceeded"})
    expired = {"replicaStatuses": {"Worker": {}}, "conditions": deadline, "completionTime": "x"}
    assert decided(expired) == (False, True)
    with pytest.raises(ValueError, match="label key"):
        _selector("status.conditions.#.type in (Succeeded)")


def test_cluster_faults_are_one_line(shell: InteractiveShell, fake_kube: Any) -> None:
    _cluster_pipeline(shell)
    fake_kube.argo = False
    assert (
        "no Argo Workflow resource (workflows.argoproj.io): install Argo Workflows"
        in usage_error(pipeline, shell, "run kp --backend kubernetes")
    )
    fake_kube.argo = True
    fake_kube.deny = {("create", "argoproj.io", "workflows")}
    message = usage_error(pipeline, shell, "run kp --backend kubernetes")
    assert "may not create workflows.argoproj.io" in message and "deploy/rbac.yaml" in message
    # seed 000's 403, when the account may not even ask what it may do
    fake_kube.legacy_forbidden = True
    fake_kube.deny.add(("create", "authorization.k8s.io", "selfsubjectaccessreviews"))
    message = usage_error(pipeline, shell, "run kp --backend kubernetes")
    assert "default-editor may not create workflows.argoproj.io in namespace alice" in message
    assert "deploy/rbac.yaml" in message


def test_the_role_grants_what_pipelines_need(fake_kube: Any) -> None:
    from pathlib import Path

    import yaml

    from kfnb.pipelines.cluster import EXECUTOR_NEEDED, PIPELINE_NEEDED

    role = next(yaml.safe_load_all(Path("deploy/rbac.yaml").read_text()))
    fake_kube.rules = role["rules"]
    for verb, group, resource in PIPELINE_NEEDED + EXECUTOR_NEEDED:
        assert fake_kube.allows(verb, group, resource, "alice"), (verb, resource)


def test_pipeline_view_draws_the_dag_and_opens_a_steps_job_view(
    shell: InteractiveShell,
) -> None:
    import re

    from kfnb.pipelines.run_status import RunStatus, StepState
    from kfnb.widgets.job_view import JobView
    from kfnb.widgets.pipeline_svg import svg_dag
    from kfnb.widgets.pipeline_view import PipelineView

    drawn = svg_dag(
        RunStatus("r", "p", "local", steps={
            "a<b": StepState("Succeeded", started=0.0, finished=12.0),
            "c": StepState("Skipped"),
            "d": StepState("Running", started=1.0),
        }, deps={"a<b": [], "c": ["a<b"], "d": ["a<b", "c"]})
    )  # fmt: skip
    assert drawn.count('class="kfnb-step"') == 3 and drawn.count('class="kfnb-edge"') == 3
    assert "a&lt;b" in drawn and "a<b" not in drawn and "Succeeded · 12s" in drawn
    xs = {m[0]: int(m[1]) for m in re.findall(r'data-step="([^"]+)".*?<rect x="(\d+)"', drawn)}
    assert xs["a&lt;b"] < xs["c"] < xs["d"]  # columns by depth, as one sketches a DAG

    step(shell, "one --pipeline pv --record-only", "print('hello from one')\n")
    step(shell, "two --pipeline pv --after one --record-only", "tfjob.output('n', 2)\n")
    run = pipeline(shell, "run pv")
    view = PipelineView(run, interval=0.1)
    run.wait(timeout=60)
    deadline = time.monotonic() + 10
    while "Succeeded" not in view.header.value and time.monotonic() < deadline:
        time.sleep(0.1)
    assert 'data-phase="Succeeded"' in view.dag.value and "kfnb-edge" in view.dag.value
    view.refresh()
    assert list(view.steps.options) == ["one", "two"]
    view.steps.value = "one"
    assert isinstance(view.job_view, JobView) and view.job_view.job.name == f"{run.name}-one"
    view.close()


def test_a_step_renamed_between_runs(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    step(shell, "first --pipeline p6 --record-only", "tfjob.output('x', 1)\n")
    step(shell, "second --pipeline p6 --after first --record-only", "print(2)\n")
    capsys.readouterr()
    step(shell, "one --pipeline p6 --record-only", "tfjob.output('x', 1)\n")  # renamed
    said = capsys.readouterr().out
    assert "It was step first (the same cell)" in said and "--after one" in said
    message = usage_error(pipeline, shell, "run p6")
    assert "step second runs after 'first', which is not a step" in message
    step(shell, "second --pipeline p6 --after one --record-only", "print(2)\n")
    assert pipeline(shell, "run p6 --wait").status().phase == "Succeeded"


def test_a_serve_step_records_what_serve_takes(shell: InteractiveShell) -> None:
    import inspect

    from kfnb.api import serve
    from kfnb.pipelines.steps import load_steps

    step(shell, "train --pipeline p7 --record-only", "print(1)\n")
    shell.run_line_magic("serve", "train --name m7 --port 0 --step publish --pipeline p7 "
                                  "--record-only")  # fmt: skip
    publish = load_steps("p7")["publish"]
    assert publish.kind == "serve" and publish.dependencies(load_steps("p7")) == ("train",)
    assert publish.options["name"] == "m7"
    inspect.signature(serve).bind(publish.source, **publish.options)  # what the runner calls


def test_the_runtime_reads_a_tfjob_steps_outputs_from_its_status(tmp_path: Any) -> None:
    from kfnb.runtime import StepInput

    status = tmp_path / "worker-0.json"
    status.write_text(json.dumps({"exit_code": 0, "outputs": {"loss": 0.25}}))
    fetched = []
    given = StepInput("train", {"job": "wf-train", "outputs": None, "status": "s3://b/k"},
                      lambda url: fetched.append(url) or str(status))  # fmt: skip
    assert given.outputs == {"loss": 0.25} and fetched == ["s3://b/k"]
    assert StepInput("a", {"outputs": {"x": 1}}).outputs == {"x": 1}


def test_a_serve_step_on_the_fake_is_decided_by_the_inference_services_model_state(
    shell: InteractiveShell, fake_kube: Any
) -> None:
    """The fake Argo applies the publish step's InferenceService; the fake KServe loads
    the model (the step succeeds on activeModelState Loaded) or cannot fetch it (the
    step fails on targetModelState FailedToLoad)."""
    from tests.fake_kube import ISVCS

    shell.run_line_magic("config", "Kfnb.storage = 's3://bucket/jobs'")
    shell.run_cell_magic("tfjob", "--step train --pipeline sp --record-only", "print(1)\n")
    shell.run_line_magic("serve", "train --name mnist --step publish --pipeline sp --record-only")
    run = pipeline(shell, "run sp --backend kubernetes --wait")
    assert run.status().steps["publish"].phase == "Succeeded"
    isvc = fake_kube.get(*ISVCS, "alice", "mnist")
    assert (
        isvc["spec"]["predictor"]["model"]["storageUri"]
        == f"s3://bucket/jobs/{run.name}-train/model"
    )
    assert isvc["status"]["modelStatus"]["states"]["activeModelState"] == "Loaded"

    # A fresh InferenceService: over a Loaded one, the rendered success condition would
    # match the old model's state before KServe reconciles the new spec (not fixed yet).
    fake_kube.delete(*ISVCS, "alice", "mnist")
    fake_kube.store_endpoint = "http://minio.elsewhere:9000"  # the initializer looks in S3
    failing = pipeline(shell, "run sp --backend kubernetes")
    with pytest.raises(
        PipelineFailed, match="step publish failed: failure condition 'status.modelStatus"
    ):
        failing.wait(timeout=30)
    isvc = fake_kube.get(*ISVCS, "alice", "mnist")
    assert isvc["spec"]["predictor"]["model"]["storageUri"].startswith(
        f"s3://bucket/jobs/{failing.name}-"
    )
