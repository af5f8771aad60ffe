"""The local backend runs a TFJob manifest's replicas as processes, with the
Training Operator's TF_CONFIG, success, failure, restart and cleanup rules.

Cells here use only the standard library (never TensorFlow), and coordinate with
the test through small files in the job directory (``tfjob.artifacts``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

import kfnb
from kfnb.backends import BackendError
from kfnb.backends import local as local_module
from kfnb.backends.local import LocalBackend
from kfnb.backends.supervisor import cluster_spec
from kfnb.job import Job, JobFailed
from kfnb.status import JobStatus

T = TypeVar("T")

# Helpers every cell gets: `note` writes a file atomically in the job directory,
# `await_note` waits (bounded) for another replica's note.
PRELUDE = """\
import json, os, sys, time

def note(name, text):
    tmp = tfjob.artifacts / f".{name}.tmp"
    tmp.write_text(str(text))
    os.replace(tmp, tfjob.artifacts / name)

def await_note(name, timeout=30):
    deadline = time.time() + timeout
    while not (tfjob.artifacts / name).exists():
        if time.time() > deadline:
            raise TimeoutError(f"no note {name}")
        time.sleep(0.02)

"""

START_TIMEOUT = 30.0  # replicas starting on a loaded 2-core machine: generous, not a requirement


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


def submit(
    name: str,
    cell: str,
    namespace: dict[str, Any] | None = None,
    *,
    backend: LocalBackend | None = None,
    **spec: Any,
) -> Job:
    """Submit ``cell`` (with PRELUDE) as TFJob ``name`` to the local backend, as %%tfjob does."""
    source = PRELUDE + textwrap.dedent(cell)
    return kfnb.submit(
        source, name=name, names=namespace or {}, backend=backend or LocalBackend(), **spec
    )


def job_dir(job: Job) -> Path:
    path = job.backend.job_dir(job.name)
    assert path is not None
    return path


def read_note(job: Job, name: str, timeout: float = START_TIMEOUT) -> str:
    path = job_dir(job) / name
    wait_for(path.exists, timeout, f"note {name} of job {job.name}")
    return path.read_text()


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting to be reaped does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_phase(job: Job, phases: str | tuple[str, ...], timeout: float) -> JobStatus:
    wanted = (phases,) if isinstance(phases, str) else phases

    def reached() -> JobStatus | None:
        status = job.status()
        return status if status.phase in wanted else None

    return wait_for(reached, timeout, f"job {job.name} phase {wanted}")


def replica(status: JobStatus, name: str) -> Any:
    found = status.replica(name)
    assert found is not None, f"no replica {name} in {status.replicas}"
    return found


# -- 1. TF_CONFIG ----------------------------------------------------------------------

TF_CONFIG_CELL = """
note(f"tf-config-{tfjob.replica}", json.dumps(os.environ.get("TF_CONFIG")))
if tfjob.task_type == "chief":
    # The chief decides the job: let every replica write its TF_CONFIG first.
    for other in ("ps-0", "worker-0", "worker-1", "evaluator-0"):
        await_note(f"tf-config-{other}")
