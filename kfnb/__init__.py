"""kfnb: run a notebook cell as a distributed TensorFlow job (a Kubeflow TFJob).

``%load_ext kfnb`` registers ``%%tfjob`` and ``%kfnb``. Importing kfnb imports
no TensorFlow, Kubernetes client or widgets: those load when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Job", "JobFailed", "JobSpec", "load_ipython_extension", "__version__"]

if TYPE_CHECKING:
    from kfnb.job import Job, JobFailed
    from kfnb.spec import JobSpec


def __getattr__(name: str) -> Any:
    if name in ("Job", "JobFailed"):
        from kfnb import job

        return getattr(job, name)
    if name == "JobSpec":
        from kfnb.spec import JobSpec

        return JobSpec
    raise AttributeError(f"module 'kfnb' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    from kfnb.config import Kfnb, use_settings
    from kfnb.magics import KfnbMagics
    from kfnb.widgets import register_display

    unload_ipython_extension(ipython)
    config = Kfnb(parent=ipython)  # `%config Kfnb.x = ...` changes this object
    use_settings(config)
    ipython.configurables.append(config)
    ipython.register_magics(KfnbMagics)
    register_display(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from kfnb.config import Kfnb, reset_settings
    from kfnb.widgets import unregister_display

    unregister_display(ipython)
    ipython.configurables[:] = [c for c in ipython.configurables if not isinstance(c, Kfnb)]
    reset_settings()
