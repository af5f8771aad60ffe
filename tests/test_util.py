"""The mechanisms written once (`kfnb._util`), the one record schema, the two kinds of
served model, and the server's flags made from `ServerConfig`'s fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from kfnb._util import (
    first_line,
    newest_version,
    numbered_versions,
    pid_alive,
    version_number,
    write_atomic,
    write_json,
)
from kfnb.records import JobRecord, list_records, load_record, records_dir, save_record
from kfnb.serving.config import ServerConfig
from kfnb.serving.local import LocalServing, ServeError, model_base_path
from kfnb.serving.served import ClusterServer, LocalServer, served_from_json

# -- atomic writes -------------------------------------------------------------------


def test_write_atomic_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_atomic(path, "old")
    write_json(path, {"phase": "Running"})
    assert json.loads(path.read_text()) == {"phase": "Running"}
    write_atomic(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    write_json(path, {"n": 1})
    with pytest.raises(TypeError):
        write_json(path, {"n": object()})  # not JSON: fails before anything is written
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path, "x")  # the rename fails: the temporary is removed
    assert json.loads(path.read_text()) == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


# -- processes -----------------------------------------------------------------------


def test_pid_alive_knows_its_process_by_its_command_line() -> None:
    code = "import time; print('up', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code, "marker-x"], stdout=subprocess.PIPE)
    try:
        assert pid_alive(child.pid)
        # Until it has exec'd, the child's command line is still its parent's.
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        assert pid_alive(child.pid, "marker-x")
        assert not pid_alive(child.pid, "kfnb.serving.server")  # a pid reused by another
    finally:
        child.kill()
    # Killed but not reaped: a zombie is not alive.
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").exists() and time.monotonic() < deadline:
        stat = Path(f"/proc/{child.pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.01)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)
    assert not pid_alive(0) and not pid_alive(-1)
    assert pid_alive(os.getpid())


# -- messages ------------------------------------------------------------------------


def test_first_line_of_an_exception_or_a_text() -> None:
    assert first_line(ValueError("\n  bad value  \nmore detail")) == "bad value"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("x" * 900)) == "x" * 500
    assert first_line(RuntimeError("long line"), 4) == "long"
    assert first_line("\n\n") == ""
    assert first_line("<html>\n<body>502</body>") == "<html>"


# -- model versions ------------------------------------------------------------------


def test_only_ascii_digit_names_are_versions(tmp_path: Path) -> None:
    assert version_number("12") == 12
    assert version_number("007") == 7
    for name in (".staging-3", "١٢", "²", "1.5", "", "-1", "v2"):
        assert version_number(name) is None, name
    for name in ("1", "10", "9", "١٢", ".staging-11"):
        (tmp_path / name).mkdir()
    (tmp_path / "12").write_text("a file, not a version")
    versions = numbered_versions(tmp_path)
    assert versions == {1: tmp_path / "1", 9: tmp_path / "9", 10: tmp_path / "10"}
    assert numbered_versions(tmp_path / "missing") is None
    assert newest_version(["9", "10", "١٢", "latest"]) == "10"
    assert newest_version(["staging"]) is None


def test_a_directory_of_non_ascii_digits_is_not_served(tmp_path: Path) -> None:
    base = tmp_path / "models"
    (base / "١").mkdir(parents=True)
    with pytest.raises(ServeError, match="nor a directory of numbered versions"):
        model_base_path(str(base), "m", tmp_path)
    (base / "1").mkdir()
    assert model_base_path(str(base), "m", tmp_path) == base


# -- paths inside a root ------------------------------------------------------------


def test_inside_keeps_paths_in_their_root_and_its_copy_agrees(tmp_path: Path) -> None:
    import kfnb.artifact_sync as sync
    from kfnb._util import inside

    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "out").symlink_to(tmp_path, target_is_directory=True)
    (root / "in").symlink_to(root / "a", target_is_directory=True)
    cases = {
        "": root,
        "a/b.txt": root / "a/b.txt",
        "a/../b.txt": root / "a/../b.txt",  # stays inside: harmless
        "in/x": root / "in/x",
        "../x": None,
        "a/../../x": None,
        str(tmp_path / "x"): None,
        "out/x": None,
        "out": None,
    }
    for relative, expected in cases.items():
        assert inside(root, relative) == expected, relative
        assert sync.inside(root, relative) == expected, relative


# -- one record schema ---------------------------------------------------------------


def test_job_records_carry_record_version_and_old_ones_still_read() -> None:
    record = JobRecord("job-a", "local", "/tmp/store", created=1.0, replicas={"Worker": 2})
    path = save_record(record)
    data = json.loads(path.read_text())
    assert data["record_version"] == 1 and "version" not in data
    assert load_record("job-a") == record
    old = {"version": 1, "name": "job-old", "backend": "local", "storage": "/s", "created": 0.5}
    (records_dir() / "job-old.json").write_text(json.dumps(old))
    assert load_record("job-old") == JobRecord("job-old", "local", "/s", created=0.5)
    (records_dir() / "job-new.json").write_text(json.dumps({**old, "version": 2}))
    assert load_record("job-new") is None  # a version this kfnb does not know
    assert [r.name for r in list_records()] == ["job-old", "job-a"]


def test_records_are_named_by_job_names_only(tmp_path: Path) -> None:
    from kfnb.spec import SpecError

    crafted = tmp_path / "crafted"
    record = {"record_version": 1, "name": str(crafted), "backend": "local", "storage": "/s"}
    (tmp_path / "crafted.json").write_text(json.dumps(record))
    assert load_record(str(crafted)) is None  # a path is never a record's name
    assert load_record("../../crafted") is None
    for name in ("../x", str(tmp_path / "x"), "My_Job", ""):
        with pytest.raises(SpecError, match="DNS-1035"):
            save_record(JobRecord(name, "local", "/s"))
    assert not list((tmp_path).glob("x*"))
    serving = LocalServing()
    for name in ("../x", str(tmp_path / "x")):
        with pytest.raises(SpecError, match="DNS-1035"):
            serving.save(ClusterServer(name=name, url="http://m", source="j",
                                       model_base_path="s3://b/j/model", namespace="a",
                                       runtime="kserve"))  # fmt: skip
        with pytest.raises(SpecError, match="DNS-1035"):
            serving.stop(name)
        with pytest.raises(SpecError, match="DNS-1035"):
            model_base_path(str(tmp_path), name, tmp_path)


def test_server_records_in_the_old_format_read_as_their_own_type(kfnb_home: Path) -> None:
    servers = kfnb_home / "servers"
    servers.mkdir(parents=True)
    common = {"url": "http://x", "grpc": "", "source": "job", "model_base_path": "/m"}
    local = {**common, "version_": 1, "name": "here", "version": 3, "pid": 12, "argv": ["p"]}
    local |= {"log": "/l", "backend": "local", "started": 1.0, "namespace": "", "runtime": ""}
    cluster = {**common, "version_": 1, "name": "there", "version": 0, "pid": 0, "argv": []}
    cluster |= {"log": "", "backend": "kubernetes", "started": 2.0, "namespace": "alice"}
    cluster |= {"runtime": "kserve"}
    (servers / "here.json").write_text(json.dumps(local))
    (servers / "there.json").write_text(json.dumps(cluster))
    here, there = LocalServing().list()
    assert isinstance(here, LocalServer) and here.version == 3 and here.argv == ("p",)
    assert here.backend == "local" and here.pid == 12
    assert isinstance(there, ClusterServer) and (there.namespace, there.runtime) == (
        "alice",
        "kserve",
    )
    assert not hasattr(there, "pid") and there.alive()
    saved = there.to_json()
    assert saved["record_version"] == 1 and saved["backend"] == "kubernetes"
    assert "version_" not in saved and "pid" not in saved
    assert served_from_json(saved) == there
    assert served_from_json(here.to_json()) == here


def test_a_cluster_server_from_its_rollout() -> None:
    from kfnb.serving.kubernetes import Rollout

    rollout = Rollout("mnist", "alice", "kserve", "http://mnist.alice.example.com", {"r1": 100})
    served = ClusterServer.from_rollout(rollout, "job2", "s3://bucket/jobs/job2/model")
    assert served.predict_url == "http://mnist.alice.example.com/v1/models/mnist:predict"
    assert (served.source, served.model_base_path) == ("job2", "s3://bucket/jobs/job2/model")
    assert str(served) == (
        "mnist (kserve in namespace alice, from job2): "
        "http://mnist.alice.example.com/v1/models/mnist:predict"
    )


def test_stopping_a_cluster_server_here_says_where_it_runs() -> None:
    serving = LocalServing()
    serving.save(
        ClusterServer(name="m", url="http://m", source="j", model_base_path="s3://b/j/model",
                      namespace="alice", runtime="kserve")  # fmt: skip
    )
    with pytest.raises(ServeError, match="served by kubernetes"):
        serving.stop("m")
    with pytest.raises(ServeError, match="no model server named nothing"):
        serving.stop("nothing")


# -- the server's flags, from ServerConfig -------------------------------------------


def test_server_flags_round_trip_through_to_argv_and_the_parser(tmp_path: Path) -> None:
    config = ServerConfig(
        tmp_path,
        model_name="mnist",
        host="0.0.0.0",
        port=0,
        grpc_port=8600,
        max_body_bytes=1000,
        max_batch_size=8,
        poll_seconds=0.5,
        max_versions=3,
        intra_op_threads=4,
        inter_op_threads=1,
    )
    argv = config.to_argv("python3")
    assert argv[:3] == ["python3", "-m", "kfnb.serving.server"]
    assert ServerConfig.from_argv(argv[3:]) == config
    assert "--grpc-port" not in ServerConfig(tmp_path).to_argv()
    assert ServerConfig.from_argv(["--model-base-path", str(tmp_path)]) == ServerConfig(tmp_path)
    # Every field is a flag.
    parser = ServerConfig.parser()
    assert {a.dest for a in parser._actions} - {"help"} == {f.name for f in fields(ServerConfig)}


def test_tf_servings_spellings_and_the_checks_of_each_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ServerConfig.from_argv(
        [
            "--model_base_path", "~/models", "--model_name", "m", "--rest_api_port", "9000",
            "--file_system_poll_wait_seconds", "0", "--tensorflow_intra_op_parallelism", "2",
        ]
    )  # fmt: skip
    assert config.model_base_path == Path("~/models").expanduser().absolute()
    assert (config.model_name, config.port, config.intra_op_threads) == ("m", 9000, 2)
    assert config.poll_seconds == 0.05  # no busy loop
    for bad in (["--port", "70000"], ["--max-batch-size", "0"], ["--inter-op-threads", "-1"], []):
        with pytest.raises(SystemExit):
            ServerConfig.from_argv([*(["--model-base-path", "m"] if bad else []), *bad])
    assert "is not a port (0-65535)" in capsys.readouterr().err