"""


def test_tf_config_is_set_as_the_training_operator_sets_it() -> None:
    job = submit("tfc", TF_CONFIG_CELL, chief=1, ps=1, workers=2, evaluator=1)
    assert job.wait(timeout=60).phase == "Succeeded"
    configs = {
        name: json.loads(json.loads((job_dir(job) / f"tf-config-{name}").read_text()))
        for name in ("chief-0", "ps-0", "worker-0", "worker-1", "evaluator-0")
    }
    cluster = configs["chief-0"]["cluster"]
    assert sorted(cluster) == ["chief", "ps", "worker"]  # the evaluator is not in the cluster
    assert [len(cluster[k]) for k in ("chief", "ps", "worker")] == [1, 1, 2]
    addresses = [a for kind in ("chief", "ps", "worker") for a in cluster[kind]]
    for address in addresses:
        host, port = address.split(":")
        assert host == "localhost" and 1024 <= int(port) <= 65535
    assert len({a.split(":")[1] for a in addresses}) == len(addresses)  # distinct ports
    for name, config in configs.items():
        kind, index = name.rsplit("-", 1)
        assert set(config) == {"cluster", "task", "environment"}
        assert config["cluster"] == cluster  # one cluster, the same for every replica
        assert config["task"] == {"type": kind, "index": int(index)}
        assert config["environment"] == "cloud"
    assert configs["evaluator-0"]["task"] == {"type": "evaluator", "index": 0}


def test_single_replica_job_has_no_tf_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    job = submit("solo", TF_CONFIG_CELL, workers=1)
    assert job.wait(timeout=30).phase == "Succeeded"
    assert json.loads((job_dir(job) / "tf-config-worker-0").read_text()) is None
    assert job.replicas == ["worker-0"]


def test_single_replica_job_does_not_inherit_the_kernels_tf_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The notebook may have set TF_CONFIG itself, as TensorFlow's multi-worker
    # tutorials do; the operator would never give a single-replica pod one.
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}}))
    job = submit("solo2", TF_CONFIG_CELL, workers=1)
    assert job.wait(timeout=30).phase == "Succeeded"
    assert json.loads((job_dir(job) / "tf-config-worker-0").read_text()) is None
    assert job.replicas == ["worker-0"]


def test_cluster_ports_are_distinct_for_a_large_cluster() -> None:
    manifest = {
        "spec": {
            "tfReplicaSpecs": {
                "Chief": {"replicas": 1},
                "PS": {"replicas": 50},
                "Worker": {"replicas": 250},
                "Evaluator": {"replicas": 1},
            }
        }
    }
    cluster = cluster_spec(manifest)
    addresses = [a for kind in ("chief", "ps", "worker") for a in cluster[kind]]
    assert len(addresses) == 301
    assert len(set(addresses)) == 301


# -- 2. Success policy ---------------------------------------------------------------


def test_chief_success_ends_the_job_and_stops_a_ps_that_runs_forever() -> None:
    cell = """
    note(f"pid-{tfjob.replica}", os.getpid())
    if tfjob.task_type == "ps":
        time.sleep(1000)
    elif tfjob.task_type == "chief":
        await_note("pid-ps-0")
    """
    job = submit("chiefwins", cell, chief=1, ps=1, workers=1)
    status = job.wait(timeout=30)
    assert status.phase == "Succeeded"
    assert status.reason == "TFJobSucceeded"
    assert replica(status, "chief-0").phase == "Succeeded"
    assert replica(status, "chief-0").exit_code == 0
    assert replica(status, "ps-0").phase == "Stopped"
    assert not pid_alive(int(read_note(job, "pid-ps-0")))


def test_without_chief_worker_zero_decides_while_worker_one_sleeps() -> None:
    cell = """
    note(f"pid-{tfjob.replica}", os.getpid())
    if tfjob.task_index == 1:
        time.sleep(1000)
    else:
        await_note("pid-worker-1")
    """
    job = submit("worker0wins", cell, workers=2)
    status = job.wait(timeout=30)
    assert status.phase == "Succeeded"
    assert replica(status, "worker-0").phase == "Succeeded"
    assert replica(status, "worker-1").phase == "Stopped"
    assert not pid_alive(int(read_note(job, "pid-worker-1")))


# -- 3. A worker raises --------------------------------------------------------------


def test_worker_exception_fails_the_job_fast_and_keeps_its_traceback() -> None:
    cell = """
    note(f"pid-{tfjob.replica}", os.getpid())
    if tfjob.task_index == 1:
        time.sleep(1000)
    await_note("pid-worker-1")
    print("worker 0 about to fail", flush=True)
    note("raised-at", time.time())
    raise ValueError("boom from worker zero")
    """
    job = submit("raises", cell, workers=2)
    raised_at = float(read_note(job, "raised-at"))
    status = wait_phase(job, "Failed", timeout=raised_at + 5 - time.time())
    assert time.time() - raised_at < 5
    assert status.reason == "TFJobFailed"
    assert replica(status, "worker-0").phase == "Failed"
    assert replica(status, "worker-0").exit_code == 1
    assert replica(status, "worker-1").phase == "Stopped"
    assert not pid_alive(int(read_note(job, "pid-worker-1")))

    with pytest.raises(JobFailed) as failed:
        job.wait(timeout=5)
    assert failed.value.replica == "worker-0"
    trace = failed.value.traceback or ""
    assert "ValueError: boom from worker zero" in trace
    assert 'raise ValueError("boom from worker zero")' in trace
    assert "runtime.py" not in trace

    log = job.logs("worker-0")
    assert "worker 0 about to fail" in log
    assert "Traceback (most recent call last)" in log
    assert "ValueError: boom from worker zero" in log
    result = json.loads((job_dir(job) / "status" / "worker-0.json").read_text())
    assert result["exit_code"] == 1
    assert job.backend.replica_result(job.name, "worker-0") == result


# -- 4. A worker is killed -----------------------------------------------------------


def test_worker_killed_by_sigkill_fails_the_job_with_exit_code_137() -> None:
    cell = """
    print(f"{tfjob.replica} ready", flush=True)
    note(f"pid-{tfjob.replica}", os.getpid())
    time.sleep(1000)
    """
    job = submit("killed", cell, workers=2)
    victim = int(read_note(job, "pid-worker-1"))
    other = int(read_note(job, "pid-worker-0"))
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    status = wait_phase(job, "Failed", timeout=5)
    assert time.monotonic() - killed_at < 5
    assert replica(status, "worker-1").phase == "Failed"
    assert replica(status, "worker-1").exit_code == 137
    assert replica(status, "worker-0").phase == "Stopped"
    assert not pid_alive(other)
    assert "worker-1 ready" in job.logs("worker-1")
    assert "worker-0 ready" in job.logs("worker-0")
    with pytest.raises(JobFailed) as failed:
        job.wait(timeout=5)
    assert failed.value.replica == "worker-1"
    assert "137" in str(failed.value)


# -- 5. Restart policies -------------------------------------------------------------

COUNT_ATTEMPTS = """
counter = tfjob.artifacts / "attempts"
attempt = int(counter.read_text()) + 1 if counter.exists() else 1
note("attempts", attempt)
print(f"attempt {attempt}", flush=True)
"""


def attempts(job: Job) -> int:
    return int((job_dir(job) / "attempts").read_text())


def test_on_failure_restarts_until_the_cell_succeeds() -> None:
    cell = COUNT_ATTEMPTS + textwrap.dedent(
        """
        if attempt < 3:
            raise RuntimeError(f"attempt {attempt} fails")
        """
    )
    job = submit("onfailure", cell, restart_policy="OnFailure", backoff_limit=2)
    status = job.wait(timeout=30)
    assert status.phase == "Succeeded"
    assert replica(status, "worker-0").restarts == 2
    assert attempts(job) == 3
    log = job.logs("worker-0")
    assert "--- kfnb: restart 1 of worker-0 ---" in log
    assert "--- kfnb: restart 2 of worker-0 ---" in log
    assert log.index("attempt 1") < log.index("restart 1") < log.index("attempt 2")
    assert log.index("attempt 2") < log.index("restart 2") < log.index("attempt 3")
    assert "RuntimeError: attempt 1 fails" in log  # earlier attempts' output is kept


def test_a_restart_shows_as_restarting_then_running() -> None:
    cell = COUNT_ATTEMPTS + textwrap.dedent(
        """
        if attempt < 2:
            raise RuntimeError("first attempt fails")
        time.sleep(3)
        """
    )
    job = submit("restarting", cell, restart_policy="OnFailure", backoff_limit=1)
    phases = []
    while not phases or phases[-1] not in ("Succeeded", "Failed"):
        phase = job.status().phase
        if not phases or phases[-1] != phase:
            phases.append(phase)
        time.sleep(0.02)
    assert "Restarting" in phases
    assert phases.index("Restarting") < len(phases) - 2  # Running again before the end
    assert phases[-2:] == ["Running", "Succeeded"]


def test_on_failure_beyond_the_backoff_limit_fails() -> None:
    cell = COUNT_ATTEMPTS + 'raise RuntimeError("always")\n'
    job = submit("backoff", cell, restart_policy="OnFailure", backoff_limit=1)
    with pytest.raises(JobFailed):
        job.wait(timeout=30)
    status = job.status()
    assert status.phase == "Failed"
    assert status.reason == "BackoffLimitExceeded"
    assert replica(status, "worker-0").restarts == 1
    assert replica(status, "worker-0").phase == "Failed"
    assert attempts(job) == 2


def test_exit_code_policy_does_not_restart_a_permanent_error() -> None:
    cell = COUNT_ATTEMPTS + "sys.exit(3)\n"
    job = submit("exitcode3", cell, restart_policy="ExitCode")
    with pytest.raises(JobFailed):
        job.wait(timeout=30)
    status = job.status()
    assert status.phase == "Failed"
    assert status.reason == "TFJobFailed"
    assert replica(status, "worker-0").exit_code == 3
    assert replica(status, "worker-0").restarts == 0
    assert attempts(job) == 1


def test_exit_code_policy_restarts_a_replica_killed_by_a_signal() -> None:
    cell = COUNT_ATTEMPTS + textwrap.dedent(
        """
        if attempt == 1:
            note("pid-1", os.getpid())
            time.sleep(1000)
        """
    )
    job = submit("exitcode137", cell, restart_policy="ExitCode")
    os.kill(int(read_note(job, "pid-1")), signal.SIGKILL)
    status = job.wait(timeout=30)
    assert status.phase == "Succeeded"
    assert replica(status, "worker-0").restarts == 1
    assert attempts(job) == 2
    assert "--- kfnb: restart 1 of worker-0 ---" in job.logs("worker-0")


# -- 6. Deadline ---------------------------------------------------------------------


def test_active_deadline_fails_the_job() -> None:
    cell = """
    print(f"{tfjob.replica} started", flush=True)
    note(f"pid-{tfjob.replica}", os.getpid())
    time.sleep(1000)
    """
    job = submit("deadline", cell, workers=2, timeout=2)
    pid = int(read_note(job, "pid-worker-0"))
    status = wait_phase(job, "Failed", timeout=START_TIMEOUT)
    assert status.reason == "DeadlineExceeded"
    assert status.start_time is not None and status.completion_time is not None
    took = status.completion_time - status.start_time
    assert 2 <= took < 5
    assert not pid_alive(pid)
    assert "worker-0 started" in job.logs("worker-0")
    assert "worker-1 started" in job.logs("worker-1")


# -- 7. Delete -----------------------------------------------------------------------


def test_delete_stops_a_running_job_and_keeps_its_logs() -> None:
    cell = """
    print(f"{tfjob.replica} before delete", flush=True)
    note(f"pid-{tfjob.replica}", os.getpid())
    time.sleep(1000)
    """
    job = submit("deleteme", cell, workers=2)
    pids = [int(read_note(job, f"pid-worker-{i}")) for i in range(2)]
    wait_for(lambda: "before delete" in job.logs("worker-1"), START_TIMEOUT, "log line")
    assert job.phase == "Running"
    started = time.monotonic()
    status = job.delete()
    assert status.phase == "Deleted"
    assert time.monotonic() - started < 5
    assert job.status().phase == "Deleted"
    assert {r.phase for r in status.replicas} == {"Stopped"}
    assert not any(pid_alive(pid) for pid in pids)
    assert "worker-0 before delete" in job.logs("worker-0")
    assert "worker-1 before delete" in job.logs("worker-1")

    job.backend.delete(job.name, purge=True)
    assert not job_dir(job).exists()
    assert job.name not in [s.name for s in job.backend.list_jobs()]


def test_delete_right_after_submit_is_deleted_not_lost() -> None:
    # The supervisor may get SIGTERM before Python has even started in it.
    job = submit("early", "time.sleep(1000)\n", workers=2)
    status = job.delete()
    assert (status.phase, status.reason) == ("Deleted", "TFJobDeleted")
    assert job.status().phase == "Deleted"


def test_delete_of_a_finished_job_keeps_its_phase() -> None:
    job = submit("finished", "print('done')\n")
    assert job.wait(timeout=30).phase == "Succeeded"
    assert job.delete().phase == "Succeeded"
    assert job_dir(job).is_dir()


# -- 8. The job outlives its submitter -----------------------------------------------

SUBMIT_SCRIPT = """
import sys
import kfnb

