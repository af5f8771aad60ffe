"""Runs one replica of a kfnb job: unpacks the bundle and executes the cell.

This file is copied into every job's bundle and runs in the replica's
container, which may have nothing but Python and TensorFlow. So it imports
only the standard library (TensorFlow on demand) and never the rest of kfnb:
the few helpers it shares with kfnb (an atomic JSON write, the numbered-version
test, an exception's first line; see ``kfnb/_util.py``) are copies of their own.

The cell sees a ``tfjob`` object: its role in the cluster and where to write.
When the cell ends, ``status/<replica>.json`` records the exit code and, on
failure, the traceback, and the chief's model is published as the next
numeric version under ``model/``, the layout TF Serving watches.

With ``KFNB_STORE=s3://bucket/prefix/<job>`` the replica writes to a local
scratch directory as always, and ``artifact_sync.py`` (shipped beside this
file, with the minio client under ``vendor/``) uploads its log, TensorBoard
events and status from a background thread every few seconds, then the model
and the final status when the cell ends, also when it fails. What could not be
uploaded is listed in the replica's status (``not_uploaded``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import linecache
import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRAINING_TYPES = ("chief", "master", "worker")
OUTPUT_LIMIT = 64 * 1024  # bytes of JSON per output: small values, as Argo's parameters
CHECKPOINTS = "checkpoints"  # the job's checkpoint_dir, relative to its store
PARAM_PREFIX = "KFNB_PARAM_"  # a sweep trial's parameters, one variable each
REPORTS = "reports.jsonl"  # what tfjob.report() recorded, beside tensorboard/


class TFJobContext:
    """What a cell needs to know about its replica. Available in the cell as ``tfjob``."""

    def __init__(self, job_name: str, artifacts: Path, tf_config: dict[str, Any]) -> None:
        self.job_name = job_name
        self.artifacts = artifacts
        self.cluster: dict[str, list[str]] = tf_config.get("cluster", {})
        task = tf_config.get("task", {})
        self.task_type: str = task.get("type", "worker")
        self.task_index: int = int(task.get("index", 0))
        self._model_dir: Path | None = None
        self._logdir: Path | None = None
        self._scratch: list[Path] = []
        self.sync: Any = None  # artifact_sync.Syncer when the job's store is s3://
        self._report_steps: dict[str, int] = {}
        self.outputs: dict[str, Any] = {}
        inputs = json.loads(os.environ.get("KFNB_INPUTS") or "{}")
        self.inputs: dict[str, StepInput] = {
            k: StepInput(k, v, self.fetch) for k, v in inputs.items()
        }

    def output(self, name: str, value: Any) -> None:
        """Record a small JSON value as this step's output ``name`` (a pipeline's
        ``--when "STEP.NAME >= 0.97"`` and later steps' ``tfjob.inputs`` read it).
        Only the chief's (or worker 0's) outputs are kept, as its model is."""
        if not (name.isidentifier() and name.isascii()):
            raise ValueError(f"output name {name!r} is not an identifier: use letters, digits, _")
        try:
            text = json.dumps(value)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"output {name!r} is not JSON ({err}): pass a number, str, list "
                "or dict; save larger things under tfjob.model_dir"
            ) from None
        if len(text) > OUTPUT_LIMIT:
            raise ValueError(
                f"output {name!r} is {len(text)} bytes of JSON, over "
                f"{OUTPUT_LIMIT}: save it under tfjob.model_dir instead"
            )
        self.outputs[name] = json.loads(text)
        where = os.environ.get("KFNB_OUTPUTS_DIR")  # Argo reads output parameters from files
        if where and self.is_chief:
            Path(where).mkdir(parents=True, exist_ok=True)
            (Path(where) / name).write_text(text)  # JSON: "cat" is a string to govaluate

    @property
    def replica(self) -> str:
        return f"{self.task_type}-{self.task_index}"

    @property
    def num_workers(self) -> int:
        """Replicas that train: the chief and the workers (1 when not distributed)."""
        return max(1, sum(len(self.cluster.get(t, [])) for t in TRAINING_TYPES))

    @property
    def is_chief(self) -> bool:
        """The chief, or worker 0 when the job has none: the replica whose output is kept."""
        if self.task_type in ("chief", "master"):
            return True
        has_chief = any(self.cluster.get(t) for t in ("chief", "master"))
        return self.task_type == "worker" and self.task_index == 0 and not has_chief

    def _scratch_dir(self, what: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"kfnb-{self.job_name}-{self.replica}-{what}-"))
        self._scratch.append(path)
        return path

    @property
    def model_dir(self) -> str:
        """Where to save the model.

        On the chief: the next version directory under ``model/`` (staged, and
        published when the cell succeeds, so a model server never loads half a
        model). Elsewhere a scratch directory removed afterwards: under
        MultiWorkerMirroredStrategy every worker must save, only the chief's copy is kept.
        """
        if self._model_dir is None:
            if self.is_chief:
                root = _private_dir(self.artifacts / "model")
                # kfnb._util.version_number's test: ASCII digits only, as TF Serving reads them
                versions = [int(p.name) for p in root.iterdir() if _is_version(p.name)]
                if self.sync is not None:  # versions other runs left in the bucket count too
                    versions += self.sync.versions()
                self._model_dir = root / f".staging-{max(versions, default=0) + 1}"
                shutil.rmtree(self._model_dir, ignore_errors=True)
                self._model_dir.mkdir(0o700)
            else:
                self._model_dir = self._scratch_dir("model")
        return str(self._model_dir)

    @property
    def logdir(self) -> str:
        """Where to write TensorBoard events (the chief's and the evaluator's are kept)."""
        if self._logdir is None:
            if self.is_chief:
                self._logdir = self.artifacts / "tensorboard"
            elif self.task_type == "evaluator":
                self._logdir = self.artifacts / "tensorboard" / "evaluator"
            else:
                self._logdir = self._scratch_dir("tensorboard")
            _private_dir(self._logdir)
        return str(self._logdir)

    def tensorboard(self, **kwargs: Any) -> Any:
        """A Keras TensorBoard callback writing to ``logdir``."""
        import tensorflow as tf

        return tf.keras.callbacks.TensorBoard(log_dir=self.logdir, **kwargs)

    @property
    def checkpoint_dir(self) -> str:
        """Where to keep what a restarted replica resumes from: ``checkpoints/`` in the
        job's store, one directory for the whole job that outlives its replicas' restarts.

        Every replica sees the same directory, as workers on a cluster see one shared
        file system: under MultiWorkerMirroredStrategy write from the chief only (Keras'
        ``BackupAndRestore`` does: the others write a temporary copy and remove it).
        With an ``s3://`` store it is uploaded as it changes, and downloaded when a
        replica starts.
        """
        return str(_private_dir(self.artifacts / CHECKPOINTS))

    def backup_and_restore(self, **kwargs: Any) -> Any:
        """A Keras ``BackupAndRestore`` callback backing up into ``checkpoint_dir``: with
        ``--restart-policy OnFailure`` a replica that dies in epoch 6 restarts, and its
        ``fit`` goes on from epoch 6 instead of epoch 0. Keyword arguments go to Keras."""
        import tensorflow as tf

        backup_dir = os.path.join(self.checkpoint_dir, "backup")
        base = tf.keras.callbacks.BackupAndRestore
        methods = {**_pushing_methods(base, self._push_checkpoints), **_saying_methods(base)}
        return type(base.__name__, (base,), methods)(backup_dir, **kwargs)

    def _push_checkpoints(self) -> None:
        """Upload a backup before training goes on, so a restart finds the newest one."""
        if self.sync is not None and self.is_chief:
            self.sync.sync(only=CHECKPOINTS)

    def fetch(self, url: str) -> str:
        """A local path to ``url``: an ``s3://`` object (e.g. a data set uploaded with
        ``kfnb.storage.upload_dataset``) is downloaded into this user's cache, and
        downloaded again only when the object changed; paths pass.

        The cache is the user's own (``KFNB_DATA_CACHE``, else ``~/.cache/kfnb/data``,
        0700): in a shared temp directory another user could plant a data set.
        """
        if not url.startswith("s3://"):
            return url
        sync = _sync_module()
        bucket, key = sync.parse_url(url)
        if not key or any(part in ("", ".", "..") for part in key.split("/")):
            raise ReplicaError(f"cannot fetch {url}: name one object, s3://BUCKET/KEY")
        config = sync.S3Config.from_env(os.environ)
        cache = data_cache(os.environ) / bucket
        target = sync.inside(cache, key)
        if target is None or target == cache:
            raise ReplicaError(
                f"fetching {url}: that path leads outside the local copy's directory {cache}: "
                "name one object, without '..' segments"
            )
        try:
            sync.fetch_cached(sync.make_client(config), bucket, key, target)
        except sync.storage_errors() as exc:
            raise ReplicaError(sync.describe_error(exc, config, f"fetching {url}")) from exc
        return str(target)

    def finish(self, succeeded: bool) -> str | None:
        """Publish the chief's model on success, and remove scratch directories."""
        published = None
        staged = self._model_dir
        if staged is not None and staged.name.startswith(".staging-"):
            if succeeded and any(staged.iterdir()):
                target = staged.with_name(staged.name.removeprefix(".staging-"))
                staged.rename(target)
                published = str(target)
            else:
                shutil.rmtree(staged, ignore_errors=True)
        for path in self._scratch:
            shutil.rmtree(path, ignore_errors=True)
        return published

    @property
    def params(self) -> dict[str, Any]:
        """This trial's parameters in a sweep (``{}`` outside one): ``KFNB_PARAM_<name>``
        variables, which Katib fills from ``${trialParameters.<name>}``; numbers as numbers."""
        found: dict[str, Any] = {}
        for key, text in os.environ.items():
            if key.startswith(PARAM_PREFIX) and len(key) > len(PARAM_PREFIX):
                try:
                    found[key[len(PARAM_PREFIX) :]] = json.loads(text)
                except ValueError:
                    found[key[len(PARAM_PREFIX) :]] = text  # a categorical string
        return found

    def report(self, step: int | None = None, **metrics: float) -> None:
        """Report metrics, e.g. ``tfjob.report(accuracy=0.91)`` after each epoch.

        The chief prints ``name=value`` lines, as Katib's StdOut metrics collector reads
        them, and keeps them with their ``step`` (default: one more than the metric's
        last) in ``reports.jsonl``: a sweep's objective and its early stopping read them.
        """
        if not self.is_chief:
            return
        path = self.artifacts / REPORTS
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as out:
            for name, value in metrics.items():
                number = float(value)
                at = self._report_steps.get(name, -1) + 1 if step is None else int(step)
                self._report_steps[name] = at
                print(f"{name}={number!r}", flush=True)
                out.write(json.dumps({"name": name, "step": at, "value": number}) + "\n")

    def __repr__(self) -> str:
        return (
            f"<tfjob {self.job_name} {self.replica}: chief={self.is_chief} "
            f"num_workers={self.num_workers}>"
        )


