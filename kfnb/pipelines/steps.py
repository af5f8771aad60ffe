"""Step records: a pipeline is the steps recorded from cells under one name.

``%%tfjob --step train --pipeline mnist`` records the cell, its flags (as `kfnb.api.submit`
arguments), its dependencies and ``--when``, and the notebook values it reads
(pickled beside the record): those are the pipeline's parameters, which ``-p NAME=VALUE``
overrides for a run, as papermill's parameters cell. Records live under
``<Kfnb.home>/records/pipelines/<pipeline>/<step>.json``.
"""

from __future__ import annotations

import ast
import json
import shutil
import time
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kfnb._util import write_atomic
from kfnb.pipelines.when import WhenError, parse_when
from kfnb.records import RecordDir, record_fields, record_json, records_dir

STEP_KINDS = ("tfjob", "step", "serve")
NAME_LIMIT = 20  # a run's job is <pipeline>-<6 hex>-<step>[-rN], within a job name's 51
DEFAULT_PIPELINE = "pipeline"


class PipelineError(ValueError):
    """A pipeline that cannot be recorded or run; one line that says what to change."""


@dataclass(frozen=True)
class Step:
    pipeline: str
    name: str
    kind: str  # tfjob (a %%tfjob cell), step (a %%step cell), serve (%serve)
    source: str  # the cell, or for serve what it serves (a step's name, a job, a path)
    options: dict[str, Any] = field(default_factory=dict)  # submit()/serve() arguments
    after: tuple[str, ...] = ()
    when: str = ""
    retry: int = 0
    reads: tuple[str, ...] = ()  # notebook names the cell reads, pickled beside the record
    params: dict[str, Any] = field(default_factory=dict)  # those that are plain JSON values
    outputs: tuple[str, ...] = ()  # the names the cell passes to tfjob.output
    last_job: str = ""  # the job of the cell's latest run now, for tfjob.inputs
    renamed_from: str = ""  # the name this cell was recorded under before
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return record_json(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Step:
        found = record_fields(cls, data, old_key="version")
        for key in ("after", "reads", "outputs"):
            found[key] = tuple(found.get(key, ()))
        return cls(**found)

    def dependencies(self, steps: Iterable[str]) -> tuple[str, ...]:
        """``--after``, plus the steps its ``--when`` reads and a served step's source."""
        deps = list(self.after)
        if self.when:
            deps += [s for s, _ in parse_when(self.when).refs]
        if self.kind == "serve" and self.source in set(steps):
            deps.append(self.source)
        return tuple(dict.fromkeys(d for d in deps if d != self.name))


def pipelines_dir() -> Path:
    return records_dir() / "pipelines"


def _steps(pipeline: str) -> RecordDir[Step]:
    return RecordDir(pipelines_dir() / check_name(pipeline, "pipeline"), Step.from_json, "step")


def check_name(name: str, what: str) -> str:
    """A step or pipeline name: a short DNS-1035 label (it becomes part of job names)."""
    from kfnb.spec import _DNS_1035

    if not _DNS_1035.match(name) or len(name) > NAME_LIMIT:
        raise PipelineError(
            f"{what} name {name!r} must be a DNS-1035 label of at most {NAME_LIMIT} "
            "characters (lower-case letters, digits, '-', starting with a letter)"
        )
    return name


def written_outputs(source: str) -> tuple[str, ...]:
    """The output names a cell writes: ``tfjob.output("NAME", ...)`` calls with a literal name."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ()
    names = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "output"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "tfjob"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append(node.args[0].value)
    return tuple(dict.fromkeys(names))


def _is_param(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def capture_names(
    source: str, names: Mapping[str, Any], hidden: Iterable[str] = ()
) -> dict[str, Any]:
    """The notebook values the cell reads (modules, functions and data alike)."""
    from kfnb.bundle import referenced_names

    read, bound = referenced_names(source)
    skip = set(hidden) | {"tfjob", "__builtins__"}
    return {
        n: names[n]
        for n in sorted(read)
        if n in names and n not in skip and not (n in bound and n not in names)
    }


def record_step(step: Step, names: Mapping[str, Any]) -> Step:
    """Save ``step`` (replacing a step of the same name) with the ``names`` it reads."""
    import cloudpickle

    check_name(step.pipeline, "pipeline")
    check_name(step.name, "step")
    if step.kind not in STEP_KINDS:
        raise PipelineError(f"step kind {step.kind!r} is not one of {STEP_KINDS}")
    for dep in step.after:
        check_name(dep, "--after step")
    if step.when:
        try:
            parse_when(step.when)
        except WhenError as err:
            raise PipelineError(str(err)) from None
    pickled = {}
    for name, value in names.items():
        try:
            pickled[name] = cloudpickle.dumps(value)
        except Exception as err:  # what cannot be pickled cannot travel with a run
            raise PipelineError(
                f"step {step.name} reads {name!r}, which cannot be recorded ({err}): "
                "compute it inside the cell"
            ) from None
    params = {
        n: v for n, v in names.items() if _is_param(v) and not isinstance(v, types.ModuleType)
    }
    step = replace(step, reads=tuple(sorted(names)), params=params)
    store = _steps(step.pipeline)
    for other in store.all():  # the same cell under a new name: a rename, not a new step
        if other.name != step.name and (other.kind, other.source) == (step.kind, step.source):
            delete_step(step.pipeline, other.name)
            step = replace(step, renamed_from=other.name)
    store.save(step.name, step.to_json())
    write_atomic(names_path(step.pipeline, step.name), cloudpickle.dumps(pickled))
    return step


def names_path(pipeline: str, step: str) -> Path:
    return _steps(pipeline).path(step).with_name(f"{step}.names.pkl")


def load_names(path: Path) -> dict[str, Any]:
    """A step's recorded notebook values (unpickled one by one, as recorded)."""
    import pickle

    blobs: dict[str, bytes] = pickle.loads(path.read_bytes())
    return {name: pickle.loads(blob) for name, blob in blobs.items()}


def set_last_job(pipeline: str, step: str, job: str) -> None:
    found = _steps(pipeline).load(step)
    if found is not None:
        _steps(pipeline).save(step, replace(found, last_job=job).to_json())


def load_steps(pipeline: str) -> dict[str, Step]:
    """The steps of ``pipeline`` by name; `PipelineError` when it has none."""
    steps = {s.name: s for s in sorted(_steps(pipeline).all(), key=lambda s: s.created)}
    if not steps:
        known = ", ".join(list_pipelines()) or "none yet"
        raise PipelineError(
            f"no pipeline named {pipeline!r} (pipelines: {known}): record steps with "
            f"`%%step NAME --pipeline {pipeline}` or `--step NAME` on %%tfjob"
        )
    return steps


def list_pipelines() -> list[str]:
    root = pipelines_dir()
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [name for name in found if _is_name(name)]  # a directory kfnb did not make: none


def _is_name(name: str) -> bool:
    try:
        check_name(name, "pipeline")
    except PipelineError:
        return False
    return True


def delete_step(pipeline: str, step: str) -> None:
    _steps(pipeline).delete(step)
    names_path(pipeline, step).unlink(missing_ok=True)


def delete_pipeline(pipeline: str) -> None:
    shutil.rmtree(pipelines_dir() / check_name(pipeline, "pipeline"), ignore_errors=True)


def graph(steps: Mapping[str, Step]) -> dict[str, tuple[str, ...]]:
    """Each step's dependencies, checked: unknown steps, cycles and ``--when``s that
    name an output no step writes are `PipelineError`s in one line."""
    deps: dict[str, tuple[str, ...]] = {}
    for name, step in steps.items():
        try:
            deps[name] = step.dependencies(steps)
        except WhenError as err:
            raise PipelineError(f"step {name}: {err}") from None
        for dep in deps[name]:
            if dep not in steps:
                raise PipelineError(
                    f"step {name} runs after {dep!r}, which is not a step of pipeline "
                    f"{step.pipeline} (steps: {', '.join(steps)}): fix --after or --when"
                )
        if step.when:
            for ref_step, output in parse_when(step.when).refs:
                if output not in steps[ref_step].outputs:
                    wrote = ", ".join(steps[ref_step].outputs) or "none"
                    raise PipelineError(
                        f"step {name}'s --when reads {ref_step}.{output}, but step {ref_step} "
                        f"writes no output {output!r} (its outputs: {wrote}): call "
                        f"tfjob.output({output!r}, value) in it or fix --when"
                    )
    _check_acyclic(deps)
    return deps


def _check_acyclic(deps: Mapping[str, tuple[str, ...]]) -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            cycle = path[path.index(node) :] + [node]
            raise PipelineError(
                f"the steps' dependencies form a cycle: {' -> '.join(reversed(cycle))}: "
                "remove one --after"
            )
        state[node] = 1
        for dep in deps[node]:
            visit(dep, [*path, node])
        state[node] = 2

    for node in deps:
        visit(node, [])


def parameters(steps: Mapping[str, Step]) -> dict[str, Any]:
    """The pipeline's parameters and their recorded values (a name read by several
    steps takes the last recorded one)."""
    found: dict[str, Any] = {}
    for step in steps.values():
        found.update(step.params)
    return found


def parse_overrides(items: Iterable[str], steps: Mapping[str, Step]) -> dict[str, Any]:
    """``-p NAME=VALUE`` pairs: a Python literal (20, 0.5, 'x', [1, 2]) or else the text."""
    readers = {n for step in steps.values() for n in step.reads}
    found = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise PipelineError(f"-p {item!r} is not NAME=VALUE")
        if name not in readers:
            known = ", ".join(sorted(parameters(steps))) or "none"
            raise PipelineError(
                f"-p {name}: no step reads {name!r} (parameters: {known}): set a name the "
                "steps' cells read"
            )
        try:
            found[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            found[name] = text
    return found


def to_json_text(steps: Mapping[str, Step]) -> str:
    return json.dumps({n: s.to_json() for n, s in steps.items()}, indent=1)
