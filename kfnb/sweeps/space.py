"""What a sweep searches and how: ``--sweep NAME=SPACE`` parsed safely, the objective,
the algorithm, and Katib's counts, checked before anything runs.

Spaces are parsed with `ast` (literals only, never ``eval``): ``uniform(a, b)``,
``loguniform(a, b)``, ``int(a, b)`` (both ends included), ``choice(v, ...)`` and
``grid(v, ...)``. Every mistake is a `SweepError`: one line that names the flag.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any

from kfnb.spec import SpecError

__all__ = ["ALGORITHMS", "Objective", "Space", "SweepError", "SweepSpec", "parse_space"]

# Katib's algorithm names (the Suggestion services it ships) that kfnb runs locally too.
ALGORITHMS = (
    "random",
    "grid",
    "tpe",
    "multivariate-tpe",
    "bayesianoptimization",
    "cmaes",
    "sobol",
    "hyperband",
)
EARLY_STOPPING = ("medianstop",)
KINDS = ("uniform", "loguniform", "int", "choice", "grid")
# A parameter reaches the replicas as the environment variable KFNB_PARAM_<name>.
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
Value = float | int | str | bool


class SweepError(SpecError):
    """A sweep that cannot run as asked; the message is one line naming the flag."""

    def __init__(self, message: str, *fields: str) -> None:
        super().__init__(message, *fields)


@dataclass(frozen=True)
class Space:
    """One parameter's values: a range (``low``..``high``) or listed ``values``."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    values: tuple[Value, ...] = ()

    @property
    def discrete(self) -> bool:
        return self.kind in ("int", "choice", "grid")

    def grid_values(self) -> tuple[Value, ...]:
        """Every value, for the grid algorithm; None-like for continuous spaces."""
        if self.kind == "int":
            return tuple(range(int(self.low), int(self.high) + 1))
        if self.kind in ("choice", "grid"):
            return self.values
        raise SweepError(
            f"--sweep {self.name}: the grid algorithm needs listed values "
            f"(grid(...), choice(...) or int(a, b)), not {self.kind}(...)",
            "sweep",
        )

    def describe(self) -> str:
        if self.values:
            return f"{self.kind}({', '.join(map(repr, self.values))})"
        low, high = (int(self.low), int(self.high)) if self.kind == "int" else (self.low, self.high)
        return f"{self.kind}({low!r}, {high!r})"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "low": self.low,
            "high": self.high,
            "values": list(self.values),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Space:
        return cls(data["name"], data["kind"], data["low"], data["high"], tuple(data["values"]))


def _literal(node: ast.expr, text: str) -> Value:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        raise SweepError(
            f"--sweep {text!r}: {ast.unparse(node)!r} is not a number or a string literal",
            "sweep",
        ) from None
    if not isinstance(value, (int, float, str, bool)):
        raise SweepError(
            f"--sweep {text!r}: {value!r} is not a number, a string or a boolean", "sweep"
        )
    return value