class StepInput:
    """What an earlier pipeline step left: ``outputs`` (its ``tfjob.output`` values) and
    ``model_dir`` (its newest model in the store, "" when it saved none)."""

    def __init__(self, step: str, data: dict[str, Any], fetch: Any = None) -> None:
        self.step = step
        self._outputs: dict[str, Any] | None = data.get("outputs")
        # In an Argo Workflow a TFJob step's outputs are in its deciding replica's status
        # in the store (an s3:// URL or a path on the claim), read when first asked for.
        self._status: str = data.get("status") or ""
        self._fetch = fetch
        self.model_dir: str = data.get("model_dir") or ""
        self.job: str = data.get("job") or ""

    @property
    def outputs(self) -> dict[str, Any]:
        if self._outputs is None:
            self._outputs = {}
            if self._status:
                path = self._fetch(self._status) if self._fetch else self._status
                self._outputs = dict(json.loads(Path(path).read_text()).get("outputs") or {})
        return self._outputs

    def __repr__(self) -> str:
        return f"<step {self.step}: outputs={self.outputs} model_dir={self.model_dir!r}>"


def _pushing_methods(base: Any, push: Any) -> dict[str, Any]:
    """``on_epoch_end`` and ``on_train_batch_end`` of ``base`` (where Keras 2 and 3 save
    their backup) and ``on_train_end`` (where they delete it), each followed by ``push``,
    which uploads (or removes) when the store is s3://."""

    def on_epoch_end(self: Any, epoch: int, logs: Any = None) -> None:
        base.on_epoch_end(self, epoch, logs)
        push()

    def on_train_batch_end(self: Any, batch: int, logs: Any = None) -> None:
        base.on_train_batch_end(self, batch, logs)
        if self.save_freq not in ("epoch", False):
            push()

    def on_train_end(self: Any, logs: Any = None) -> None:
        base.on_train_end(self, logs)
        push()

    return {
        "on_epoch_end": on_epoch_end,
        "on_train_batch_end": on_train_batch_end,
        "on_train_end": on_train_end,
    }


