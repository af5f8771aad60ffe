"""The local Training Operator: runs one TFJob manifest's replicas as processes.

Started by `LocalBackend` as ``python -m kfnb.backends.supervisor JOB_DIR`` in a
session of its own, so the job survives a kernel restart, as on a cluster. It
copies the operator's semantics (Training Operator 1.9):

- ``TF_CONFIG`` on every replica when the job has more than one; the evaluator
  is not part of the cluster; addresses are ``localhost:<free port>``;
- success: the chief decides, else worker 0 (or all workers with
  ``successPolicy: AllWorkers``); remaining replicas are then stopped;
- a replica failure that is not retried fails the job and stops the others at
  once, so no collective op leaves a worker hanging;
- restart policies Never, OnFailure, Always and ExitCode (1-127 permanent,
  128 and above retried), ``backoffLimit`` and ``activeDeadlineSeconds``;
- as a container's, a replica's processes end with it: each replica leads a
  process group, killed when the replica ends or is stopped, and recorded in
  ``groups.json`` for whoever finds this supervisor killed (`process_groups`).

Each replica's output goes to ``logs/<replica>.log``; the job's state to
``status.json``, rewritten atomically on every change. With an s3:// store
(``KFNB_STORE`` in the manifest) the job directory is a local scratch copy: the
replicas upload as they run, and the supervisor uploads each status change and,
at the end, every replica's complete log before the final status, so a job that
reads finished here is complete in the bucket.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from kfnb._util import open_private, private_dir
from kfnb.backends.process_groups import group_of, record_group
from kfnb.spec import CODE_DIR, CONTAINER_NAME, PACKAGES_CONTAINER, PACKAGES_DIR
from kfnb.status import JobStatus, ReplicaStatus
from kfnb.storage import S3Store, StoreError

POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 2.0
RESTARTING_SECONDS = 1.0  # how long the job reads Restarting after a replica restarts
_PR_SET_PDEATHSIG = 1
log = logging.getLogger("kfnb.backends.supervisor")  # __name__ is __main__ when it runs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: each socket stays bound until all are picked."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(socket.socket())
            sockets[-1].bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    """Runs in each replica before exec: the kernel kills it if the supervisor dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the supervisor's own cleanup still applies


@dataclass
class Replica:
    type: str  # lower-case task type
    index: int
    restart_policy: str
    command: list[str]
    env: dict[str, str]
    gpus: int = 0
    process: subprocess.Popen[bytes] | None = None
    phase: str = "Pending"
    restarts: int = 0
    exit_code: int | None = None

    def ended(self, returncode: int, otherwise: str = "Failed") -> int:
        """Record the process's exit: Succeeded on 0, else ``otherwise``; the exit code."""
        code = self.exit_code = exit_code_of(returncode)
        self.phase = "Succeeded" if code == 0 else otherwise
        log.debug("%s exited with code %d: %s", self.name, code, self.phase)
        return code

    @property
    def name(self) -> str:
        return f"{self.type}-{self.index}"

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(self.type, self.index, self.phase, self.restarts, self.exit_code)


def _container(template: dict[str, Any]) -> dict[str, Any]:
    containers = template["spec"]["containers"]
    return next((c for c in containers if c["name"] == CONTAINER_NAME), containers[0])