def parse_space(text: str) -> Space:
    """``NAME=KIND(ARGS)`` as a `Space`; `SweepError` for anything else."""
    name, sep, call = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise SweepError(f"--sweep {text!r} is not NAME=SPACE, e.g. lr=loguniform(1e-4, 1e-2)")
    if not _PARAM_NAME.match(name):
        raise SweepError(
            f"--sweep {text!r}: the name {name!r} must be a Python identifier "
            "(letters, digits, _; it becomes an environment variable)",
            "sweep",
        )
    try:
        tree = ast.parse(call.strip(), mode="eval").body
    except SyntaxError:
        tree = None
    if (
        not isinstance(tree, ast.Call)
        or not isinstance(tree.func, ast.Name)
        or tree.func.id not in KINDS
        or tree.keywords
    ):
        raise SweepError(
            f"--sweep {text!r}: write one of {', '.join(k + '(...)' for k in KINDS)}", "sweep"
        )
    kind = tree.func.id
    args = tuple(_literal(arg, text) for arg in tree.args)
    if kind in ("choice", "grid"):
        if not args:
            raise SweepError(f"--sweep {text!r} is empty: list at least one value", "sweep")
        if len(set(args)) != len(args):
            raise SweepError(f"--sweep {text!r} lists a value twice", "sweep")
        return Space(name, kind, values=args)
    if len(args) != 2 or not all(
        isinstance(a, (int, float)) and not isinstance(a, bool) for a in args
    ):
        raise SweepError(f"--sweep {text!r}: {kind}(low, high) takes two numbers", "sweep")
    low, high = float(args[0]), float(args[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SweepError(f"--sweep {text!r} is empty: {kind}(low, high) needs low < high", "sweep")
    if kind == "loguniform" and low <= 0:
        raise SweepError(f"--sweep {text!r}: loguniform needs 0 < low < high", "sweep")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise SweepError(f"--sweep {text!r}: int(low, high) takes two whole numbers", "sweep")
    return Space(name, kind, low, high)


_OBJECTIVE = re.compile(r"^\s*(maximize|minimize)\s+(\S+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Objective:
    """``maximize validation/epoch_accuracy``: the metric, its direction, an optional goal."""

    metric: str
    maximize: bool = True
    goal: float | None = None

    @classmethod
    def parse(cls, text: str, goal: float | None = None) -> Objective:
        found = _OBJECTIVE.match(text or "")
        if found is None:
            raise SweepError(
                f"--objective {text!r} is not 'maximize METRIC' or 'minimize METRIC', e.g. "
                "'maximize validation/epoch_accuracy'",
                "objective",
            )
        if goal is not None and not math.isfinite(goal):
            raise SweepError(f"--goal {goal!r} is not a finite number", "goal")
        return cls(found[2], found[1].lower() == "maximize", goal)

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    def reached(self, value: float) -> bool:
        if self.goal is None:
            return False
        return value >= self.goal if self.maximize else value <= self.goal

    def describe(self) -> str:
        goal = f" (goal {self.goal:g})" if self.goal is not None else ""
        return f"{self.direction} {self.metric}{goal}"


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: its spaces, objective, algorithm and Katib's counts.

    ``trials`` is maxTrialCount, ``parallel`` parallelTrialCount, ``max_failed``
    maxFailedTrialCount (default: as many as ``trials``, as Katib leaves it unset).
    """

    spaces: tuple[Space, ...]
    objective: Objective
    algorithm: str = "random"
    trials: int = 10
    parallel: int = 1
    max_failed: int | None = None
    early_stopping: str | None = None

    @classmethod
    def build(
        cls,
        sweep: list[str] | tuple[str, ...],
        objective: str | None,
        *,
        algorithm: str | None = None,
        trials: int | None = None,
        parallel: int | None = None,
        max_failed: int | None = None,
        goal: float | None = None,
        early_stopping: str | None = None,
    ) -> SweepSpec:
        """The flags of ``%%tfjob --sweep ...`` as a checked `SweepSpec`."""
        spaces = tuple(parse_space(text) for text in sweep)
        if not spaces:
            raise SweepError("a sweep needs at least one --sweep NAME=SPACE", "sweep")
        names = [s.name for s in spaces]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SweepError(f"--sweep names {', '.join(twice)} twice: give each once", "sweep")
        if not objective:
            raise SweepError(
                "a sweep needs --objective 'maximize METRIC' (or minimize): the scalar "
                "each trial writes to TensorBoard or reports with tfjob.report(METRIC=value)",
                "objective",
            )
        algorithm = algorithm or ("grid" if all(s.kind == "grid" for s in spaces) else "tpe")
        algorithm = algorithm.lower()
        if algorithm not in ALGORITHMS:
            raise SweepError(
                f"--algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)} (Katib's names)",
                "algorithm",
            )
        if algorithm == "grid":
            size = 1
            for space in spaces:
                size *= len(space.grid_values())
            trials = trials or size
        else:
            grids = [s.name for s in spaces if s.kind == "grid"]
            if grids:
                raise SweepError(
                    f"--sweep {grids[0]}: grid(...) needs --algorithm grid; "
                    "use choice(...) to let the algorithm pick",
                    "sweep",
                )
        trials = 10 if trials is None else trials
        parallel = 1 if parallel is None else parallel
        if trials < 1:
            raise SweepError(f"--trials {trials}: a sweep runs at least one trial", "trials")
        if parallel < 1:
            raise SweepError(f"--parallel {parallel}: run at least one trial at a time", "parallel")
        if parallel > trials:
            raise SweepError(
                f"--parallel {parallel} is above --trials {trials}: at most {trials} "
                "trials can run at once",
                "parallel",
            )
        if max_failed is not None and max_failed < 0:
            raise SweepError(f"--max-failed {max_failed} cannot be negative", "max_failed")
        if early_stopping is not None and early_stopping.lower() not in EARLY_STOPPING:
            raise SweepError(
                f"--early-stopping {early_stopping!r}: use {', '.join(EARLY_STOPPING)}",
                "early_stopping",
            )
        return cls(
            spaces,
            Objective.parse(objective, goal),
            algorithm,
            trials,
            parallel,
            max_failed,
            early_stopping.lower() if early_stopping else None,
        )

    @property
    def failures_allowed(self) -> int:
        return self.trials if self.max_failed is None else self.max_failed

    def to_json(self) -> dict[str, Any]:
        return {
            "spaces": [s.to_json() for s in self.spaces],
            "objective": {
                "metric": self.objective.metric,
                "maximize": self.objective.maximize,
                "goal": self.objective.goal,
            },
            "algorithm": self.algorithm,
            "trials": self.trials,
            "parallel": self.parallel,
            "max_failed": self.max_failed,
            "early_stopping": self.early_stopping,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepSpec:
        return cls(
            tuple(Space.from_json(s) for s in data["spaces"]),
            Objective(**data["objective"]),
            data["algorithm"],
            data["trials"],
            data["parallel"],
            data["max_failed"],
            data["early_stopping"],
        )
