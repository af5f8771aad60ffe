"""The magics, by concern: ``%%tfjob`` and ``%kfnb`` (jobs), ``%serve`` (serving).

They parse arguments and display results; the work is done by `kfnb.api`, whose
errors become one-line `UsageError`s that name the flag to change (`_common`).
"""

from __future__ import annotations

from kfnb.magics.jobs import JobMagics
from kfnb.magics.serving import ServingMagics

MAGICS = (JobMagics, ServingMagics)

__all__ = ["MAGICS", "JobMagics", "ServingMagics"]