def cluster_spec(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """TF_CONFIG's cluster: every type but the evaluator, one free local port each."""
    specs = {
        kind.lower(): spec.get("replicas", 1)
        for kind, spec in manifest["spec"]["tfReplicaSpecs"].items()
        if kind.lower() != "evaluator"
    }
    ports = iter(free_ports(sum(specs.values())))
    return {kind: [f"localhost:{next(ports)}" for _ in range(n)] for kind, n in specs.items()}


def local_paths(job_dir: Path) -> dict[str, str]:
    """A pod's paths on this machine: the bundle, and the packages its init container
    installs, cached per set of pins so that later jobs with the same pins reuse them."""
    paths = {CODE_DIR: str(job_dir / "code")}
    plan = job_dir / "code" / "packages.json"
    if plan.is_file():
        cache = Path(os.environ.get("KFNB_PACKAGES_CACHE") or job_dir / "packages")
        paths[PACKAGES_DIR] = str(cache / json.loads(plan.read_text())["key"])
    return paths


def _localized(
    container: dict[str, Any], job_dir: Path, python: str
) -> tuple[list[str], dict[str, str]]:
    """A container's command and environment with its pod paths mapped onto this machine."""
    paths = local_paths(job_dir)

    def here(value: str) -> str:
        for pod_path, local in paths.items():
            value = value.replace(pod_path, local)
        return value

    env = {e["name"]: here(str(e.get("value", ""))) for e in container.get("env", [])}
    env.pop("HOME", None)  # a pod's scratch HOME; processes here keep the user's
    command = [
        python if c == "python" else here(c)
        for c in container.get("command", []) + container.get("args", [])
    ]
    return command, env


def plan_replicas(manifest: dict[str, Any], job_dir: Path, python: str) -> list[Replica]:
    """The manifest's replicas as local processes, with TF_CONFIG as the operator sets it."""
    specs = manifest["spec"]["tfReplicaSpecs"]
    total = sum(spec.get("replicas", 1) for spec in specs.values())
    cluster = cluster_spec(manifest) if total != 1 else None
    replicas = []
    for kind, spec in specs.items():
        container = _container(spec["template"])
        command, base_env = _localized(container, job_dir, python)
        base_env["KFNB_ARTIFACTS"] = str(job_dir)
        gpus = int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        for index in range(spec.get("replicas", 1)):
            env = dict(base_env)
            # The runtime uploads this file to an s3:// store (in a pod it tees stdout).
            env["KFNB_LOG_FILE"] = str(job_dir / "logs" / f"{kind.lower()}-{index}.log")
            if cluster is not None:
                env["TF_CONFIG"] = json.dumps(
                    {
                        "cluster": cluster,
                        "task": {"type": kind.lower(), "index": index},
                        "environment": "cloud",
                    }
                )
            replicas.append(
                Replica(kind.lower(), index, spec.get("restartPolicy", "Never"), command, env, gpus)
            )
    return replicas


def exit_code_of(returncode: int) -> int:
    """A killed process reports -SIGNAL; a container reports 128 + SIGNAL."""
    return 128 - returncode if returncode < 0 else returncode


def retryable(policy: str, code: int) -> bool:
    if policy in ("OnFailure", "Always"):
        return code != 0 or policy == "Always"
    if policy == "ExitCode":
        return code >= 128  # 1-127 are permanent errors, 128+ are signals and retried
    return False


class Supervisor:
    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.manifest = json.loads((job_dir / "manifest.json").read_text())
        self.name = self.manifest["metadata"]["name"]
        self.run_policy = self.manifest["spec"].get("runPolicy", {})
        self.success_policy = self.manifest["spec"].get("successPolicy", "")
        self.python = os.environ.get("KFNB_PYTHON") or sys.executable
        self.replicas = plan_replicas(self.manifest, job_dir, self.python)
        self.gpu_pool = [g for g in os.environ.get("KFNB_LOCAL_GPUS", "").split(",") if g]
        self.status = JobStatus(
            self.name, "local", "Created", message=f"TFJob {self.name} is created."
        )
        self.stop_requested = False
        self._logs: dict[str, IO[bytes]] = {}
        self._next_gpu = 0
        self.store = job_store(self.manifest)
        self.not_uploaded: dict[str, str] = {}

    # -- processes -----------------------------------------------------------------

    def _gpu_env(self, replica: Replica) -> str:
        """CUDA_VISIBLE_DEVICES: like a pod, a replica sees only the GPUs it asked for."""
        if not replica.gpus or not self.gpu_pool:
            return ""
        chosen = [
            self.gpu_pool[(self._next_gpu + i) % len(self.gpu_pool)] for i in range(replica.gpus)
        ]
        self._next_gpu += replica.gpus
        return ",".join(chosen)

    def _spawn(
        self, name: str, command: list[str], env: dict[str, str], out: IO[bytes]
    ) -> subprocess.Popen[bytes]:
        """A process of the job, as a container: its own session, output to its log, and
        killed by the kernel if this supervisor dies. Its process group is recorded, so
        that what it starts is stopped with it even then (`kfnb.backends.process_groups`)."""
        process = subprocess.Popen(
            command,
            env=env,
            cwd=self.job_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        group = group_of(process.pid)
        if group is not None:
            record_group(self.job_dir, name, group)
        return process

    def start(self, replica: Replica) -> None:
        log_dir = private_dir(self.job_dir / "logs")
        out = self._logs.get(replica.name)
        if out is None:
            out = self._logs[replica.name] = open_private(log_dir / f"{replica.name}.log")
        if replica.restarts:
            out.write(f"--- kfnb: restart {replica.restarts} of {replica.name} ---\n".encode())
            out.flush()
        # TF_CONFIG comes from the manifest only: one the kernel set must not leak into
        # a single-replica job, which the operator runs without TF_CONFIG.
        inherited = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env = {**inherited, **replica.env, "CUDA_VISIBLE_DEVICES": self._gpu_env(replica)}
        replica.process = self._spawn(replica.name, replica.command, env, out)
        replica.phase, replica.exit_code = "Running", None
        log.debug("started %s: process %d", replica.name, replica.process.pid)

    def stop(self, replicas: list[Replica]) -> None:
        """SIGTERM each replica's process group, SIGKILL what is left after a grace period."""
        alive = []
        for replica in replicas:
            if replica.process is None:
                continue
            code = reap(replica.process)
            if code is None:
                alive.append((replica, replica.process))
            elif replica.phase == "Running":  # it ended on its own since the last look
                replica.ended(code)
        for _, process in alive:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        # reap() kills the rest of a group whose leader has exited: nothing is left behind.
        while any(reap(p) is None for _, p in alive) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        for replica, process in alive:
            if reap(process) is None:
                _signal_group(process, signal.SIGKILL)
                process.wait()
            # Stopped: ended by kfnb, as cleanPodPolicy deletes a pod; unless it had
            # just finished on its own.
            replica.ended(process.returncode, otherwise="Stopped")

    def let_workers_finish(self) -> None:
        """After success, give the other training replicas a moment to end on their own.

        Under MultiWorkerMirroredStrategy they finish with the chief, a little later
        (worker 1 still saving its copy of the model): stopping them at once would
        cut their logs short. Parameter servers never end on their own: not them.
        """
        training = [
            r
            for r in self.replicas
            if r.type in ("chief", "master", "worker") and r.process is not None
        ]
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline:
            running = [r for r in training if r.process is not None and reap(r.process) is None]
            if not running:
                break
            time.sleep(POLL_SECONDS)
        for replica in training:
            process = replica.process
            if replica.phase == "Running" and process is not None:
                code = reap(process)
                if code is not None:
                    replica.ended(code)

    # -- state ---------------------------------------------------------------------

    def publish(self, **changes: Any) -> None:
        status = replace(self.status, **changes, replicas=tuple(r.status() for r in self.replicas))
        if status != self.status:
            if status.phase != self.status.phase:
                log.debug("job %s: %s -> %s", self.name, self.status.phase, status.phase)
            self.status = status
            if self.store is not None:  # the store first: finished here means complete there
                self.upload("status.json", json.dumps(status.to_json(), indent=1).encode())
            status.write(self.job_dir / "status.json")

    def upload(self, key: str, data: bytes, attempts: int = 1) -> None:
        """Write ``key`` to the job's s3:// store; a failure is kept for the final status."""
        assert self.store is not None
        for attempt in range(attempts):
            try:
                self.store.write(key, data)
            except StoreError as err:
                self.not_uploaded[key] = str(err)
                print(f"kfnb: {err}", file=sys.stderr, flush=True)
                time.sleep(min(0.5 * 2**attempt, 4.0) if attempt + 1 < attempts else 0)
            else:
                self.not_uploaded.pop(key, None)
                return

    def upload_final(self) -> tuple[str, ...]:
        """Every replica's whole log and status; what the job could not upload, its and theirs."""
        missing = set()
        for replica in self.replicas:
            for key in (f"logs/{replica.name}.log", f"status/{replica.name}.json"):
                path = self.job_dir / key
                if path.exists():
                    self.upload(key, path.read_bytes(), attempts=3)
            try:
                record = json.loads((self.job_dir / "status" / f"{replica.name}.json").read_text())
            except (OSError, ValueError):
                continue
            missing |= set(record.get("not_uploaded", ()))
        missing -= {k for k in missing if k.startswith(("logs/", "status/"))}  # uploaded here
        return tuple(sorted(missing | set(self.not_uploaded) - {"status.json"}))

    def finish(self, phase: str, reason: str, message: str) -> None:
        if phase == "Succeeded":
            self.let_workers_finish()
        self.stop(self.replicas)
        for out in self._logs.values():
            out.close()
        changes: dict[str, Any] = {}
        if self.store is not None:
            missing = self.upload_final()
            if missing:
                changes["not_uploaded"] = missing
                message += f" Not uploaded to {self.store.url}: {', '.join(missing)}."
        self.publish(
            phase=phase, reason=reason, message=message, completion_time=time.time(), **changes
        )

    def decided(self) -> tuple[str, str, str] | None:
        """The job's outcome if the replicas decide it now, as the operator would."""
        by_type: dict[str, list[Replica]] = {}
        for r in self.replicas:
            by_type.setdefault(r.type, []).append(r)
        for kind in ("chief", "master", "evaluator", "ps", "worker"):
            failed = [r for r in by_type.get(kind, []) if r.phase == "Failed"]
            if failed:
                label = {"ps": "PS"}.get(kind, kind.capitalize())
                return (
                    "Failed",
                    "TFJobFailed",
                    f"TFJob {self.name} has failed because {len(failed)} {label} "
                    f"replica(s) failed.",
                )
        deciders = by_type.get("chief") or by_type.get("master")
        workers = by_type.get("worker", [])
        if deciders:
            done = all(r.phase == "Succeeded" for r in deciders)
        elif self.success_policy == "AllWorkers":
            done = all(r.phase == "Succeeded" for r in workers)
        else:
            done = bool(workers) and workers[0].phase == "Succeeded"
        if done:
            return "Succeeded", "TFJobSucceeded", f"TFJob {self.name} successfully completed."
        return None

    # -- the loop ------------------------------------------------------------------

    def install_packages(self) -> bool:
        """Run the pods' kfnb-packages init container once for the job (its target is
        shared by the replicas here); on failure the job fails with the installer's words."""
        templates = self.manifest["spec"]["tfReplicaSpecs"].values()
        init = next(
            (
                c
                for spec in templates
                for c in spec["template"]["spec"].get("initContainers", [])
                if c["name"] == PACKAGES_CONTAINER
            ),
            None,
        )
        if init is None:
            return True
        command, env = _localized(init, self.job_dir, self.python)
        self.publish(message=f"TFJob {self.name} is installing packages ({PACKAGES_CONTAINER}).")
        log_path = self.job_dir / "logs" / f"{PACKAGES_CONTAINER}.log"
        with open_private(log_path) as out:
            process = self._spawn(PACKAGES_CONTAINER, command, {**os.environ, **env}, out)
            while reap(process) is None:
                if self.stop_requested:
                    _signal_group(process, signal.SIGKILL)
                    process.wait()
                    return True  # run() sees the stop and finishes as Deleted
                time.sleep(POLL_SECONDS)
        if self.store is not None:
            self.upload(f"logs/{log_path.name}", log_path.read_bytes(), attempts=3)
        if process.returncode == 0:
            return True
        said = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        reason = next(
            (ln for ln in reversed(said) if ln.startswith("kfnb: ")), said[-1] if said else ""
        )
        self.finish(
            "Failed",
            "InitContainerFailed",
            f"TFJob {self.name} has failed: its {PACKAGES_CONTAINER} init container exited with "
            f"code {process.returncode}: {reason.removeprefix('kfnb: ')}",
        )
        return False

    def run(self) -> JobStatus:
        self.publish(start_time=time.time())
        if not self.install_packages():
            return self.status
        for replica in self.replicas:
            self.start(replica)
        self.publish(
            phase="Running", reason="TFJobRunning", message=f"TFJob {self.name} is running."
        )
        deadline = self.run_policy.get("activeDeadlineSeconds")
        backoff_limit = self.run_policy.get("backoffLimit")
        started = time.monotonic()
        last_restart = -RESTARTING_SECONDS
        while True:
            if self.stop_requested:
                self.finish("Deleted", "TFJobDeleted", f"TFJob {self.name} was deleted.")
                break
            if deadline is not None and time.monotonic() - started > deadline:
                self.finish(
                    "Failed",
                    "DeadlineExceeded",
                    f"TFJob {self.name} has failed because it ran longer than "
                    f"activeDeadlineSeconds ({deadline} s).",
                )
                break
            restarting = False
            for replica in self.replicas:
                process = replica.process
                if replica.phase != "Running" or process is None:
                    continue
                returncode = reap(process)
                if returncode is None:
                    continue
                code = replica.ended(returncode)
                if not retryable(replica.restart_policy, code):
                    continue
                total_restarts = sum(r.restarts for r in self.replicas)
                if backoff_limit is not None and total_restarts >= backoff_limit:
                    replica.phase = "Failed"
                    self.finish(
                        "Failed",
                        "BackoffLimitExceeded",
                        f"TFJob {self.name} has failed because it has reached the "
                        f"specified backoff limit ({backoff_limit}).",
                    )
                    return self.status
                replica.restarts += 1
                restarting = True
                self.start(replica)
            if restarting:
                last_restart = time.monotonic()
            outcome = self.decided()
            if outcome is not None:
                self.finish(*outcome)
                break
            if time.monotonic() - last_restart < RESTARTING_SECONDS:
                self.publish(
                    phase="Restarting",
                    reason="TFJobRestarting",
                    message=f"TFJob {self.name} is restarting a replica.",
                )
            else:
                self.publish(
                    phase="Running",
                    reason="TFJobRunning",
                    message=f"TFJob {self.name} is running.",
                )
            time.sleep(POLL_SECONDS)
        return self.status


def job_store(manifest: dict[str, Any]) -> S3Store | None:
    """The job's s3:// store from ``KFNB_STORE`` in its manifest; None for a local one.

    Settings come from the manifest's env over this process's (the keys only ever
    from the environment).
    """
    from kfnb.artifact_sync import S3Config

    env: dict[str, str] = {}
    for spec in manifest["spec"]["tfReplicaSpecs"].values():
        container = _container(spec["template"])
        env.update({e["name"]: str(e.get("value", "")) for e in container.get("env", [])})
    url = env.get("KFNB_STORE", "")
    if not url.startswith("s3://"):
        return None
    return S3Store(url, S3Config.from_env({**os.environ, **env}))


def reap(process: subprocess.Popen[bytes]) -> int | None:
    """The process's return code once it has exited, else None; like `Popen.poll`, but
    before reaping it, the rest of its group is killed: as with a container, what the
    replica started ends with it. While the leader is unreaped its pid, the group's id,
    cannot be reused, so the kill cannot reach another group."""
    if process.returncode is not None:
        return process.returncode
    if hasattr(os, "waitid"):
        try:
            flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
            if os.waitid(os.P_PID, process.pid, flags) is None:
                return None
        except ChildProcessError:
            return process.poll()  # reaped already (by Popen itself)
    elif process.poll() is None:  # no waitid (macOS): the group is killed right after
        return None
    _signal_group(process, signal.SIGKILL)
    return process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    level = os.environ.get("KFNB_LOG_LEVEL", "").upper()
    if level in ("DEBUG", "INFO"):  # the kernel's Kfnb.log_level, into supervisor.log
        from kfnb.config import configure_logging

        configure_logging(level)
    supervisor = Supervisor(Path(argv[0]))

    def request_stop(signum: int, frame: Any) -> None:
        supervisor.stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closing terminal must not end the job
    try:
        status = supervisor.run()
    except BaseException:
        supervisor.finish(
            "Failed",
            "SupervisorError",
            "kfnb's local supervisor failed; see supervisor.log in the job directory.",
        )
        raise
    return 0 if status.phase == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
