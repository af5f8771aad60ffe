"""Two model kinds and variants on a cluster: ``model_kind``, KServe's sklearn predictor,
and an A/B test as KServe's InferenceGraph (a Splitter over one InferenceService per
variant), rendered and validated against the real schemas, and served against the FAKE
API server of tests/fake_kube.py (a fake KServe; nothing here ran on a real cluster).

Models sit in moto's S3 server: only the file names matter to kfnb here (the model files
are stand-in bytes, never loaded), since a cluster's KServe, not kfnb, loads them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from kfnb.serving.model_kind import UnknownModel, model_kind, newest_stored_model
from kfnb.storage import open_store
from tests import s3_server
from tests.conftest import schema_validators
from tests.fake_kube import GRAPHS, ISVCS, FakeKube

yaml = pytest.importorskip("yaml")
pytest.importorskip("kubernetes")
SECRET = "wJalrXUtnFEMI-kfnb-variants-secret"


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch, moto_port: int, request: Any) -> str:
    """moto's S3 in the notebook's settings; a bucket of this test's own holding a
    TensorFlow job's versions 1-2 (``tf``) and a forest's versions 1-3 (``rf``)."""
    s3_server.use_endpoint(monkeypatch, moto_port, "kfnb-access", SECRET)
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))
    name = f"kfnb-v-{name[:40]}".strip("-")
    store = open_store(f"s3://{name}")
    store.check()  # creates the bucket
    for version in ("1", "2"):
        store.write(f"jobs/tf/model/{version}/saved_model.pb", b"stand-in")
        store.write(f"jobs/tf/model/{version}/variables/variables.index", b"stand-in")
    for version in ("1", "3"):
        store.write(f"jobs/rf/model/{version}/model.joblib", b"stand-in")
    store.write("jobs/rf/model/.staging-4/model.joblib", b"half-written")
    return name


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def assert_valid(manifest: dict[str, Any]) -> None:
    for validator in schema_validators(manifest["kind"]):  # as given, and strict
        assert not list(validator.iter_errors(manifest)), manifest


# -- model_kind ---------------------------------------------------------------------------


def test_model_kind_tells_a_saved_model_from_a_joblib_file(tmp_path: Path) -> None:
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "rf").mkdir()
    (tmp_path / "rf" / "model.joblib").write_bytes(b"")
    assert model_kind(tmp_path / "tf") == "tensorflow"
    assert model_kind(tmp_path / "rf") == "sklearn"
    (tmp_path / "rf" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(UnknownModel, match="holds both saved_model.pb and model.joblib"):
        model_kind(tmp_path / "rf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownModel, match="holds no model: a version directory needs"):
        model_kind(tmp_path / "empty")
    with pytest.raises(UnknownModel, match="cannot read"):
        model_kind(tmp_path / "missing")


def test_the_newest_stored_version_and_its_kind(bucket: str, tmp_path: Path) -> None:
    tf = newest_stored_model(f"s3://{bucket}/jobs/tf/model")
    rf = newest_stored_model(f"s3://{bucket}/jobs/rf/model/")  # .staging-4 is no version
    one = newest_stored_model(f"s3://{bucket}/jobs/rf/model/1")  # a version directory itself
    assert tf is not None and rf is not None and one is not None
    assert (tf.kind, tf.version, tf.version_uri) == (
        "tensorflow", "2", f"s3://{bucket}/jobs/tf/model/2"
    )  # fmt: skip
    assert (rf.kind, rf.version_uri) == ("sklearn", f"s3://{bucket}/jobs/rf/model/3")
    assert (one.kind, one.version) == ("sklearn", "")
    assert one.version_uri == f"s3://{bucket}/jobs/rf/model/1"
    local = tmp_path / "model" / "7"
    local.mkdir(parents=True)
    (local / "model.joblib").write_bytes(b"")
    found = newest_stored_model(str(tmp_path / "model"))
    assert found is not None and found.kind == "sklearn"
    assert newest_stored_model(f"s3://{bucket}/jobs/nothing/model") is None  # not trained yet
    (local / "model.joblib").rename(local / "model.pkl")  # not a name kfnb knows
    with pytest.raises(UnknownModel, match="7 holds no model: a version directory needs"):
        newest_stored_model(str(tmp_path / "model"))


# -- a scikit-learn model on KServe ---------------------------------------------------------


def test_a_joblib_model_renders_kserves_sklearn_predictor(
    shell: Any, bucket: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KFNB_S3_SECRET", "minio-s3")
    shell.run_line_magic("serve", f"s3://{bucket}/jobs/rf/model --dry-run")
    out = capsys.readouterr().out
    assert f"# scikit-learn model s3://{bucket}/jobs/rf/model/3: KServe's sklearn runtime" in out
    _account, isvc = documents(out)
    assert_valid(isvc)
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["modelFormat"] == {"name": "sklearn"}
    assert "runtimeVersion" not in predictor["model"]  # TF Serving's tag means nothing here
    assert predictor["model"]["storageUri"] == f"s3://{bucket}/jobs/rf/model/3"

    # Everything else as the TensorFlow predictor has it: pod options, security, account.
    shell.run_line_magic("serve", f"s3://{bucket}/jobs/tf/model --dry-run")
    _account, tf_isvc = documents(capsys.readouterr().out)
    tf_predictor = tf_isvc["spec"]["predictor"]
    assert tf_predictor["model"]["modelFormat"] == {"name": "tensorflow"}
    assert tf_predictor["model"]["storageUri"] == f"s3://{bucket}/jobs/tf/model"
    for key in ("modelFormat", "runtimeVersion", "storageUri"):
        tf_predictor["model"].pop(key)
        predictor["model"].pop(key, None)
    assert predictor == tf_predictor
    assert predictor["model"]["securityContext"]["allowPrivilegeEscalation"] is False
    assert predictor["serviceAccountName"] == "mnist-kfnb-s3"

    with pytest.raises(UsageError, match="is a sklearn model: TF Serving loads SavedModels only"):
        shell.run_line_magic("serve", f"s3://{bucket}/jobs/rf/model --dry-run --runtime tfserving")


def test_a_jobs_forest_is_fetched_once_and_served_by_the_jobs_name(
    shell: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from kfnb.job import Job
    from kfnb.records import JobRecord, save_record

    record = JobRecord("rf", "local", f"s3://{bucket}/jobs")
    save_record(record)
    job = Job.from_record(record)
    version = job.latest_model()
    assert version is not None and version.name == "3" and model_kind(version) == "sklearn"
    open_store(f"s3://{bucket}").write("jobs/rf/model/3/model.joblib", b"changed")
    assert job.latest_model() == version  # kept in the kernel's cache, not fetched again
    assert (version / "model.joblib").read_bytes() == b"stand-in"

    shell.run_line_magic("serve", "rf --dry-run")
    (isvc,) = documents(capsys.readouterr().out)
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == f"s3://{bucket}/jobs/rf/model/3"


def test_a_store_kfnb_cannot_read_is_taken_for_tensorflow_and_said(
    shell: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_ENDPOINT", "127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.setenv("S3_USE_HTTPS", "0")
    shell.run_line_magic("serve", "s3://elsewhere/jobs/a/model --dry-run")
    out = capsys.readouterr().out
    assert "# could not read s3://elsewhere/jobs/a/model (" in out
    assert "): taken to be TensorFlow" in out
    (isvc,) = documents(out)
    assert isvc["spec"]["predictor"]["model"]["modelFormat"] == {"name": "tensorflow"}


# -- variants: KServe's InferenceGraph ------------------------------------------------------

AB = "--name mnist --variant rf={rf} --split 90,10"


def test_variants_render_an_inference_service_each_and_a_splitter_graph(
    shell: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = AB.format(rf=f"s3://{bucket}/jobs/rf/model")
    pods = "--node-selector pool=cpu --toleration dedicated=ml:NoSchedule --label team=vision"
    shell.run_line_magic("serve", f"s3://{bucket}/jobs/tf/model {flags} {pods} --dry-run")
    out = capsys.readouterr().out
    assert "# TF Serving " in out and "# scikit-learn model " in out
    main, rf, graph = documents(out)
    for manifest in (main, rf, graph):
        assert_valid(manifest)
        assert manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kfnb"
    assert (main["metadata"]["name"], rf["metadata"]["name"]) == ("mnist-main", "mnist-rf")
    assert main["spec"]["predictor"]["model"]["modelFormat"] == {"name": "tensorflow"}
    assert rf["spec"]["predictor"]["model"]["modelFormat"] == {"name": "sklearn"}
    assert graph["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert graph["metadata"]["name"] == "mnist"
    # The pods' options: on each predictor, and what of them the graph's router takes.
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    for isvc in (main, rf):
        assert isvc["spec"]["predictor"]["nodeSelector"] == {"pool": "cpu"}
        assert isvc["spec"]["predictor"]["tolerations"] == [toleration]
    assert graph["metadata"]["labels"]["team"] == "vision"
    assert graph["spec"].pop("nodeSelector") == {"pool": "cpu"}
    assert graph["spec"].pop("tolerations") == [toleration]
    assert graph["spec"] == {
        "nodes": {
            "root": {
                "routerType": "Splitter",
                "steps": [
                    {"serviceName": "mnist-main", "weight": 90},
                    {"serviceName": "mnist-rf", "weight": 10},
                ],
            }
        }
    }

    # The same from Python; three variants.
    from kfnb.api import render_serving

    manifests = render_serving(
        f"s3://{bucket}/jobs/tf/model", name="ab",
        variants={"rf": f"s3://{bucket}/jobs/rf/model", "old": f"s3://{bucket}/jobs/tf/model/"},
        split=[50, 25, 25],
    )  # fmt: skip
    graph = manifests[-1]
    assert_valid(graph)
    steps = graph["spec"]["nodes"]["root"]["steps"]
    assert [(s["serviceName"], s["weight"]) for s in steps] == [
        ("ab-main", 50), ("ab-rf", 25), ("ab-old", 25)
    ]  # fmt: skip


def test_the_strict_schema_catches_a_misspelt_graph_field() -> None:
    from kfnb.serving.manifests import inference_graph

    graph = inference_graph("mnist", "alice", {"mnist-main": 90, "mnist-rf": 10})
    assert_valid(graph)
    graph["spec"]["nodes"]["root"]["steps"][0]["wieght"] = 90
    strict = schema_validators("InferenceGraph")[1]
    assert any("wieght" in error.message for error in strict.iter_errors(graph))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--variant rf=s3://b/rf --split 90,20",
         "--split 90,20: give one whole percent per variant (main, rf) summing to 100, "
         "e.g. --split 50,50"),
        ("--variant rf=s3://b/rf --split 100", "--split 100: give one whole percent per"),
        ("--variant rf=s3://b/rf --split ninety,ten", "--split ninety,ten: give one whole"),
        ("--variant rf=s3://b/rf --split 110,-10", "--split 110,-10: give one whole"),
        ("--variant rf=s3://b/rf", "variants need --split: give one whole percent"),
        ("--split 100", "--split needs a second model: add --variant NAME=JOB_OR_URL"),
        ("--variant rf --split 90,10", "--variant rf: write NAME=JOB_OR_URL"),
        ("--variant main=s3://b/x --split 90,10", "that name is the served source's"),
        ("--variant RF=s3://b/x --split 90,10", "a variant's name is up to 20 lower-case"),
        ("--variant rf=s3://b/x --variant rf=s3://b/y --split 50,25,25", "given twice"),
        ("--variant rf=s3://b/x --split 90,10 --runtime tfserving",
         "--variant needs --runtime kserve"),
        ("--variant rf=s3://b/x --split 90,10 --canary s3://b/y --percent 5",
         "--canary and --variant do not go together"),
    ],
)
def test_bad_variants_and_splits_are_one_line(shell: Any, flags: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        shell.run_line_magic("serve", f"s3://b/main {flags} --dry-run")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_local_server_says_variants_are_not_there_yet(shell: Any) -> None:
    for backend in ("", " --backend local"):
        with pytest.raises(UsageError) as err:
            shell.run_line_magic("serve", f"nojob --variant rf=other --split 90,10{backend}")
        said = str(err.value)
        assert "--variant and --split are not available with the local server yet" in said
        assert "serve the variants with --backend kubernetes" in said and "\n" not in said


# -- against the FAKE API server --------------------------------------------------------------


def stored(fake: FakeKube, prefix: str, plural: str) -> dict[str, dict[str, Any]]:
    with fake.cond:
        objects = fake.objects.get((prefix, plural), {}).values()
        return {o["metadata"]["name"]: json.loads(json.dumps(o)) for o in objects}


def test_an_ab_test_on_the_fake_cluster_is_created_replaced_and_stopped(
    shell: Any, fake_kube: FakeKube, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_kube.step = 0.01
    source, rf = f"s3://{bucket}/jobs/tf/model", f"s3://{bucket}/jobs/rf/model"
    flags = AB.format(rf=rf)
    served = shell.run_line_magic("serve", f"{source} {flags} --backend kubernetes")
    assert "(traffic: mnist-main 90%, mnist-rf 10%)" in capsys.readouterr().out
    assert served.url == "http://mnist.alice.example.com"
    assert served.predict_url == served.url  # a graph takes requests at its root
    assert served.variants == ("main", "rf")
    isvcs, graphs = stored(fake_kube, *ISVCS), stored(fake_kube, *GRAPHS)
    assert sorted(isvcs) == ["mnist-main", "mnist-rf"] and sorted(graphs) == ["mnist"]
    assert isvcs["mnist-rf"]["spec"]["predictor"]["model"]["storageUri"] == f"{rf}/3"
    for obj in [*isvcs.values(), *graphs.values()]:
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kfnb"
    graph_path = "/apis/serving.kserve.io/v1alpha1/namespaces/alice/inferencegraphs"
    assert ("POST", graph_path) in fake_kube.requests

    # Served again with another split: the graph is replaced in place.
    even = flags.replace("90,10", "50,50")
    shell.run_line_magic("serve", f"{source} {even} --backend kubernetes")
    assert "(traffic: mnist-main 50%, mnist-rf 50%)" in capsys.readouterr().out
    assert ("PUT", f"{graph_path}/mnist") in fake_kube.requests
    (graph,) = stored(fake_kube, *GRAPHS).values()
    assert [s["weight"] for s in graph["spec"]["nodes"]["root"]["steps"]] == [50, 50]

    # The record survives the kernel: %serve list, then stop removes all kfnb made.
    shell.run_line_magic("serve", "list")
    assert "http://mnist.alice.example.com" in capsys.readouterr().out
    shell.run_line_magic("serve", "stop mnist")
    assert not stored(fake_kube, *GRAPHS) and not stored(fake_kube, *ISVCS)


def test_the_fake_webhook_refuses_weights_that_do_not_sum_to_100(fake_kube: FakeKube) -> None:
    from kfnb.serving.kubernetes import ClusterServing
    from kfnb.serving.local import ServeError
    from kfnb.serving.manifests import inference_graph

    bad = inference_graph("mnist", "alice", {"mnist-main": 90, "mnist-rf": 20})
    with pytest.raises(ServeError, match="fake KServe: .* the Splitter weights sum to 110"):
        ClusterServing()._apply(bad)  # straight to the API server, as kubectl would


def test_graphs_and_services_kfnb_did_not_make_are_left_alone(
    shell: Any, fake_kube: FakeKube, bucket: str
) -> None:
    fake_kube.step = 0.01
    source, flags = f"s3://{bucket}/jobs/tf/model", AB.format(rf=f"s3://{bucket}/jobs/rf/model")
    theirs = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph",
              "metadata": {"name": "mnist", "labels": {"app.kubernetes.io/managed-by": "helm"}},
              "spec": {"nodes": {"root": {"routerType": "Sequence", "steps": []}}}}  # fmt: skip
    fake_kube._put(*GRAPHS, "alice", theirs)
    with pytest.raises(UsageError) as err:
        shell.run_line_magic("serve", f"{source} {flags} --backend kubernetes")
    assert "InferenceGraph mnist in namespace alice was not created by kfnb" in str(err.value)
    assert "managed-by label is 'helm'" in str(err.value)
    assert not stored(fake_kube, *ISVCS)  # refused before anything was written

    # A plain InferenceService of the name would share the graph's host name: refused.
    with fake_kube.cond:
        fake_kube.objects[GRAPHS].clear()
    shell.run_line_magic("serve", f"{source} --backend kubernetes")
    with pytest.raises(UsageError, match="InferenceService mnist is served in namespace alice"):
        shell.run_line_magic("serve", f"{source} {flags} --backend kubernetes")
    shell.run_line_magic("serve", "stop mnist")

    # Served; then someone else's object takes a variant's name: stop leaves it, says so.
    shell.run_line_magic("serve", f"{source} {flags} --backend kubernetes")
    with fake_kube.cond:
        fake_kube.objects[ISVCS][("alice", "mnist-rf")]["metadata"]["labels"] = {}
    with pytest.raises(UsageError) as err:
        shell.run_line_magic("serve", "stop mnist")
    assert "InferenceService mnist-rf in namespace alice alone: it was not created by kfnb" in (
        str(err.value)
    )
    assert sorted(stored(fake_kube, *ISVCS)) == ["mnist-rf"] and not stored(fake_kube, *GRAPHS)
