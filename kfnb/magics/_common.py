"""What the magics share: library errors worded as usage errors, the pods' flags, and
tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

F = TypeVar("F", bound=Callable[..., Any])

# Arguments whose flag is singular, given once per item (--label a=1 --label b=2 works too).
_SINGULAR_FLAGS = {
    "image_pull_secrets": "--image-pull-secret",
    "tolerations": "--toleration",
    "labels": "--label",
    "annotations": "--annotation",
    "variants": "--variant",
}


def flag(field: str) -> str:
    """The magics' flag for a `kfnb.api` argument: ``restart_policy`` is ``--restart-policy``."""
    return _SINGULAR_FLAGS.get(field) or "--" + field.replace("_", "-")


def pod_flags() -> list[Callable[[F], F]]:
    """Flags for every pod on Kubernetes (also settable with ``%config Kfnb.*``), as
    ``argument`` decorators in the order ``--help`` lists them."""
    many = {"nargs": "+", "action": "extend", "default": []}
    return [
        argument("--image-pull-secret", metavar="NAME", help="Secret to pull the image", **many),
        argument("--node-selector", metavar="KEY=VALUE", help="node label pods need", **many),
        argument("--toleration", metavar="KEY[=VALUE]:EFFECT", help="taint pods tolerate", **many),
        argument(
            "--label", metavar="KEY=VALUE", help="pod label (PodDefaults select by it)", **many
        ),
        argument("--annotation", metavar="KEY=VALUE", help="pod annotation", **many),
        argument("--priority-class", metavar="NAME", help="the pods' PriorityClass"),
        argument("--gpu-type", metavar="PRODUCT", help="nvidia.com/gpu.product of GPU nodes"),
    ]


def with_pod_flags(func: F) -> F:
    """`pod_flags` as one decorator, for a stack of ``@argument`` lines."""
    for decorate in reversed(pod_flags()):
        func = decorate(func)
    return func


def pod_options(args: Any) -> dict[str, Any]:
    """The `pod_flags` parsed, as the `kfnb.api` arguments (`kfnb.pod_options.POD_FIELDS`)."""
    return {
        "image_pull_secrets": args.image_pull_secret,
        "node_selector": args.node_selector,
        "tolerations": args.toleration,
        "labels": args.label,
        "annotations": args.annotation,
        "priority_class": args.priority_class,
        "gpu_type": args.gpu_type,
    }


@contextmanager
def usage_errors() -> Iterator[None]:
    """The library's one-line errors, shown as IPython shows a user's mistake.

    The chain is dropped only here, where the message is all a user needs; a bug
    (any other exception) keeps its full traceback.
    """
    from kfnb.backends import BackendError
    from kfnb.bundle import BundleError
    from kfnb.packages import PackageError
    from kfnb.serving.local import ServeError
    from kfnb.spec import SpecError
    from kfnb.storage import StoreError
    from kfnb.tensorboard import TensorBoardError

    try:
        yield
    except SpecError as err:
        raise UsageError(err.worded(flag)) from None
    except (
        BundleError,
        BackendError,
        PackageError,
        StoreError,
        ServeError,
        TensorBoardError,
    ) as err:
        raise UsageError(str(err)) from None


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell, like ``kubectl get``."""
    lines = [header, *rows]
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in lines
    )
