"""Turn a notebook cell into a bundle a replica can run without an image build.

A bundle holds the cell's source, the notebook names the cell reads (functions
and classes defined in the notebook pickled by value, other values pickled,
modules as imports), files named with ``--include``, the notebook's own modules
the cell relies on, kfnb's ``runtime.py`` and a copy of cloudpickle, so that a
stock TensorFlow image can run it with nothing installed. For replicas known to
run another Python than the kernel's, names travel by source instead
(`kfnb.bundle_source`).
"""

from __future__ import annotations

import builtins
import functools
import io
import json
import linecache
import operator
import os
import pickle
import symtable
import sys
import sysconfig
import time
import types
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kfnb import bundle_source
from kfnb._util import bundle_path_problem, first_line, inside, private_dir, write_atomic

BUNDLE_FORMAT = 1
RUNTIME_NAME = "tfjob"  # the name the runtime gives the cell for its role and paths
_RESERVED = frozenset({RUNTIME_NAME, "__builtins__", "__name__", "__doc__"})
# Keras 3's tf.keras namespace: modules under it are resolved through `tensorflow`
# in the replica, so that TF_USE_LEGACY_KERAS=1 there gives tf-keras, not Keras 3.
_KERAS_PREFIXES = ("keras._tf_keras.keras", "tensorflow.keras", "tf_keras.api._v2.keras")
_KERAS_SUBMODULES = (
    "layers",
    "models",
    "optimizers",
    "losses",
    "metrics",
    "callbacks",
    "activations",
    "initializers",
    "regularizers",
    "utils",
    "datasets",
)


class BundleError(ValueError):
    """The cell cannot be shipped; the message is one line that says why and what to do."""


@dataclass(frozen=True)
class Bundle:
    """Files keyed by their path in the job's ``code/`` directory."""

    files: Mapping[str, bytes]
    names: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for path in self.files:  # each lands in its own place inside code/, on any backend
            problem = bundle_path_problem(path)
            if problem:
                raise BundleError(f"bundle path {path!r} {problem}: a kfnb bug, or a bad include")

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())

    def write(self, directory: Path) -> None:
        for path, data in self.files.items():
            target = directory / path
            private_dir(target.parent)  # names.pkl holds the notebook's values: 0700/0600
            write_atomic(target, data)


def compile_cell(source: str, filename: str = "<tfjob cell>") -> types.CodeType:
    """Compile the cell now, so a syntax error shows before anything is submitted."""
    try:
        return compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as err:
        line = (err.text or "").strip()
        if line.startswith(("%", "!")):
            raise BundleError(
                f"line {err.lineno} of the cell is IPython syntax ({line[:40]}), which a job "
                "cannot run: move it to another cell or use plain Python"
            ) from err
        raise BundleError(
            f"syntax error in the cell, line {err.lineno}: {err.msg}: {line[:60]}"
        ) from err


def referenced_names(source: str) -> tuple[set[str], set[str]]:
    """The global names the cell reads, and those it binds itself.

    Uses the compiler's own symbol tables, so names read by functions and classes
    the cell defines count too, and attribute names (``model.fit``) do not.
    """
    read: set[str] = set()
    bound: set[str] = set()

    def visit(table: symtable.SymbolTable, top: bool) -> None:
        for symbol in table.get_symbols():
            name = symbol.get_name()
            if top:
                if symbol.is_referenced():
                    read.add(name)
                if symbol.is_assigned() or symbol.is_imported() or symbol.is_namespace():
                    bound.add(name)
            elif symbol.is_global() and symbol.is_referenced():
                read.add(name)
        for child in table.get_children():
            visit(child, False)

    visit(symtable.symtable(source, "<tfjob cell>", "exec"), True)
    return read, bound


def _stdlib_and_site_dirs() -> tuple[str, ...]:
    keys = ("stdlib", "platstdlib", "purelib", "platlib")
    dirs = {sysconfig.get_paths()[k] for k in keys}
    dirs.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    return tuple(os.path.realpath(d) for d in dirs if d)


