"""A job's files are one job's and one user's.

- A job name is taken once: two kernels submitting one name at the same moment (two
  processes behind a barrier) get one job and one "already exists" error, also from two
  machines sharing an s3:// bucket.
- kfnb's directories are 0700 and its files 0600 from creation (records, job
  directories, pickled names, logs, what the replicas write, server records and logs).
- Every atomic writer has a temporary file of its own; an unreadable ``status.json`` is
  reported naming the file, not raised.
- A replica's download cache is the user's own and is checked against the object before
  use, so no one can plant a data set for another user in a shared temp directory.

Cells use only the standard library. S3 is moto's server on 127.0.0.1.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kfnb
from kfnb._util import pid_alive
from kfnb.backends import BackendError
from kfnb.backends.local import LocalBackend
from kfnb.config import reset_settings
from kfnb.job import Job
from kfnb.storage import open_store
from tests import s3_server

RACE_CELL = """\
import os
with open(os.path.join(tfjob.artifacts, "runs"), "a") as out:
    out.write({marker!r} + "\\n")
"""


def _submit_after_barrier(barrier: Any, results: Any, marker: str, home: str, storage: str) -> None:
    """One kernel: everything prepared, then `LocalBackend.submit` as the barrier opens."""
    try:
        os.environ["KFNB_HOME"] = home
        reset_settings()
        backend = LocalBackend(storage=storage)
        cell = RACE_CELL.format(marker=marker)
        prepared = kfnb.prepare(cell, name="samename", names={}, backend=backend)
        barrier.wait(timeout=120)
        backend.submit(prepared.manifest, prepared.bundle)
        results.put((marker, "submitted"))
    except BackendError as err:
        results.put((marker, f"error: {err}"))
    except BaseException as err:  # anything else is a failure of the test, reported
        results.put((marker, f"raised {type(err).__name__}: {err}"))


def race(kernels: list[tuple[str, str, str]]) -> dict[str, str]:
    """Run `_submit_after_barrier` for each (marker, home, storage) at the same moment."""
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(kernels))
    results = context.Queue()
    processes = [
        context.Process(target=_submit_after_barrier, args=(barrier, results, *kernel))
        for kernel in kernels
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=180) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    return outcomes


def one_winner(outcomes: dict[str, str]) -> tuple[str, str]:
    """The marker of the kernel that submitted, and a loser's error; fails unless every
    other kernel got the one-line error."""
    submitted = [m for m, said in outcomes.items() if said == "submitted"]
    errors = [said for said in outcomes.values() if said.startswith("error: ")]
    assert len(submitted) == 1 and len(errors) == len(outcomes) - 1, outcomes
    for error in errors:
        assert "already exists" in error and "\n" not in error, error
    return submitted[0], errors[0]


def test_two_kernels_racing_for_one_name_get_one_job_and_one_error(kfnb_home: Path) -> None:
    storage = str(kfnb_home / "jobs")
    kernels = ("kernel-a", "kernel-b", "kernel-c", "kernel-d")
    outcomes = race([(m, str(kfnb_home), storage) for m in kernels])
    winner, _ = one_winner(outcomes)
    job = Job("samename", LocalBackend(storage=storage))
    assert job.wait(timeout=120).phase == "Succeeded"
    job_dir = kfnb_home / "jobs" / "samename"
    assert winner in (job_dir / "code" / "cell.py").read_text()
    # One supervisor ran the cell once: the winner's; the loser's never reached the disk.
    assert (job_dir / "runs").read_text() == f"{winner}\n"
    assert len(list((kfnb_home / "jobs").iterdir())) == 1


def test_a_submit_while_another_writes_the_same_name_is_refused(
    kfnb_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic: the first submit is held inside its bundle write while the second
    comes; the name was reserved before anything was written, so the second is refused."""
    from kfnb.bundle import Bundle

    backend = LocalBackend()
    first = kfnb.prepare(RACE_CELL.format(marker="first"), name="samename", names={})
    second = kfnb.prepare(RACE_CELL.format(marker="second"), name="samename", names={})
    writing, go_on = threading.Event(), threading.Event()
    write = Bundle.write

    def held_write(self: Bundle, directory: Path) -> None:
        if self is first.bundle:
            writing.set()
            go_on.wait(timeout=60)
        write(self, directory)

    monkeypatch.setattr(Bundle, "write", held_write)
    submitted: list[Any] = []
    thread = threading.Thread(
        target=lambda: submitted.append(backend.submit(first.manifest, first.bundle))
    )
    thread.start()
    try:
        assert writing.wait(timeout=60)
        with pytest.raises(BackendError, match="already exists"):
            LocalBackend().submit(second.manifest, second.bundle)
    finally:
        go_on.set()
        thread.join(timeout=60)
    assert submitted and submitted[0].phase == "Created"
    assert Job("samename", backend).wait(timeout=120).phase == "Succeeded"
    assert (kfnb_home / "jobs" / "samename" / "runs").read_text() == "first\n"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, moto_port: int, request: pytest.FixtureRequest) -> str:
    pytest.importorskip("minio")
    s3_server.use_endpoint(monkeypatch, moto_port, "kfnb-access", "kfnb-secret")
    words = request.node.name.lower().removeprefix("test_").split("_")
    bucket = "kfnb-files-" + "-".join(words[:4])
    open_store(f"s3://{bucket}").check()
    return bucket


