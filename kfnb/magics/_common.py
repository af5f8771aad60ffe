"""What the magics share: library errors worded as usage errors, and tables."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from IPython.core.error import UsageError

# Arguments whose flag is singular, given once per item (--label a=1 --label b=2 works too).
_SINGULAR_FLAGS = {
    "image_pull_secrets": "--image-pull-secret",
    "tolerations": "--toleration",
    "labels": "--label",
    "annotations": "--annotation",
}


def flag(field: str) -> str:
    """The magics' flag for a `kfnb.api` argument: ``restart_policy`` is ``--restart-policy``."""
    return _SINGULAR_FLAGS.get(field) or "--" + field.replace("_", "-")


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