def local_module_root(module: types.ModuleType) -> Path | None:
    """The file or package directory of a module the user wrote, or None if installed.

    Installed modules exist in the replica's image (or must be added there); the
    user's own modules next to the notebook do not, so they travel in the bundle.
    """
    file = getattr(module, "__file__", None)
    if not file or module.__name__ == "__main__":
        return None
    path = os.path.realpath(file)
    if path.startswith(_stdlib_and_site_dirs()) or "site-packages" in path:
        return None
    top = module.__name__.split(".")[0]
    top_module = sys.modules.get(top)
    top_file = getattr(top_module, "__file__", None) if top_module else None
    if top_file and os.path.basename(top_file) == "__init__.py":
        return Path(top_file).resolve().parent
    return Path(path)


def _keras_path(obj: Any) -> str | None:
    """``keras.layers`` for Keras 3's ``tf.keras.layers`` module (or a class in it)."""
    if isinstance(obj, types.ModuleType):
        name = obj.__name__
        for prefix in _KERAS_PREFIXES:
            if name == prefix or name.startswith(prefix + "."):
                return "keras" + name[len(prefix) :]
        return None
    module = getattr(obj, "__module__", "") or ""
    if not module.startswith(("keras.", "tf_keras.")) or "tensorflow" not in sys.modules:
        return None
    keras = getattr(sys.modules["tensorflow"], "keras", None)
    qualname = getattr(obj, "__name__", None)
    if keras is None or not qualname:
        return None
    for sub in ("", *_KERAS_SUBMODULES):
        owner = getattr(keras, sub, None) if sub else keras
        if owner is not None and getattr(owner, qualname, None) is obj:
            return f"keras.{sub}.{qualname}" if sub else f"keras.{qualname}"
    return None


_ANONYMOUS_CODE = "<dynamic-code>"  # the co_filename cloudpickle gives shipped code


def _pickler_class() -> Any:
    import cloudpickle

    class BundlePickler(cloudpickle.Pickler):  # type: ignore[misc]
        """cloudpickle, plus notes of what the pickle needs in the replica."""

        def __init__(self, file: io.BytesIO) -> None:
            super().__init__(file, protocol=pickle.DEFAULT_PROTOCOL)
            self.modules: set[str] = set()
            self.sources: set[str] = set()

        def reducer_override(self, obj: Any) -> Any:
            keras = _keras_path(obj)
            if keras is not None:
                return operator.attrgetter(keras), (sys.modules["tensorflow"],)
            if isinstance(obj, types.CodeType) and obj.co_filename != _ANONYMOUS_CODE:
                # cloudpickle >= 3.1.3 ships code as "<dynamic-code>"; the replica's
                # tracebacks find the cell's lines (sources.json) by the real name.
                restore = functools.partial(types.CodeType.replace, co_filename=obj.co_filename)
                return restore, (obj.replace(co_filename=_ANONYMOUS_CODE),)
            if isinstance(obj, types.ModuleType):
                self.modules.add(obj.__name__)
            elif isinstance(obj, types.FunctionType):
                self.modules.add(obj.__module__ or "")
                if obj.__module__ == "__main__":
                    self.sources.add(obj.__code__.co_filename)
            elif isinstance(obj, type):
                self.modules.add(obj.__module__)
            return super().reducer_override(obj)

    return BundlePickler


def _describe(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}".removeprefix("builtins.")


def _module_reference(module: types.ModuleType) -> str:
    keras = _keras_path(module)
    return f"tensorflow:{keras}" if keras else module.__name__


def _include_paths(paths: Iterable[str], cwd: Path) -> dict[str, bytes]:
    """``include/<name>/...`` for each path: a file, or the files of a directory tree.

    Only regular files under the included root travel: hidden files and directories
    (``.git``, ``.ipynb_checkpoints``) and ``__pycache__`` only when named themselves, a
    symbolic link only when it points to a file inside the root. Two different files
    that would ship as one path are an error, not one silently replacing the other.
    """
    files: dict[str, bytes] = {}
    origin: dict[str, Path] = {}
    for raw in paths:
        given = Path(raw).expanduser()
        given = given if given.is_absolute() else cwd / given
        if not given.exists():
            raise BundleError(f"--include {raw}: no such file or directory")
        # '..' folded, a link's own name kept: the cell reads include/<the name it gave>
        root = Path(os.path.abspath(given))
        for file in [root] if root.is_file() else _tree_files(root):
            key = f"include/{file.relative_to(root.parent).as_posix()}"
            data = file.read_bytes()
            if key in files and files[key] != data:
                raise BundleError(
                    f"--include {origin[key]} and {file} would both ship as {key}: "
                    "rename one, or include its directory instead"
                )
            files[key], origin[key] = data, file
    return files