def test_two_machines_racing_for_one_name_on_one_bucket_get_one_job(
    tmp_path: Path, s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two homes, so two scratch directories: only the bucket can tell the name is taken."""
    storage = f"s3://{s3}/jobs"
    homes = {m: tmp_path / f"home-{m}" for m in ("machine-a", "machine-b")}
    winner, error = one_winner(race([(m, str(home), storage) for m, home in homes.items()]))
    assert storage in error
    store = open_store(storage)
    assert winner.encode() in (store.read("samename/code/cell.py") or b"")
    loser = next(m for m in homes if m != winner)
    assert not list(homes[loser].rglob("samename")), "the loser wrote files of the job"
    monkeypatch.setenv("KFNB_HOME", str(homes[winner]))
    reset_settings()
    job = Job("samename", LocalBackend(storage=storage))
    assert job.wait(timeout=120).phase == "Succeeded"
    assert (job.backend.job_dir("samename") / "runs").read_text() == f"{winner}\n"


def test_a_name_used_from_another_machine_is_not_overwritten(
    tmp_path: Path, s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = f"s3://{s3}/jobs"
    first = kfnb.submit("print('first')", name="taken", names={}, backend=LocalBackend(storage))
    first.wait(timeout=120)
    monkeypatch.setenv("KFNB_HOME", str(tmp_path / "other-machine"))
    reset_settings()
    with pytest.raises(BackendError, match="already exists"):
        kfnb.submit("print('second')", name="taken", names={}, backend=LocalBackend(storage))
    store = open_store(storage)
    assert b"first" in (store.read("taken/code/cell.py") or b"")
    assert json.loads(store.read("taken/status.json") or b"{}")["phase"] == "Succeeded"


def test_s3_create_is_conditional_on_the_server_not_only_on_the_check_before_it(
    s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto honours ``If-None-Match: *``: with the check blinded, the put itself refuses."""
    from kfnb.storage import S3Store

    store = S3Store(f"s3://{s3}")
    assert store.create("reserved", b"one") is True
    assert store.create("reserved", b"two") is False
    monkeypatch.setattr(S3Store, "size", lambda self, key: None)
    assert store.create("reserved", b"three") is False
    assert store.read("reserved") == b"one"


# -- private files -------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual umask, under which files are 0644 unless kfnb says otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def loose_modes(root: Path) -> list[str]:
    """Paths under ``root`` (and itself) that a group or other users may read or enter."""
    loose = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            loose.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return loose


def test_a_jobs_files_and_directories_are_private_from_creation(
    kfnb_home: Path, open_umask: None
) -> None:
    cell = "import os\nopen(os.path.join(tfjob.artifacts, 'made-by-the-cell'), 'w').write(secret)\n"
    job = kfnb.submit(cell, name="private", names={"secret": "s3cr3t"}, backend="local")
    assert job.wait(timeout=120).phase == "Succeeded"
    job_dir = kfnb_home / "jobs" / "private"
    for made in (
        "code/names.pkl",
        "code/cell.py",
        "logs/worker-0.log",
        "supervisor.log",
        "status.json",
        "status/worker-0.json",
        "made-by-the-cell",
    ):
        assert (job_dir / made).is_file(), made
    assert (kfnb_home / "records" / "private.json").is_file()
    assert loose_modes(kfnb_home) == []


def test_server_records_and_logs_are_private(kfnb_home: Path, open_umask: None) -> None:
    from kfnb.serving.local import LocalServing, ServeError

    serving = LocalServing(kfnb_home)
    with pytest.raises(ServeError):  # the server process exits at once: not a SavedModel
        serving.start("broken", kfnb_home / "no-model", "no-model", timeout=60)
    assert (kfnb_home / "servers" / "broken.log").is_file()
    assert loose_modes(kfnb_home) == []


def test_a_pipelines_records_runs_and_logs_are_private(
    kfnb_home: Path, open_umask: None, shell: Any
) -> None:
    shell.run_cell("token = 'notebook-value'")
    shell.run_cell_magic("step", "only --pipeline private-p --record-only", "print(token)\n")
    run = shell.run_line_magic("kfnb", "pipeline run private-p --wait")
    assert run.status().phase == "Succeeded"
    assert list(kfnb_home.rglob("*.names.pkl")) and list(kfnb_home.rglob("runner.log"))
    assert loose_modes(kfnb_home) == []


def test_a_sweeps_records_trials_and_logs_are_private(kfnb_home: Path, open_umask: None) -> None:
    pytest.importorskip("optuna")
    from kfnb.sweeps import SweepSpec, start_sweep

    space = SweepSpec.build(["x=grid(1, 2)"], "maximize score", algorithm="grid", parallel=1)
    sweep = start_sweep("tfjob.report(score=tfjob.params['x'])\n", space, backend="local")
    sweep.wait(timeout=120)
    assert list(kfnb_home.rglob("runner.log")) and list(kfnb_home.rglob("state.json"))
    assert loose_modes(kfnb_home) == []


# -- atomic writes and unreadable status ---------------------------------------------


def test_atomic_writers_of_one_file_never_share_a_temporary() -> None:
    """The runtime's status writer (a copy of kfnb's): threads writing one file at once."""
    from kfnb import runtime

    path = Path(tempfile.mkdtemp()) / "status" / "worker-0.json"
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(300):
                runtime._write_status(path, {"writer": n, "i": i, "pad": "x" * 2000})
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert json.loads(path.read_text())["i"] == 299
    assert [p.name for p in path.parent.iterdir()] == ["worker-0.json"]


def test_an_unreadable_status_is_reported_naming_the_file(kfnb_home: Path) -> None:
    job = kfnb.submit("print('done')", name="garbled", names={}, backend="local")
    job.wait(timeout=120)
    supervisor = int((kfnb_home / "jobs" / "garbled" / "supervisor.pid").read_text())
    deadline = time.monotonic() + 30
    while pid_alive(supervisor) and time.monotonic() < deadline:  # it exits after its last word
        time.sleep(0.02)
    status_file = kfnb_home / "jobs" / "garbled" / "status.json"
    status_file.write_text('{"name": "garbled", "phase": "Succ')  # cut short by a full disk
    status = job.status()
    assert status.phase == "Failed" and status.reason == "StatusUnreadable"
    assert str(status_file) in status.message
    assert [s.reason for s in LocalBackend().list_jobs()] == ["StatusUnreadable"]


# -- the replicas' download cache ----------------------------------------------------


def test_fetch_never_uses_a_file_another_user_planted(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kfnb.runtime import TFJobContext

    store = open_store(f"s3://{s3}")
    store.write("data/set.npz", b"the real data")
    shared_tmp = tmp_path / "shared-tmp"
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    planted = shared_tmp / "kfnb-data" / s3 / "data" / "set.npz"  # where kfnb cached before
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"a planted data set")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    context = TFJobContext("job", tmp_path / "artifacts", {})
    fetched = Path(context.fetch(f"s3://{s3}/data/set.npz"))
    assert fetched.read_bytes() == b"the real data"
    assert fetched.is_relative_to(tmp_path / "user-cache")
    assert loose_modes(tmp_path / "user-cache" / "kfnb") == []


def test_fetch_downloads_again_when_the_object_changed(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kfnb.runtime import TFJobContext

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    store = open_store(f"s3://{s3}")
    context = TFJobContext("job", tmp_path / "artifacts", {})
    url = f"s3://{s3}/data/set.npz"
    store.write("data/set.npz", b"version one")
    first = Path(context.fetch(url))
    assert first.read_bytes() == b"version one"
    mtime = first.stat().st_mtime_ns
    time.sleep(0.01)
    assert Path(context.fetch(url)).stat().st_mtime_ns == mtime  # cached: not fetched again
    store.write("data/set.npz", b"version two")  # same size, other content
    assert Path(context.fetch(url)).read_bytes() == b"version two"


def test_concurrent_downloads_of_one_object_each_get_it_whole(s3: str, tmp_path: Path) -> None:
    """Two replicas fetching one data set into the one cache at the same moment."""
    from kfnb import artifact_sync
    from kfnb.storage import S3Store

    data = os.urandom(3 << 20)
    S3Store(f"s3://{s3}").write("big.bin", data)
    client = artifact_sync.make_client(S3Store(f"s3://{s3}").config)
    dest = tmp_path / "cache" / "big.bin"
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            for _ in range(3):
                artifact_sync.download(client, s3, "big.bin", dest)
                assert dest.read_bytes() == data
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(p.name for p in dest.parent.iterdir()) == ["big.bin"]
