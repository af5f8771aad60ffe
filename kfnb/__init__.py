"""kfnb: run a notebook cell as a distributed TensorFlow job (a Kubeflow TFJob).

``%load_ext kfnb`` registers ``%%tfjob``, ``%kfnb`` and ``%serve``, a thin layer over
the Python API: ``kfnb.submit(source, workers=2)`` returns a `Job`, ``kfnb.render``
its TFJob manifest, ``kfnb.serve(job_name)`` a served model, ``kfnb.attach(name)``
a job from its record, ``kfnb.check()`` what a first job needs (``%kfnb check``).
Importing kfnb imports no TensorFlow, Kubernetes client or widgets: those load when
first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "CheckResult",
    "Job",
    "JobFailed",
    "JobSpec",
    "attach",
    "backend_choice",
    "check",
    "compare",
    "load_ipython_extension",
    "prepare",
    "render",
    "serve",
    "settings",
    "submit",
    "__version__",
]
_API = ("attach", "prepare", "render", "serve", "submit")
_CHECKS = ("CheckResult", "backend_choice", "check")

if TYPE_CHECKING:
    from kfnb.api import attach, prepare, render, serve, submit
    from kfnb.checks import CheckResult, backend_choice, check
    from kfnb.config import settings
    from kfnb.job import Job, JobFailed
    from kfnb.spec import JobSpec
    from kfnb.widgets.compare import compare


def __getattr__(name: str) -> Any:
    if name in ("Job", "JobFailed"):
        from kfnb import job

        return getattr(job, name)
    if name in _API:
        from kfnb import api

        return getattr(api, name)
    if name in _CHECKS:
        from kfnb import checks

        return getattr(checks, name)
    if name == "settings":  # the object `%config Kfnb.*` changes
        from kfnb.config import settings

        return settings
    if name == "compare":
        from kfnb.widgets.compare import compare

        return compare
    if name == "JobSpec":
        from kfnb.spec import JobSpec

        return JobSpec
    raise AttributeError(f"module 'kfnb' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    from kfnb.config import Kfnb, use_settings
    from kfnb.magics import MAGICS
    from kfnb.widgets import register_display

    unload_ipython_extension(ipython)
    config = Kfnb(parent=ipython)  # `%config Kfnb.x = ...` changes this object
    use_settings(config)
    ipython.configurables.append(config)
    for magics in MAGICS:
        ipython.register_magics(magics)
    register_display(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from kfnb.config import Kfnb, reset_settings
    from kfnb.widgets import unregister_display

    unregister_display(ipython)
    ipython.configurables[:] = [c for c in ipython.configurables if not isinstance(c, Kfnb)]
    reset_settings()