def _saying_methods(base: Any) -> dict[str, Any]:
    """``on_train_begin`` and ``on_epoch_begin`` of ``base`` that say in the log when
    ``fit`` goes on from a backup, and at which epoch (1-based, as Keras counts)."""

    def on_train_begin(self: Any, logs: Any = None) -> None:
        backup = Path(self.backup_dir)  # looked at before Keras restores from it
        self._kfnb_resuming = backup.is_dir() and any(p.is_file() for p in backup.rglob("*"))
        base.on_train_begin(self, logs)

    def on_epoch_begin(self: Any, epoch: int, logs: Any = None) -> None:
        base.on_epoch_begin(self, epoch, logs)
        if getattr(self, "_kfnb_resuming", False):
            self._kfnb_resuming = False
            epochs = self.params.get("epochs", "?")
            print(f"kfnb: resuming from the backup at epoch {epoch + 1}/{epochs}", flush=True)

    return {"on_train_begin": on_train_begin, "on_epoch_begin": on_epoch_begin}


class ReplicaError(Exception):
    """The replica cannot run the bundle; the message says what to change."""


def _check_environment(bundle: dict[str, Any]) -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if bundle["names"] and not bundle.get("portable") and bundle["python"] != here:
        raise ReplicaError(
            f"the notebook runs Python {bundle['python']} but this replica runs Python {here}, "
            f"so the notebook's pickled names cannot be loaded: use an image with Python "
            f"{bundle['python']} (--image)"
        )
    legacy = os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    if legacy and importlib.util.find_spec("tf_keras") is None:
        raise ReplicaError(
            "this multi-worker job uses tf-keras (TF_USE_LEGACY_KERAS=1), which is not installed "
            "here: pip install tf-keras matching TensorFlow, or pass --env TF_USE_LEGACY_KERAS=0"
        )


