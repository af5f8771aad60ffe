"""What a replica must have installed beyond its image, and why.

A stock ``tensorflow/tensorflow`` image holds TensorFlow and its dependencies and
nothing else: no tf-keras (which multi-worker Keras needs), no TensorBoard since
TensorFlow 2.21, none of the notebook's other packages. kfnb works out the rest
before it submits, from the bundle (the modules the cell and the code it ships
import) and the notebook's own environment (the versions to pin), so the replica
gets what the notebook ran with. ``--dry-run`` lists it; an init container of the
same image (`kfnb.spec`) installs it with ``install_packages.py``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from kfnb.bundle import Bundle
from kfnb.secret_env import url_credentials

PLAN_FILE = "packages.json"  # in the bundle, read by install_packages.py
# The names TensorFlow is published under; any of them is "TensorFlow" in an image.
TENSORFLOW_DISTS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel")
# Installed by pip itself in every image, never worth provisioning.
_ALWAYS_THERE = frozenset({"pip", "setuptools", "wheel"})
# Ubuntu 22.04 with python3.11 from 2.16 on (tensorflow/tensorflow#82529 shows 2.18's);
# -jupyter builds add Jupyter on top of the same.
_OFFICIAL_IMAGE = re.compile(
    r"^(?:docker\.io/)?tensorflow/tensorflow:(?P<version>\d+\.\d+\.\d+)(?P<gpu>-gpu)?(-jupyter)?$"
)


class PackageError(ValueError):
    """What the replicas need cannot be worked out; the message says what to do."""


class IndexUnreachable(PackageError):
    """pip could not reach the package index from the notebook."""


@dataclass(frozen=True)
class ImageFacts:
    """What an official TensorFlow image holds (tensorflow/build's runtime Dockerfiles:
    Ubuntu 22.04, python3.11, ``pip install tensorflow`` and nothing else)."""

    image: str
    tensorflow: str
    python: str = "3.11"
    tensorboard: bool = False  # a TensorFlow dependency up to 2.20, dropped in 2.21
    tf_keras: bool = False  # never: the images have Keras 3 only
    gpu: bool = False
    # -gpu images ship cuDNN 8.9 (tensorflow/build#221); TF >= 2.17 wants cuDNN >= 9.3,
    # so those images need TensorFlow's own CUDA wheels (the `and-cuda` extra).
    cudnn: str | None = None
    needs_cuda_wheels: bool = False


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def image_facts(image: str) -> ImageFacts | None:
    """Facts about an official ``tensorflow/tensorflow`` image 2.16 or later, else None
    (an image kfnb does not know: it assumes nothing, and checks in the pod)."""
    match = _OFFICIAL_IMAGE.match(image)
    if match is None:
        return None
    version = match["version"]
    number = _version_tuple(version)
    if number < (2, 16):
        return None
    gpu = bool(match["gpu"])
    return ImageFacts(
        image=image,
        tensorflow=version,
        tensorboard=number < (2, 21),
        gpu=gpu,
        cudnn="8.9" if gpu else None,
        needs_cuda_wheels=gpu and number >= (2, 17),
    )


@dataclass(frozen=True)
class Package:
    """One distribution to install, pinned (``name==version``) unless the notebook could
    not resolve it (then as the user wrote it), and why."""

    name: str
    version: str | None
    why: str
    spec: str = ""  # --pip as written, when the index was out of the notebook's reach

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}" if self.version else (self.spec or self.name)


@dataclass(frozen=True)
class PackagePlan:
    """What the replicas get installed, for which Python, and what was left out."""

    packages: tuple[Package, ...]
    python: str  # major.minor of the replicas' interpreter
    image: str
    known_image: bool
    notes: tuple[str, ...] = ()
    wheelhouse: str = ""  # where the pods take wheels from ("" : the package index)
    index: Mapping[str, str] = field(default_factory=dict)  # PIP_* settings for the pods

    @property
    def requirements(self) -> list[str]:
        return [p.requirement for p in self.packages]

    @property
    def cuda_libraries(self) -> tuple[str, ...]:
        """``cudnn`` for nvidia-cudnn-cu12: where each CUDA wheel puts its libraries."""
        found = (re.match(r"nvidia-(.+)-cu\d+$", p.name) for p in self.packages)
        return tuple(m[1].replace("-", "_") for m in found if m)

    @property
    def key(self) -> str:
        """One name per set of pins and target, for wheelhouses and local caches."""
        text = json.dumps([sorted(self.requirements), self.python, PLATFORM_TAG])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {
            "packages": [
                {"name": p.name, "version": p.version, "requirement": p.requirement, "why": p.why}
                for p in self.packages
            ],
            "python": self.python,
            "key": self.key,
            "wheelhouse": self.wheelhouse,
            "index": dict(self.index),
            "check_image": not self.known_image,
        }

    def describe(self) -> str:
        """The ``--dry-run`` listing: what, why, from where."""
        if not self.packages:
            lines = [f"# packages: none to install, {self.image} has what the cell needs"]
        else:
            source = f"wheelhouse {self.wheelhouse}" if self.wheelhouse else "the package index"
            lines = [f"# packages installed in each replica before the cell runs, from {source}:"]
            width = max(len(p.requirement) for p in self.packages)
            lines += [f"#   {p.requirement:<{width}}  {p.why}" for p in self.packages]
        lines += [f"# note: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


# manylinux tags an Ubuntu 22.04 image (glibc 2.35) accepts, newest first.
PLATFORM_TAG = "manylinux_2_35_x86_64"
PLATFORM_TAGS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)),
    "manylinux2014_x86_64",
    "linux_x86_64",
)


def normalize(name: str) -> str:
    """PEP 503's normal form, so ``Tf_Keras`` and ``tf-keras`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _marker_env(python: str) -> dict[str, str]:
    """Environment markers of a Linux x86_64 replica running CPython ``python``."""
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