cell = "import time\\nprint('hello', flush=True)\\ntime.sleep(3)\\n"
kfnb.submit(cell, name=sys.argv[1], backend="local")
print("submitted", flush=True)
"""


def test_job_survives_the_process_that_submitted_it() -> None:
    name = "orphan"
    done = subprocess.run(
        [sys.executable, "-c", SUBMIT_SCRIPT, name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "submitted" in done.stdout
    backend = LocalBackend()
    assert name not in local_module._children  # not this process's child
    running = wait_for(
        lambda: backend.status(name).phase == "Running", START_TIMEOUT, "phase Running"
    )
    assert running
    assert name in [s.name for s in backend.list_jobs()]
    wait_for(lambda: "hello" in backend.read_log(name, "worker-0"), START_TIMEOUT, "log line")
    status = wait_for(
        lambda: s if (s := backend.status(name)).finished else None, START_TIMEOUT, "finished"
    )
    assert status.phase == "Succeeded", status


# -- 9. No process outlives its job --------------------------------------------------


def test_killing_the_supervisor_kills_the_replicas_and_reports_supervisor_lost() -> None:
    cell = """
    note(f"pid-{tfjob.replica}", os.getpid())
    time.sleep(1000)
    """
    job = submit("lost", cell, workers=2)
    pids = [int(read_note(job, f"pid-worker-{i}")) for i in range(2)]
    supervisor = int((job_dir(job) / "supervisor.pid").read_text())
    assert job.phase == "Running"
    os.kill(supervisor, signal.SIGKILL)
    try:
        wait_for(lambda: not any(pid_alive(p) for p in pids), 5, "replicas gone")
    finally:
        for pid in filter(pid_alive, pids):  # only if the test fails: leave no orphan behind
            os.kill(pid, signal.SIGKILL)
    status = job.status()
    assert status.phase == "Failed"
    assert status.reason == "SupervisorLost"
    assert status.completion_time is not None
    # The verdict is written down, so every reader agrees.
    assert JobStatus.read(job_dir(job) / "status.json").reason == "SupervisorLost"
    with pytest.raises(JobFailed):
        job.wait(timeout=5)


# What a cell starts runs in its replica's process group; this one outlives a SIGTERM.
STUBBORN_CHILD = """
import subprocess
ready = tfjob.artifacts / f"ready-{tfjob.replica}"
child = subprocess.Popen([sys.executable, "-c",
    "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "pathlib.Path(sys.argv[1]).touch(); time.sleep(120)", str(ready)])
await_note(ready.name)  # SIGTERM is ignored from now on
note(f"child-{tfjob.replica}", child.pid)
"""


def kill_leftovers(pids: list[int]) -> None:
    """Only if a test fails: leave no orphan behind."""
    for pid in filter(pid_alive, pids):
        os.kill(pid, signal.SIGKILL)


def test_killing_the_supervisor_stops_what_the_cell_started_and_no_replica_reads_running() -> None:
    cell = """
    import subprocess
    child = subprocess.Popen(["sleep", "120"])
    note(f"child-{tfjob.replica}", child.pid)
    time.sleep(1000)
    """
    job = submit("lostkids", cell, workers=2)
    children = [int(read_note(job, f"child-worker-{i}")) for i in range(2)]
    supervisor = int((job_dir(job) / "supervisor.pid").read_text())
    os.kill(supervisor, signal.SIGKILL)
    try:
        # Whoever reads the status and finds the supervisor dead stops the replicas' groups.
        status = wait_for(lambda: s if (s := job.status()).finished else None, 5, "finished")
        wait_for(lambda: not any(pid_alive(c) for c in children), 5, "the cell's sleep gone")
    finally:
        kill_leftovers(children)
    assert status.reason == "SupervisorLost"
    assert {r.phase for r in status.replicas} == {"Stopped"}
    assert {r.phase for r in JobStatus.read(job_dir(job) / "status.json").replicas} == {"Stopped"}


def test_a_replica_that_ends_takes_what_it_started_with_it() -> None:
    """As a container's processes end with its main process, on a cluster."""
    job = submit("leftbehind", STUBBORN_CHILD)
    child = int(read_note(job, "child-worker-0"))
    try:
        assert job.wait(timeout=START_TIMEOUT).phase == "Succeeded"
        wait_for(lambda: not pid_alive(child), 5, "the cell's process gone")
    finally:
        kill_leftovers([child])


def test_delete_stops_what_the_cell_started_even_if_it_ignores_sigterm() -> None:
    job = submit("stubborn", STUBBORN_CHILD + "time.sleep(1000)\n", workers=2)
    children = [int(read_note(job, f"child-worker-{i}")) for i in range(2)]
    try:
        assert job.delete().phase == "Deleted"
        wait_for(lambda: not any(pid_alive(c) for c in children), 5, "the cell's processes gone")
    finally:
        kill_leftovers(children)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_recorded_group_whose_id_was_reused_is_left_alone(tmp_path: Path) -> None:
    """Whoever kills a dead supervisor's groups kills only those groups: a group id is a
    pid, and another process may hold it by then (or after a reboot)."""
    from kfnb.backends import process_groups as groups

    leader = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        group = groups.group_of(leader.pid)
        assert group is not None and groups.members(group) == [leader.pid]
        # The same id held by a process that started at another time, or in another boot.
        for stale in (replace(group, started=group.started - 1), replace(group, boot="other")):
            groups.record_group(tmp_path, "worker-0", stale)
            assert groups.kill_recorded_groups(tmp_path) == 0
            assert leader.poll() is None
        groups.record_group(tmp_path, "worker-0", group)
        assert groups.kill_recorded_groups(tmp_path) == 1
        assert leader.wait(timeout=5) == -signal.SIGKILL
    finally:
        leader.kill()
        leader.wait()


def test_purge_never_removes_a_job_whose_supervisor_is_still_stopping_it() -> None:
    cell = """
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the supervisor waits out its grace period
    note("ready", 1)
    time.sleep(1000)
    """
    job = submit("slowstop", cell)
    read_note(job, "ready")
    with pytest.raises(BackendError, match=r"still stopping.*nothing was removed.*--purge"):
        job.backend.delete(job.name, purge=True, timeout=0.2)
    assert (job_dir(job) / "manifest.json").exists()
    status = job.backend.delete(job.name, purge=True)  # waits for the supervisor this time
    assert status.phase == "Deleted"
    assert not job_dir(job).exists()


def test_a_job_that_finishes_while_status_is_read_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """status() reads status.json, then checks the supervisor: if the supervisor wrote
    its final status and exited in between, the job finished; it was not lost."""
    job = submit("justdone", "print('done')\n")
    final = job.wait(timeout=30)
    assert final.phase == "Succeeded"
    path = job_dir(job) / "status.json"
    running = JobStatus(job.name, "local", "Running", "TFJobRunning", "", final.start_time)
    running.write(path)

    def supervisor_finishes_now(pid: int) -> bool:
        final.write(path)  # the supervisor's last write, just before it exits
        return False

    monkeypatch.setattr(local_module, "_supervisor_alive", supervisor_finishes_now)
    status = job.status()
    assert status.phase == "Succeeded"
    assert JobStatus.read(path).phase == "Succeeded"


# -- 10. Following a log -------------------------------------------------------------


def test_follow_log_yields_lines_while_running_and_stops_at_the_end() -> None:
    cell = """
    print("first line", flush=True)
    await_note("go")  # the test's, once it has the first line
    print("second line", flush=True)
    """
    job = submit("follow", cell)
    seen: list[tuple[str, bool]] = []
    for line in job.logs("worker-0", follow=True):
        seen.append((line, job.status().finished))
        (job_dir(job) / "go").touch()
    lines = [line for line, _ in seen]
    assert lines == ["first line\n", "second line\n"]
    assert seen[0][1] is False  # the first line came while the job still ran
    assert job.status().finished


def test_follow_log_of_an_unknown_replica_names_the_replicas() -> None:
    job = submit("unknown", "print('x')\n", workers=2)
    with pytest.raises(BackendError, match="worker-0, worker-1"):
        job.logs("worker-7", follow=True)
    with pytest.raises(BackendError, match="worker-7"):
        job.logs("worker-7")
    job.wait(timeout=30)