def gpu_warnings() -> list[str]:
    """A replica that asked for GPUs (``KFNB_GPUS``) and in which TensorFlow sees none
    says so, with the likely reason: not a silent run on CPU."""
    asked = os.environ.get("KFNB_GPUS", "0")
    if not asked.isdigit() or int(asked) == 0:
        return []
    try:
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return []
    except Exception:  # TensorFlow cannot load here: the cell's own import says why
        return []
    return [f"this replica asked for {asked} GPU(s) but TensorFlow sees none: {_no_gpu_reason(tf)}"]


def _no_gpu_reason(tf: Any) -> str:
    build = tf.sysconfig.get_build_info()
    if not build.get("is_cuda_build"):
        return (
            f"this TensorFlow {tf.__version__} is built without CUDA (a CPU build): use a "
            f"-gpu image, or install tensorflow[and-cuda]=={tf.__version__} in the image"
        )
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1")
    devices = [d for d in os.listdir("/dev") if d.removeprefix("nvidia").isdigit()]
    if hidden or not devices:
        return (
            "no GPU device was given to this replica: its node has none free, or no NVIDIA "
            "device plugin assigns them (`%kfnb nodes` shows the GPUs per node)"
        )
    cuda = f"CUDA {build.get('cuda_version', '?')} and cuDNN {build.get('cudnn_version', '?')}"
    return (
        f"the GPU is there but TensorFlow {tf.__version__} cannot use it, most likely because "
        f"the image lacks the {cuda} libraries it is built for: install "
        f"tensorflow[and-cuda]=={tf.__version__} in the image"
    )