def _tree_files(root: Path) -> list[Path]:
    """The regular files under ``root`` a job gets, in order (see `_include_paths`)."""
    found = []
    for directory, subdirs, names in os.walk(root):  # links to directories: not entered
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(names):
            path = Path(directory) / name
            target = inside(root, path.relative_to(root).as_posix())  # links resolved
            if not name.startswith(".") and target is not None and path.is_file():
                found.append(path)
    return found


def _vendored_cloudpickle() -> dict[str, bytes]:
    import cloudpickle

    package = Path(cloudpickle.__file__).parent
    return {f"vendor/cloudpickle/{f.name}": f.read_bytes() for f in sorted(package.glob("*.py"))}


# minio's admin API (MinioAdmin) needs argon2-cffi and pycryptodome, C extensions a
# stock TensorFlow image lacks; replicas only put and get objects, so it stays out.
_MINIO_ADMIN_IMPORT = "from .minioadmin import MinioAdmin as MinioAdmin\n"
_MINIO_ADMIN_FILES = ("minioadmin.py", "crypto.py")


def vendored_minio() -> dict[str, bytes]:
    """The pure-Python minio client for replicas' S3 uploads (urllib3 and certifi come
    with TensorFlow's requests)."""
    try:
        import minio
    except ImportError as err:
        raise BundleError("s3:// storage needs the minio client: pip install kfnb[s3]") from err
    package = Path(minio.__file__).parent
    files = {}
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative in _MINIO_ADMIN_FILES:
            continue
        data = path.read_bytes()
        if relative == "__init__.py":
            text = data.decode()
            if _MINIO_ADMIN_IMPORT not in text:
                raise BundleError(
                    f"minio {getattr(minio, '__version__', '?')} is laid out differently than "
                    "kfnb expects: pip install 'minio>=7.2,<8'"
                )
            data = text.replace(_MINIO_ADMIN_IMPORT, "").encode()
        files[f"vendor/minio/{relative}"] = data
    return files


@dataclass
class _Shipped:
    """The names the cell reads, in the form they travel in."""

    payloads: dict[str, bytes] = field(default_factory=dict)  # name -> pickle
    modules: dict[str, str] = field(default_factory=dict)  # name -> import reference
    needed_modules: set[str] = field(default_factory=set)  # modules the replica imports
    sources: set[str] = field(default_factory=set)  # notebook cells their code comes from
    definitions: list[bundle_source.Definition] = field(default_factory=list)


def _pickled(
    read: set[str], bound: set[str], namespace: Mapping[str, Any], skip: set[str]
) -> _Shipped:
    """Names pickled with cloudpickle (notebook functions by value): for the kernel's Python."""
    pickler_class = _pickler_class()
    shipped = _Shipped()
    for name in sorted(read - skip):
        if name not in namespace:
            continue
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            shipped.modules[name] = _module_reference(value)
            shipped.needed_modules.add(value.__name__)
            continue
        buffer = io.BytesIO()
        pickler = pickler_class(buffer)
        try:
            pickler.dump(value)
        except Exception as err:  # pickling raises anything: TypeError, PicklingError, ...
            if name in bound:
                continue  # the cell makes its own; the notebook's copy is not needed
            raise BundleError(
                f"cannot ship {name!r} ({_describe(value)}) to the job: {first_line(err, 120)}. "
                f"Create it inside the cell, or pass what it is built from"
            ) from err
        shipped.payloads[name] = buffer.getvalue()
        shipped.needed_modules |= pickler.modules
        shipped.sources |= pickler.sources
    return shipped


