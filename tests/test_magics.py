"""The magics, driven through a real IPython InteractiveShell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from kfnb.backends import JobNotFound
from kfnb.job import Job, JobFailed
from tests.conftest import validate_tfjob


def tfjob(ip: InteractiveShell, line: str, cell: str) -> Any:
    return ip.run_cell_magic("tfjob", line, cell)


def one_line_usage_error(ip: InteractiveShell, line: str, cell: str = "print(1)\n") -> str:
    with pytest.raises(UsageError) as error:
        tfjob(ip, line, cell)
    message = str(error.value)
    assert "\n" not in message.strip(), message
    return message


@pytest.mark.parametrize(
    ("line", "cell", "words"),
    [
        ("--wrokers 2", "print(1)", "unrecognized arguments: --wrokers"),
        ("--workers 0", "print(1)", "at least one worker"),
        ("--workers two", "print(1)", "invalid int value"),
        ("--name My_Job", "print(1)", "not a DNS-1035 label"),
        ("--restart-policy Sometimes", "print(1)", "invalid choice"),
        ("--env NOEQUALS", "print(1)", "not KEY=VALUE"),
        ("--memory 4GB", "print(1)", "--memory '4GB' is not a Kubernetes quantity"),
        ("--timeout 0", "print(1)", "--timeout takes a positive number"),
        ("--chief 1 --workers 0 --ps 1", "print(1)", "need workers: set --workers to 1"),
        ("", "x = (1,\n", "syntax error in the cell, line 1"),
        ("", "   \n", "cell is empty"),
        ("--backend kubernetes", "print(1)", "--dry-run to print the TFJob manifest"),
        ("--include missing.py", "print(1)", "--include missing.py: no such file"),
    ],
)
def test_user_mistakes_are_one_line_usage_errors(
    shell: InteractiveShell, line: str, cell: str, words: str
) -> None:
    assert words in one_line_usage_error(shell, line, cell)


def test_unshippable_name_is_named(shell: InteractiveShell) -> None:
    shell.user_ns["lock"] = threading.Lock()
    message = one_line_usage_error(shell, "", "with lock:\n    pass\n")
    assert "'lock'" in message


def test_missing_tensorflow_is_one_line(shell: InteractiveShell, tmp_path: Path) -> None:
    bare = tmp_path / "bare-python"  # a Python without site-packages: no TensorFlow there
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    bare.chmod(0o755)
    shell.run_line_magic("config", f"Kfnb.python = {str(bare)!r}")
    message = one_line_usage_error(shell, "", "print(1)\n")
    assert "TensorFlow is not installed" in message and "pip install" in message


def test_dry_run_prints_a_valid_manifest_and_submits_nothing(
    shell: InteractiveShell,
    capsys: pytest.CaptureFixture[str],
    tfjob_validators: list[Any],
    kfnb_home: Path,
) -> None:
    shell.run_cell("factor = 3")
    result = tfjob(
        shell, "--name dry --workers 2 --gpus 1 --env EPOCHS=3 --dry-run", "print(factor)\n"
    )
    assert result is None
    manifest = yaml.safe_load(capsys.readouterr().out)
    validate_tfjob(tfjob_validators, manifest)
    worker = manifest["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2
    container = worker["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].startswith("tensorflow/tensorflow:") and container["image"].endswith(
        "-gpu"
    )
    assert {"name": "EPOCHS", "value": "3"} in container["env"]
    assert not (kfnb_home / "records").exists() and not (kfnb_home / "jobs" / "dry").exists()


def test_config_changes_settings(
    shell: InteractiveShell, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("config", "Kfnb.namespace = 'alice'")
    tfjob(shell, "--name ns --dry-run", "print(1)\n")
    assert yaml.safe_load(capsys.readouterr().out)["metadata"]["namespace"] == "alice"


def test_cell_runs_as_a_job_and_returns_a_handle_at_once(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shell.run_cell("def helper(x):\n    return x * 2\nfactor = 21")
    go = tmp_path / "go"
    job = tfjob(
        shell,
        "--name quick --workers 2",
        "import pathlib, time\nprint('answer', helper(factor), tfjob.replica, flush=True)\n"
        # worker-0 decides success: it waits (up to a minute) for the test's `go`
        "deadline = time.monotonic() + 60\n"
        f"while tfjob.task_index == 0 and not pathlib.Path({str(go)!r}).exists():\n"
        "    assert time.monotonic() < deadline, 'no go'\n"
        "    time.sleep(0.02)\n",
    )
    assert not job.status().finished  # returned at once: the job cannot end before `go`
    assert isinstance(job, Job) and "quick" in repr(job)
    deadline = time.monotonic() + 30  # worker-1 ends first, so that it is not stopped
    while getattr(job.status().replica("worker-1"), "phase", None) != "Succeeded":
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.02)
    go.touch()
    status = job.wait(timeout=30)
    assert status.phase == "Succeeded"
    assert "answer 42 worker-0" in job.logs()
    assert "answer 42 worker-1" in job.logs("worker-1")

    capsys.readouterr()
    shell.run_line_magic("kfnb", "list")
    listing = capsys.readouterr().out
    assert "quick" in listing and "Succeeded" in listing and "worker:2" in listing
    shell.run_line_magic("kfnb", "status quick")
    assert "Succeeded" in capsys.readouterr().out
    shell.run_line_magic("kfnb", "logs quick --replica worker-1")
    assert "answer 42 worker-1" in capsys.readouterr().out
    attached = shell.run_line_magic("kfnb", "attach quick")
    assert isinstance(attached, Job) and attached.phase == "Succeeded"


def test_names_are_unique_and_taken_names_refused(shell: InteractiveShell) -> None:
    first = tfjob(shell, "--wait", "print(1)\n")
    second = tfjob(shell, "--wait", "print(2)\n")
    assert first.name != second.name and first.name.startswith("tfjob-")
    message = one_line_usage_error(shell, f"--name {first.name}")
    assert "exists already: pick another --name" in message


def test_wait_raises_job_failed_with_the_replica_traceback(shell: InteractiveShell) -> None:
    cell = (
        "def inner():\n    raise ValueError('bad batch size')\nif tfjob.task_index == 1:\n"
        "    inner()\nimport time\ntime.sleep(60)\n"
    )
    started = time.monotonic()
    with pytest.raises(JobFailed) as error:
        tfjob(shell, "--name failing --workers 2 --wait", cell)
    assert time.monotonic() - started < 10
    failure = error.value
    assert failure.replica == "worker-1"
    assert failure.traceback and "ValueError: bad batch size" in failure.traceback
    assert "inner()" in failure.traceback
    rendered = "\n".join(failure._render_traceback_())
    assert "bad batch size" in rendered and rendered.splitlines()[-1].startswith("JobFailed:")
    # The failed job keeps its logs.
    assert "ValueError: bad batch size" in Job.attach("failing").logs("worker-1")


def test_ctrl_c_while_waiting_cancels_the_job(shell: InteractiveShell) -> None:
    main = threading.main_thread().ident
    assert main is not None

    def interrupt_once_started() -> None:
        # Ctrl-C while --wait waits: after the cell printed, not while it is still being
        # submitted (a loaded machine can take longer than any fixed delay to submit).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if "started" in Job.attach("cancelled").logs():
                    break
            except JobNotFound:  # not submitted yet
                pass
            time.sleep(0.1)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        tfjob(shell, "--name cancelled --wait", "import time\nprint('started')\ntime.sleep(60)\n")
    job = Job.attach("cancelled")
    assert job.phase == "Deleted"
    assert "started" in job.logs()


def test_delete_from_the_magic_keeps_logs_and_purge_removes_them(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], kfnb_home: Path
) -> None:
    job = tfjob(shell, "--name doomed", "import time\nprint('hello', flush=True)\ntime.sleep(60)\n")
    deadline = time.monotonic() + 15
    while "hello" not in job.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    shell.run_line_magic("kfnb", "delete doomed")
    assert "Deleted" in capsys.readouterr().out
    assert "hello" in job.logs()
    shell.run_line_magic("kfnb", "delete doomed --purge")
    assert not (kfnb_home / "jobs" / "doomed").exists()
    with pytest.raises(UsageError, match="no job named 'doomed'"):
        shell.run_line_magic("kfnb", "status doomed")


def test_kfnb_subcommand_mistakes(shell: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="unknown %kfnb command 'lst'"):
        shell.run_line_magic("kfnb", "lst")
    with pytest.raises(UsageError, match="no job named 'ghost'"):
        shell.run_line_magic("kfnb", "logs ghost")
    tfjob(shell, "--name two --workers 2 --wait", "print(1)\n")
    with pytest.raises(UsageError, match="has no replica 'worker-7'"):
        shell.run_line_magic("kfnb", "logs two --replica worker-7")


def test_names_that_are_paths_are_refused_by_every_command_and_nothing_is_touched(
    shell: InteractiveShell, kfnb_home: Path, tmp_path: Path
) -> None:
    # A directory that looks like a finished job, and a record beside it naming it.
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "manifest.json").write_text('{"spec": {"tfReplicaSpecs": {}}}')
    status = {"name": str(victim), "backend": "local", "phase": "Succeeded"}
    (victim / "status.json").write_text(json.dumps(status))
    record = {"record_version": 1, "name": str(victim), "backend": "local",
              "storage": str(kfnb_home / "jobs")}  # fmt: skip
    (tmp_path / "victim.json").write_text(json.dumps(record))
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for name in (str(victim), "../victim", "Not_A_Name"):
        for command in ("delete {} --purge", "delete {}", "attach {}", "status {}", "logs {}",
                        "tensorboard {}"):  # fmt: skip
            with pytest.raises(UsageError, match="is not a DNS-1035 label") as error:
                shell.run_line_magic("kfnb", command.format(name))
            assert "\n" not in str(error.value)
        for line in (f"{model} --name {name}", f"stop {name}", f"restart {name}"):
            with pytest.raises(UsageError, match="is not a DNS-1035 label"):
                shell.run_line_magic("serve", line)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_new_kernel_lists_attaches_and_deletes_a_running_job(
    shell: InteractiveShell, kfnb_home: Path
) -> None:
    tfjob(shell, "--name survivor", "import time\ntime.sleep(60)\n")
    # A second kernel: another process with the same KFNB_HOME.
    script = (
        "from IPython.testing.globalipapp import start_ipython\n"
        "ip = start_ipython(); ip.run_line_magic('load_ext', 'kfnb')\n"
        "ip.run_line_magic('kfnb', 'list')\n"
        "job = ip.run_line_magic('kfnb', 'attach survivor')\n"
        "print('PHASE', job.phase)\n"
        "ip.run_line_magic('kfnb', 'delete survivor')\n"
    )
    env = {**os.environ, "KFNB_HOME": str(kfnb_home)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "survivor" in out.stdout and "PHASE Running" in out.stdout
    assert Job.attach("survivor").phase == "Deleted"


def test_load_ext_imports_nothing_heavy() -> None:
    # Compared with the shell before the extension: IPython's test shell itself
    # imports matplotlib.
    code = (
        "import sys\nfrom IPython.testing.globalipapp import start_ipython\n"
        "ip = start_ipython(); before = set(sys.modules)\n"
        "ip.run_line_magic('load_ext', 'kfnb')\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    added = out.stdout.split()
    assert "kfnb.magics" in added
    heavy = (
        "tensorflow",
        "tensorboard",
        "kubernetes",
        "minio",
        "matplotlib",
        "ipywidgets",
        "cloudpickle",
        "yaml",
        "numpy",
    )
    assert [m for m in added if m.split(".")[0] in heavy] == []