@cache
def _installed() -> dict[str, metadata.Distribution]:
    """The notebook's distributions by normal name (the first one on sys.path wins)."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist)
    return found


def _requires(dist: metadata.Distribution, python: str) -> list[str]:
    """What ``dist`` needs on the replica (its extras left out)."""
    from packaging.requirements import InvalidRequirement, Requirement

    env = _marker_env(python)
    names = []
    for line in dist.requires or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate(env):
            names.append(normalize(req.name))
    return names


def closure(names: Iterable[str], python: str) -> dict[str, str | None]:
    """``names`` and everything they depend on, at the notebook's versions (None: not
    installed in the notebook)."""
    found: dict[str, str | None] = {}
    todo = [normalize(n) for n in names]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        dist = _installed().get(name)
        found[name] = dist.version if dist else None
        if dist is not None:
            todo.extend(_requires(dist, python))
    return found


def tensorflow_dist() -> metadata.Distribution | None:
    return next((d for n in TENSORFLOW_DISTS if (d := _installed().get(n))), None)


def image_contents(python: str) -> set[str]:
    """What an official image holds: TensorFlow and what it depends on."""
    return set(closure(TENSORFLOW_DISTS, python)) | set(TENSORFLOW_DISTS) | _ALWAYS_THERE


def imported_modules(bundle: Bundle) -> dict[str, str]:
    """Top-level modules the bundle's code imports, with where it imports them first."""
    found: dict[str, str] = {}
    for module in bundle.meta.get("imports", ()):
        found.setdefault(module.split(".")[0], "a name the cell reads")
    sources = [
        ("the cell" if path == "cell.py" else path.removeprefix("include/"), data.decode())
        for path, data in sorted(bundle.files.items())
        if path == "cell.py" or (path.startswith("include/") and path.endswith(".py"))
    ]
    if "definitions.json" in bundle.files:  # notebook functions and classes sent as source
        sources += [
            (f"the notebook's {d['name']}", d["source"])
            for d in json.loads(bundle.files["definitions.json"])
        ]
    for where, text in sources:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.setdefault(alias.name.split(".")[0], where)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.setdefault(node.module.split(".")[0], where)
    return found


def _local_modules(bundle: Bundle) -> set[str]:
    """Modules that travel in the bundle itself: the user's own, and kfnb's."""
    local = {"kfnb", "tfjob", "runtime", "artifact_sync", "install_packages", "cloudpickle"}
    for path in bundle.files:
        if path.startswith("include/"):
            local.add(path.removeprefix("include/").split("/")[0].removesuffix(".py"))
    return local


def third_party(bundle: Bundle) -> dict[str, str]:
    """Distributions behind the bundle's imports (not stdlib, not shipped): name → why."""
    owners = metadata.packages_distributions()
    local = _local_modules(bundle)
    needed: dict[str, str] = {}
    for module, where in imported_modules(bundle).items():
        if module in sys.stdlib_module_names or module in local or module == "__future__":
            continue
        for dist in owners.get(module, [module]):
            needed.setdefault(normalize(dist), f"imported by {where}")
    return needed