def _resolve_module(reference: str) -> Any:
    """``tensorflow:keras.layers`` is resolved by attribute, so tf.keras follows the replica."""
    if ":" in reference:
        module, attrs = reference.split(":", 1)
        value: Any = importlib.import_module(module)
        for attr in attrs.split("."):
            value = getattr(value, attr)
        return value
    return importlib.import_module(reference)


def load_namespace(code_dir: Path, context: TFJobContext) -> dict[str, Any]:
    """The cell's globals: the notebook's shipped names, its modules, and ``tfjob``."""
    bundle = json.loads((code_dir / "bundle.json").read_text())
    _check_environment(bundle)
    include = code_dir / "include"
    if include.is_dir():
        sys.path.insert(0, str(include))
    # An installed cloudpickle wins; the bundle's copy serves stock images.
    sys.path.append(str(code_dir / "vendor"))
    sources = json.loads((code_dir / "sources.json").read_text())
    for filename, text in sources.items():
        lines = text.splitlines(keepends=True)
        linecache.cache[filename] = (len(text), None, lines, filename)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    for name, reference in bundle["modules"].items():
        namespace[name] = _resolve_module(reference)
    payloads = pickle.loads((code_dir / "names.pkl").read_bytes())
    for name, payload in payloads.items():
        namespace[name] = pickle.loads(payload)
    definitions = code_dir / "definitions.json"
    if definitions.exists():
        _define(json.loads(definitions.read_text()), namespace)
    namespace["tfjob"] = context
    return namespace


def _define(definitions: list[dict[str, Any]], namespace: dict[str, Any]) -> None:
    """Exec the notebook's functions and classes that travel as source, in order, at
    their own cell's lines, so tracebacks show them as the notebook wrote them."""
    for definition in definitions:
        padded = "\n" * (definition["line"] - 1) + definition["source"]
        exec(compile(padded, definition["filename"], "exec", dont_inherit=True), namespace)
        for alias in definition["aliases"]:
            namespace[alias] = namespace[definition["name"]]


def _parameters(text: str) -> dict[str, Any]:
    """A pipeline run's parameters over the notebook's values: ``{name: JSON text}`` as
    Argo substitutes ``{{workflow.parameters.NAME}}``; text that is not JSON is a string."""
    found = {}
    for name, value in json.loads(text).items():
        try:
            found[name] = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            found[name] = value
    return found


def _format_exception(exc: BaseException) -> str:
    """The traceback without this file's own frames, as the user's cell raised it."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _is_version(name: str) -> bool:
    return name.isascii() and name.isdigit()


def _private_dir(path: Path) -> Path:
    """``path`` and the parents it lacks made 0700: artifact_sync's (kfnb._util's twin)."""
    made: Path = _sync_module().private_dir(path)
    return made


def _write_status(path: Path, record: dict[str, Any]) -> None:
    # kfnb._util.write_json's own copy: this file runs where the rest of kfnb is not.
    # A temporary of its own (0600, a unique name): writers never share one.
    _private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(record, indent=1))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def data_cache(env: Mapping[str, str]) -> Path:
    """This user's cache of fetched objects, made 0700 if new; ReplicaError if it is
    not this user's alone (another user could have planted or may read files there)."""
    given = env.get("KFNB_DATA_CACHE")
    cache_home = env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    path = _private_dir(Path(given) if given else Path(cache_home) / "kfnb" / "data")
    found = path.lstat()
    if found.st_uid != os.getuid() or found.st_mode & 0o077:
        raise ReplicaError(
            f"the data cache {path} is not this user's alone (owner {found.st_uid}, mode "
            f"{found.st_mode & 0o777:o}): remove it, or set KFNB_DATA_CACHE to a directory "
            "of your own"
        )
    return path


_SYNC_LOADING = threading.Lock()


