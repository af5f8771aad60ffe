"""What a step hands the steps after it: ``tfjob.inputs[STEP]`` in their cells."""

from __future__ import annotations

from typing import Any


def step_input(job_name: str, outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON ``tfjob.inputs[STEP]`` is built from: the step's outputs, its job and the
    newest model that job saved (a path in a local store, else the store's URL)."""
    from kfnb._util import newest_version
    from kfnb.api import attach

    job = attach(job_name)
    if outputs is None:
        result = job.backend.replica_result(job.name, job.decider) or {}
        outputs = result.get("outputs") or {}
    store = job._store()
    if store.local_root is not None:
        model = job.latest_model()
        model_dir = str(model) if model is not None else ""
    else:
        prefix = f"{job.name}/model"
        names = {o.key[len(prefix) + 1 :].split("/", 1)[0] for o in store.list(prefix)}
        newest = newest_version(names)
        model_dir = f"{store.url.rstrip('/')}/{prefix}/{newest}" if newest else ""
    return {"job": job.name, "outputs": outputs, "model_dir": model_dir}