@dataclass(frozen=True)
class Needs:
    """What a job asks of its replicas' environment, besides its imports."""

    legacy_keras: bool = False  # TF_USE_LEGACY_KERAS=1: tf-keras
    tensorboard: bool = True
    gpus: int = 0
    pip: Sequence[str] = ()
    requirements: str | None = None  # a requirements file's path


def plan_packages(
    bundle: Bundle,
    needs: Needs,
    *,
    image: str,
    provided: set[str] | None = None,
    python: str | None = None,
) -> PackagePlan:
    """What ``image`` (or, locally, an interpreter whose distributions are ``provided``)
    lacks of what the bundle needs, pinned to the notebook's versions."""
    _installed.cache_clear()  # the notebook may have pip-installed something since
    facts = image_facts(image)
    python = python or (facts.python if facts else f"{sys.version_info[0]}.{sys.version_info[1]}")
    has = provided if provided is not None else image_contents(python)
    if facts is not None and facts.tensorboard:
        has = has | closure(["tensorboard"], python).keys()
    wanted: dict[str, str] = {}
    notes: list[str] = []
    if needs.legacy_keras:
        wanted["tf-keras"] = "multi-worker Keras runs on tf-keras (TF_USE_LEGACY_KERAS=1)"
    if needs.tensorboard:
        wanted["tensorboard"] = "tfjob.tensorboard() and tf.summary"
    for name, why in third_party(bundle).items():
        wanted.setdefault(name, why)
    packages: dict[str, Package] = {}
    for root, why in wanted.items():
        if root in has:
            continue
        for name, version in closure([root], python).items():
            if name in has or name in packages or name in TENSORFLOW_DISTS:
                continue
            if version is None:
                if name == root:
                    notes.append(
                        f"{root} ({why}) is not installed in this notebook, so kfnb cannot pin "
                        f"it: pass --pip {root} if the replicas need it"
                    )
                continue
            reason = why if name == root else f"needed by {root}"
            packages[name] = Package(name, _tf_pinned(name, version), reason)
    if needs.gpus and facts is not None and facts.needs_cuda_wheels:
        for name, version in cuda_wheels(python).items():
            packages.setdefault(
                name,
                Package(
                    name,
                    version,
                    f"TensorFlow's CUDA libraries: {image} has cuDNN {facts.cudnn}, "
                    f"TensorFlow {facts.tensorflow} needs 9.3 or later",
                ),
            )
    try:
        extra = _user_packages(needs, python, has)
    except IndexUnreachable as err:  # offline notebook: the replicas install them as written
        extra = [Package(_spec_name(s), None, why, spec=s) for s, why in _user_specs(needs)]
        notes.append(f"{err}: the replicas install {', '.join(p.spec for p in extra)} as written")
    for package in extra:
        packages[package.name] = package
    return PackagePlan(
        packages=tuple(sorted(packages.values(), key=lambda p: p.name)),
        python=python,
        image=image,
        known_image=facts is not None or provided is not None,
        notes=tuple(notes),
    )


def _tf_pinned(name: str, version: str) -> str:
    """tf-keras must match the image's TensorFlow, whatever the notebook has."""
    if name == "tf-keras":
        tf = tensorflow_dist()
        if tf is not None:
            return tf.version
    return version


def cuda_wheels(python: str) -> dict[str, str]:
    """TensorFlow's ``and-cuda`` extra at the notebook's versions, else its lower bounds."""
    from packaging.requirements import Requirement

    tf = tensorflow_dist()
    if tf is None:
        return {}
    env = {**_marker_env(python), "extra": "and-cuda"}
    wheels: dict[str, str] = {}
    for line in tf.requires or []:
        req = Requirement(line)
        if req.marker is None or "extra" not in str(req.marker) or not req.marker.evaluate(env):
            continue
        installed = _installed().get(normalize(req.name))
        lowest = next((s.version for s in req.specifier if s.operator in (">=", "==")), None)
        version = installed.version if installed else lowest
        if version:
            wheels[normalize(req.name)] = version
    return wheels