def _by_source(
    read: set[str],
    bound: set[str],
    namespace: Mapping[str, Any],
    skip: set[str],
    replica_python: str,
) -> _Shipped:
    """Names in forms any Python 3 loads (`kfnb.bundle_source`), for replicas whose
    Python is not the kernel's; what can only be pickled is an error naming it."""
    plan = bundle_source.plan(read, namespace, skip=skip, bound=bound, keras_path=_keras_path)
    if plan.blocked:
        raise BundleError(plan.blocked_message(replica_python))
    shipped = _Shipped(modules=plan.references, definitions=plan.definitions)
    for name, value in plan.plain.items():
        shipped.payloads[name] = pickle.dumps(value, protocol=pickle.DEFAULT_PROTOCOL)
    shipped.needed_modules = {ref.split(":")[0] for ref in plan.references.values()}
    shipped.sources = {d.filename for d in plan.definitions}
    return shipped


def build_bundle(
    source: str,
    namespace: Mapping[str, Any],
    *,
    job_name: str,
    hidden: Iterable[str] = (),
    includes: Iterable[str] = (),
    cwd: Path | None = None,
    s3: bool = False,
    replica_python: str | None = None,
) -> Bundle:
    """Bundle ``source`` with what it reads from ``namespace`` (the notebook's names).

    ``hidden`` are names to leave out (IPython's own ``In``, ``Out``, ``_``...).
    A name the cell reads but cannot be pickled is an error naming it and the
    reason, unless the cell binds that name itself. With ``s3`` the replicas get
    the minio client to write to an s3:// store. ``replica_python`` is the replicas'
    Python where known: when it is not the kernel's, notebook functions and classes
    travel as their source and values that could only be pickled are an error.
    """
    compile_cell(source)
    read, bound = referenced_names(source)
    skip = set(hidden) | _RESERVED | set(dir(builtins))
    if bundle_source.needed(replica_python):
        assert replica_python is not None
        shipped = _by_source(read, bound, namespace, skip, replica_python)
    else:
        shipped = _pickled(read, bound, namespace, skip)

    cwd = cwd or Path.cwd()
    files: dict[str, bytes] = {"cell.py": source.encode()}
    files.update(_include_paths(includes, cwd))
    local_roots = {
        root
        for mod in shipped.needed_modules
        if mod in sys.modules and (root := local_module_root(sys.modules[mod])) is not None
    }
    for root in sorted(local_roots):
        files.update(_include_paths([str(root)], cwd))
    files["names.pkl"] = pickle.dumps(shipped.payloads, protocol=pickle.DEFAULT_PROTOCOL)
    if shipped.definitions:
        definitions = [asdict(d) for d in shipped.definitions]
        files["definitions.json"] = json.dumps(definitions, indent=1).encode()
    # Source lines of notebook functions, so a replica's traceback shows them.
    notebook_sources = {f: "".join(linecache.getlines(f)) for f in sorted(shipped.sources)}
    files["sources.json"] = json.dumps(notebook_sources).encode()
    files["runtime.py"] = Path(__file__).with_name("runtime.py").read_bytes()
    files["artifact_sync.py"] = Path(__file__).with_name("artifact_sync.py").read_bytes()
    files.update(_vendored_cloudpickle())
    if s3:
        files.update(vendored_minio())
    meta = {
        "format": BUNDLE_FORMAT,
        "job": job_name,
        "python": bundle_source.KERNEL_PYTHON,
        "names": sorted(shipped.payloads),
        "modules": shipped.modules,
        # Top-level modules the shipped names come from, for kfnb.packages.
        "imports": sorted(
            {m.split(".")[0] for m in shipped.needed_modules if m and m != "__main__"}
        ),
        # Names any Python 3 loads: plain data, references, definitions by source.
        "portable": bundle_source.needed(replica_python),
        "by_source": [d.name for d in shipped.definitions],
        "created": time.time(),
    }
    files["bundle.json"] = json.dumps(meta, indent=1).encode()
    return Bundle(
        files=files,
        names=tuple(sorted(shipped.payloads)),
        modules=tuple(sorted(shipped.modules)),
        includes=tuple(sorted(p for p in files if p.startswith("include/"))),
        meta=meta,
    )