def _sync_module() -> Any:
    """``artifact_sync.py`` beside this file, loaded by path: this file imports no kfnb.
    Loaded under a lock: the module is in sys.modules before its body has run, and a
    second thread (status writers) must not take the half-made module."""
    name = "kfnb_artifact_sync"
    with _SYNC_LOADING:
        if name not in sys.modules:
            _load_sync_module(name)
    return sys.modules[name]


def _load_sync_module(name: str) -> None:
    path = Path(__file__).with_name("artifact_sync.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"{path} is missing"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while defining
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


class _Uploads:
    """The replica's side of an s3:// store: a Syncer and where each thing goes."""

    def __init__(self, url: str, code_dir: Path, context: TFJobContext) -> None:
        vendor = str(code_dir / "vendor")
        if vendor not in sys.path:
            sys.path.append(vendor)  # an installed minio wins over the bundle's copy
        sync = _sync_module()
        self.config = sync.S3Config.from_env(os.environ)
        try:
            self.bucket, self.prefix = sync.parse_url(url)
            client = sync.make_client(self.config)
        except sync.StoreError as err:
            raise ReplicaError(str(err)) from err
        interval = float(os.environ.get("KFNB_SYNC_SECONDS") or sync.SYNC_SECONDS)
        self.syncer = sync.Syncer(client, self.config, self.bucket, self.prefix, interval)
        self._tee: _Tee | None = None
        log = os.environ.get("KFNB_LOG_FILE")
        if not log:  # in a pod the log is stdout: keep a copy to upload
            log = str(context.artifacts / "logs" / f"{context.replica}.log")
            self._tee = _Tee(Path(log))
            self._restore_checkpoints(sync, context.artifacts / CHECKPOINTS)
        self.syncer.watch(Path(log), f"logs/{context.replica}.log")
        if context.is_chief:
            self.syncer.watch(context.artifacts / "tensorboard", "tensorboard")
            self.syncer.watch(context.artifacts / REPORTS, REPORTS)  # tfjob.report()'s
            # Keras 2 writes a checkpoint's state file last, Keras 3 its metadata: so here.
            last = ("checkpoint", "training_metadata.json")
            self.syncer.watch(context.artifacts / CHECKPOINTS, CHECKPOINTS, mirror=True, last=last)
        elif context.task_type == "evaluator":
            evaluator = context.artifacts / "tensorboard" / "evaluator"
            self.syncer.watch(evaluator, "tensorboard/evaluator")
        self.status_key = f"status/{context.replica}.json"

    def _restore_checkpoints(self, sync: Any, local: Path) -> None:
        """The job's checkpoints from the bucket, for a replica in a pod of its own (a
        fresh pod has none; a restarted container has what it had, older than the
        chief's). The local supervisor's replicas share one directory: nothing to do."""
        prefix = f"{self.prefix}/{CHECKPOINTS}" if self.prefix else CHECKPOINTS
        try:
            got = sync.download_newer(self.syncer.client, self.bucket, prefix, local)
        except sync.storage_errors() as exc:
            raise ReplicaError(
                sync.describe_error(exc, self.config, "restoring checkpoints")
            ) from exc
        if got:
            print(f"kfnb: {len(got)} checkpoint file(s) restored from the job's store", flush=True)

    def finish(self, published: str | None) -> dict[str, str]:
        """Upload the model, then the rest with retries; what is still missing, and why."""
        if published:
            version = Path(published).name
            self.syncer.upload_tree(Path(published), f"model/{version}", last=("saved_model.pb",))
        if self._tee is not None:
            self._tee.close()
        missing: dict[str, str] = self.syncer.close()
        return missing


class _Tee:
    """Copies this process's stdout and stderr (TensorFlow's C++ logs too) into a file."""

    def __init__(self, path: Path) -> None:
        _private_dir(path.parent)
        self.file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = os.dup(1)
        read, write = os.pipe()
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        self.read = read
        self.thread = threading.Thread(target=self._copy, name="kfnb-tee", daemon=True)
        self.thread.start()

    def _copy(self) -> None:
        while chunk := os.read(self.read, 65536):
            os.write(self.saved, chunk)
            self.file.write(chunk)
            self.file.flush()

    def close(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved, 1)  # the pipe's last writers are gone: the copier sees EOF
        os.dup2(self.saved, 2)
        self.thread.join(timeout=5)
        self.file.close()


def artifacts_dir(env: Mapping[str, str]) -> Path:
    """The directory this replica writes its files into: ``KFNB_ARTIFACTS``. With an
    ``s3://`` store (``KFNB_STORE``) it is scratch the uploads read from; a URL there
    (as earlier kfnb manifests set it) is not a path, so scratch in the temp directory
    is used, never the working directory, which a pod may mount read-only."""
    given = env.get("KFNB_ARTIFACTS", "")
    if given and "://" not in given:
        return Path(given)
    if given or env.get("KFNB_STORE", "").startswith("s3://"):
        job = env.get("KFNB_JOB_NAME", "job")
        return Path(tempfile.gettempdir()) / "kfnb-artifacts" / job
    return Path(os.getcwd())


def main() -> int:
    code_dir = Path(os.environ.get("KFNB_CODE_DIR") or Path(__file__).resolve().parent)
    artifacts = artifacts_dir(os.environ)
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    job_name = os.environ.get("KFNB_JOB_NAME", "job")
    context = TFJobContext(job_name, artifacts, tf_config)
    status_path = artifacts / "status" / f"{context.replica}.json"
    record: dict[str, Any] = {
        "replica": context.replica,
        "started": time.time(),
        "pid": os.getpid(),
        "warnings": [],  # what the replica could run with but not as asked
    }
    _write_status(status_path, {**record, "state": "running"})
    exit_code, error, formatted = 0, None, None
    uploads = None
    try:
        if os.environ.get("KFNB_STORE", "").startswith("s3://"):
            uploads = _Uploads(os.environ["KFNB_STORE"], code_dir, context)
            context.sync = uploads.syncer
            uploads.syncer.watch(status_path, uploads.status_key)
            uploads.syncer.start()
        record["warnings"] = gpu_warnings()
        if record["warnings"]:
            for warning in record["warnings"]:
                print(f"kfnb: {warning}", file=sys.stderr, flush=True)
            _write_status(status_path, {**record, "state": "running"})
        namespace = load_namespace(code_dir, context)
        namespace.update(_parameters(os.environ.get("KFNB_PARAMS") or "{}"))
        source = (code_dir / "cell.py").read_text()
        filename = f"<tfjob {job_name} cell>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec", dont_inherit=True), namespace)
    except SystemExit as stop:
        code = stop.code
        exit_code = code if isinstance(code, int) else (0 if code is None else 1)
        if exit_code:
            error = f"SystemExit({code!r})"
    except ReplicaError as err:
        exit_code, error = 1, str(err)
        print(f"kfnb: {err}", file=sys.stderr)
    except BaseException as exc:  # the cell's own failure, whatever it is
        exit_code = 130 if isinstance(exc, KeyboardInterrupt) else 1
        error = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        formatted = _format_exception(exc)
        sys.stderr.write(formatted)
    published = context.finish(exit_code == 0)
    if published:
        where = f"{os.environ['KFNB_STORE'].rstrip('/')}/model" if uploads else published
        print(f"kfnb: model saved as version {Path(published).name} in {where}")
    sys.stdout.flush()
    sys.stderr.flush()
    not_uploaded: dict[str, str] = {}
    if uploads is not None:
        not_uploaded = uploads.finish(published)
        for why in not_uploaded.values():
            print(f"kfnb: not uploaded: {why}", file=sys.stderr, flush=True)
    final = {
        **record,
        "state": "exited",
        "finished": time.time(),
        "exit_code": exit_code,
        "error": error,
        "traceback": formatted,
        "model": published,
        "outputs": context.outputs if context.is_chief and exit_code == 0 else {},
        "not_uploaded": sorted(not_uploaded),
        "upload_errors": sorted(set(not_uploaded.values())),
    }
    _write_status(status_path, final)
    if uploads is not None:
        uploads.syncer.upload_file(status_path, uploads.status_key)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