def _user_specs(needs: Needs) -> list[tuple[str, str]]:
    """``--pip`` and ``--requirements`` specs, each with where it came from."""
    specs = [(spec, "--pip") for spec in needs.pip]
    if needs.requirements:
        path = Path(needs.requirements).expanduser()
        if not path.is_file():
            raise PackageError(f"--requirements {needs.requirements}: no such file")
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                specs.append((line, f"--requirements {path.name}"))
    return specs


def _user_packages(needs: Needs, python: str, has: set[str]) -> list[Package]:
    """``--pip`` and ``--requirements``, resolved with TensorFlow's own pins where the
    notebook reaches the index (a conflict is one line, before any pod starts)."""
    specs = _user_specs(needs)
    if not specs:
        return []
    resolved = resolve([spec for spec, _ in specs], python)
    origin = {_spec_name(spec): why for spec, why in specs}
    return [
        Package(name, version, origin.get(name, "needed by " + ", ".join(origin)))
        for name, version in resolved.items()
        if name not in has and name not in TENSORFLOW_DISTS
    ]


def _spec_name(spec: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        return normalize(Requirement(spec).name)
    except InvalidRequirement as err:
        raise PackageError(f"--pip {spec!r} is not a requirement: write e.g. name==1.2") from err


def pip_platform_args(python: str) -> list[str]:
    """pip's options to choose wheels for a Linux x86_64 replica running ``python``."""
    abi = "cp" + python.replace(".", "")
    args = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    args += ["--abi", abi]
    for tag in PLATFORM_TAGS:
        args += ["--platform", tag]
    return args


def resolve(specs: Sequence[str], python: str) -> dict[str, str]:
    """pip's resolution of ``specs`` beside the image's TensorFlow: name → version."""
    for spec in specs:
        _spec_name(spec)
    tf = tensorflow_dist()
    pins = [f"tensorflow=={tf.version}"] if tf is not None else []
    with tempfile.TemporaryDirectory(prefix="kfnb-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
        command += ["--quiet", "--report", str(report), "--target", str(Path(tmp) / "target")]
        command += ["--timeout", "10", "--retries", "1"]  # offline: say so in seconds
        command += pip_platform_args(python) + pins + list(specs)
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0 and _offline(done.stderr):
            raise IndexUnreachable("the notebook cannot reach the package index to check them")
        if done.returncode != 0:
            raise PackageError(f"pip cannot install {' '.join(specs)}: {_pip_error(done.stderr)}")
        installs = json.loads(report.read_text())["install"]
    return {normalize(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


_OFFLINE_SIGNS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "ConnectTimeoutError",
    "Connection refused",
)


def _offline(stderr: str) -> bool:
    return any(sign in stderr for sign in _OFFLINE_SIGNS)


def _pip_error(stderr: str) -> str:
    """pip's one telling line: the ERROR about the conflict or the missing version."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    conflict = next((line for line in lines if "conflict" in line.lower()), None)
    found = next((e for e in errors if "No matching distribution" in e), None)
    text = found or conflict or (errors[0] if errors else (lines[-1] if lines else "failed"))
    return text[:300]


def interpreter_contents(python: str) -> tuple[str, set[str]]:
    """The Python version and distributions of a local interpreter (``Kfnb.python``)."""
    # Not resolve(): a venv's python is a symlink to the same base interpreter.
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        return version, set(_installed())
    probe = (
        "import json, sys, importlib.metadata as m; print(json.dumps(["
        "'%d.%d' % sys.version_info[:2], [d.metadata['Name'] for d in m.distributions()]]))"
    )
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise PackageError(f"cannot list the packages of {python}: {_pip_error(done.stderr)}")
    version, names = json.loads(done.stdout)
    return version, {normalize(n) for n in names if n}


_INDEX_SETTINGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")


def pod_index_env(env: Mapping[str, str]) -> dict[str, str]:
    """The notebook's package index settings, for replicas that install from the index.

    A ``file://`` index means nothing in a pod and is left out; an index URL holding a
    password would be written into the pod spec, so it is refused with the way round.
    """
    settings: dict[str, str] = {}
    for key in _INDEX_SETTINGS:
        value = env.get(key, "").strip()
        if not value:
            continue
        urls = [u for u in value.split() if not u.startswith("file:")]
        if any(url_credentials(u) for u in urls):
            raise PackageError(
                f"{key} holds credentials, which would be written into the pod spec: give the "
                "pods the index with a PodDefault or Secret, or fill a wheelhouse (--wheelhouse)"
            )
        if urls:
            settings[key] = " ".join(urls)
    return settings
