"""Sweeps: search spaces, Optuna's suggestions, tfjob.params/report, and the local runner
with Katib's semantics over real local jobs (trivial cells, no TensorFlow)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from kfnb.sweeps import Sweep, SweepError, SweepFailed, SweepSpec, parse_space, start_sweep

pytest.importorskip("optuna")


def spec(*spaces: str, objective: str = "maximize score", **counts: Any) -> SweepSpec:
    return SweepSpec.build(list(spaces), objective, **counts)


# -- spaces -------------------------------------------------------------------------


def test_spaces_parse_every_kind() -> None:
    assert parse_space("lr=loguniform(1e-4, 1e-2)").describe() == "loguniform(0.0001, 0.01)"
    assert parse_space("x = uniform(-1, 1)").low == -1.0
    assert parse_space("n=int(1, 3)").grid_values() == (1, 2, 3)
    assert parse_space("opt=choice('adam', 'sgd')").values == ("adam", "sgd")
    assert parse_space("b=grid(32, 64)").values == (32, 64)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("lr", "is not NAME=SPACE"),
        ("lr=normal(0, 1)", "write one of uniform(...)"),
        ("lr=uniform(1)", "takes two numbers"),
        ("lr=uniform(2, 1)", "is empty"),
        ("lr=loguniform(0, 1)", "0 < low < high"),
        ("b=choice()", "is empty"),
        ("b=choice(1, 1)", "lists a value twice"),
        ("n=int(1.5, 3)", "two whole numbers"),
        ("x=choice(__import__('os').getcwd())", "is not a number or a string literal"),
        ("x=uniform(1, 2", "write one of"),
        ("1x=uniform(1, 2)", "must be a Python identifier"),
    ],
)
def test_a_bad_space_is_one_line_naming_the_flag(text: str, says: str) -> None:
    with pytest.raises(SweepError) as caught:
        parse_space(text)
    assert says in str(caught.value)
    assert "--sweep" in str(caught.value) and "\n" not in str(caught.value)


def test_counts_objective_and_algorithm_are_checked() -> None:
    with pytest.raises(SweepError, match="--parallel 4 is above --trials 3"):
        spec("x=uniform(0, 1)", trials=3, parallel=4)
    with pytest.raises(SweepError, match="'maximize METRIC'"):
        spec("x=uniform(0, 1)", objective="best accuracy")
    with pytest.raises(SweepError, match="--algorithm 'annealing'"):
        spec("x=uniform(0, 1)", algorithm="annealing")
    with pytest.raises(SweepError, match="needs --algorithm grid"):
        spec("x=grid(1, 2)", algorithm="tpe")
    with pytest.raises(SweepError, match="the grid algorithm needs listed values"):
        spec("x=uniform(0, 1)", algorithm="grid")
    with pytest.raises(SweepError, match="names x twice"):
        spec("x=uniform(0, 1)", "x=int(1, 2)")
    grid = spec("a=grid(1, 2)", "b=choice('p', 'q', 'r')", algorithm="grid")
    assert grid.trials == 6  # the whole grid unless --trials says otherwise
    assert spec("x=uniform(0, 1)").algorithm == "tpe"
    assert SweepSpec.from_json(json.loads(json.dumps(grid.to_json()))) == grid


def test_optuna_grid_and_median_stop() -> None:
    from kfnb.sweeps.optimizer import Optimizer

    grid = Optimizer(spec("a=grid(1, 2)", "b=int(0, 1)", algorithm="grid"))
    seen = []
    while not grid.grid_exhausted:
        number, params = grid.ask()
        seen.append((params["a"], params["b"]))
        grid.tell(number, 1.0)
    assert sorted(seen) == [(1, 0), (1, 1), (2, 0), (2, 1)]

    median = Optimizer(spec("x=uniform(0, 1)", early_stopping="medianstop", trials=5))
    for _ in range(3):  # three trials that reach 0.9 at step 0 and 1
        number, _params = median.ask()
        for step in (0, 1):
            median.report(number, step, 0.9)
        assert not median.should_stop(number)
        median.tell(number, 0.9)
    number, _params = median.ask()
    median.report(number, 0, 0.1)  # far below the median at step 0
    assert median.should_stop(number)


def test_an_algorithm_whose_library_is_missing_is_one_line() -> None:
    import importlib.util

    from kfnb.sweeps.optimizer import Optimizer

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed: Optuna's GP sampler can run")
    with pytest.raises(SweepError, match="--algorithm needs torch here"):
        Optimizer(spec("x=uniform(0, 1)", algorithm="bayesianoptimization"))


def test_trials_at_once_are_limited_by_the_cores() -> None:
    from kfnb.sweeps.runner import machine_parallel

    cores = os.cpu_count() or 1
    assert machine_parallel(1, 4) == 1  # one trial always runs
    assert machine_parallel(64, 1) == min(64, cores)
    assert machine_parallel(64, 2) == max(1, cores // 2)  # replicas of a trial share cores


# -- the runtime --------------------------------------------------------------------


def test_runtime_params_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from kfnb import runtime
    from kfnb.sweeps.objective import parse_reports, parse_stdout

    monkeypatch.setenv("KFNB_PARAM_lr", "0.001")
    monkeypatch.setenv("KFNB_PARAM_batch", "64")
    monkeypatch.setenv("KFNB_PARAM_opt", "adam")
    context = runtime.TFJobContext("j", tmp_path, {})
    assert context.params == {"lr": 0.001, "batch": 64, "opt": "adam"}
    context.report(accuracy=0.5, loss=2)
    context.report(accuracy=0.75)
    context.report(step=10, accuracy=0.8)
    out = capsys.readouterr().out
    assert out.splitlines() == ["accuracy=0.5", "loss=2.0", "accuracy=0.75", "accuracy=0.8"]
    # Katib's StdOut collector's filter reads them; kfnb's record keeps the steps.
    assert parse_stdout(out)["accuracy"] == [(0, 0.5), (1, 0.75), (2, 0.8)]
    reports = parse_reports((tmp_path / "reports.jsonl").read_text())
    assert reports == {"accuracy": [(0, 0.5), (1, 0.75), (10, 0.8)], "loss": [(0, 2.0)]}
    worker = runtime.TFJobContext("j", tmp_path / "w", {"cluster": {"chief": ["a"]}})
    worker.report(accuracy=1.0)  # not the chief: nothing printed, nothing kept
    assert capsys.readouterr().out == "" and not (tmp_path / "w").exists()


# -- the local runner ---------------------------------------------------------------

SCORE = "tfjob.report(score=tfjob.params['x'] * tfjob.params['k'])\n"


def test_local_sweep_finds_the_best_trial_and_serves_it(kfnb_home: Path) -> None:
    sweep = start_sweep(
        SCORE,
        spec("x=uniform(0, 1)", "k=choice(1, 2)", trials=4, parallel=2, algorithm="random"),
        backend="local",
    )
    status = sweep.wait(timeout=120)
    assert status.phase == "Succeeded" and status.count("Succeeded") == 4
    for trial in status.trials:  # each trial saw its own values and reported from them
        assert trial.objective == pytest.approx(trial.params["x"] * trial.params["k"])
    best = sweep.best
    assert best is not None
    assert best.objective == max(t.objective or 0 for t in status.trials)
    assert f"score={best.objective!r}" in best.logs()  # a Job handle: its log
    assert best.params == next(t.params for t in status.trials if t.name == best.name)
    from kfnb.api import _best_of_sweep

    assert _best_of_sweep(sweep.name) == best.name  # what %serve SWEEP serves
    from kfnb.api import render_serving
    from kfnb.serving.local import ServeError

    with pytest.raises(ServeError, match=f"job {best.name} keeps its model on this machine"):
        render_serving(sweep.name)  # %serve SWEEP --backend kubernetes: the best trial's
    # Its record lists it, and attaching (a new kernel) finds the same sweep.
    assert Sweep.attach(sweep.name).best.name == best.name  # type: ignore[union-attr]
    directory = kfnb_home / "sweeps" / sweep.name
    assert json.loads((directory / "env.json").read_text()) == []
    for path in (directory, directory / "env.json", directory / "runner.log",
                 directory / "state.json", directory / "bundle" / "names.pkl",
                 kfnb_home / "sweeps" / f"{sweep.name}.json"):  # fmt: skip
        assert path.stat().st_mode & 0o077 == 0, path  # the user's alone


def test_goal_stops_the_sweep(kfnb_home: Path) -> None:
    sweep = start_sweep(
        "tfjob.report(score=tfjob.params['x'])\n",
        SweepSpec.build(
            ["x=grid(1, 5, 2, 3)"], "maximize score", algorithm="grid", goal=4, parallel=1
        ),
        backend="local",
    )
    status = sweep.wait(timeout=120)
    assert status.reason == "ExperimentGoalReached"
    assert status.trials[-1].objective is not None and status.trials[-1].objective >= 4
    assert len(status.trials) < 4


def test_an_objective_no_trial_writes_is_said_after_the_first_trial(kfnb_home: Path) -> None:
    sweep = start_sweep(
        "tfjob.report(accuracy=0.5)\n", spec("x=uniform(0, 1)", trials=6), backend="local"
    )
    with pytest.raises(SweepFailed) as caught:
        sweep.wait(timeout=120)
    assert caught.value.status.reason == "ObjectiveNotWritten"
    assert "it wrote accuracy" in str(caught.value)
    assert len(caught.value.status.trials) == 1  # not after all six


def test_failing_trials_stop_at_max_failed_with_the_first_traceback(kfnb_home: Path) -> None:
    cell = "def train(x):\n    raise ValueError(f'bad x {x}')\ntrain(tfjob.params['x'])\n"
    sweep = start_sweep(cell, spec("x=uniform(0, 1)", trials=8, max_failed=1), backend="local")
    with pytest.raises(SweepFailed) as caught:
        sweep.wait(timeout=120)
    status = caught.value.status
    assert status.reason == "MaxFailedTrialsReached"
    assert status.count("Failed") == 2 and len(status.trials) == 2
    shown = "\n".join(caught.value._render_traceback_())
    assert "ValueError: bad x" in shown and "in train" in shown


def test_a_sweep_outlives_the_kernel_and_delete_stops_it(kfnb_home: Path) -> None:
    import kfnb.sweeps.sweep as sweeps

    cell = "import time\ntime.sleep(30)\ntfjob.report(score=1)\n"
    sweep = start_sweep(cell, spec("x=uniform(0, 1)", trials=3), backend="local")
    sweeps._runners.clear()  # a new kernel knows nothing of the runner process
    again = Sweep.attach(sweep.name)
    deadline = time.monotonic() + 30
    while not again.trials and time.monotonic() < deadline:
        time.sleep(0.1)
    assert again.status().phase == "Running" and again.trials[0].state == "Running"
    status = again.delete()
    assert status.phase == "Failed" and status.reason == "ExperimentDeleted"
    assert status.trials[0].state == "Killed"
    from kfnb.job import Job

    assert Job.attach(status.trials[0].name).status().finished


def test_a_runner_killed_is_said(kfnb_home: Path) -> None:
    cell = "import time\ntime.sleep(30)\n"
    sweep = start_sweep(cell, spec("x=uniform(0, 1)", trials=2), backend="local")
    pid = int((kfnb_home / "sweeps" / sweep.name / "runner.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while sweep.status().phase != "Failed" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sweep.status().reason == "RunnerLost"


def test_median_stop_stops_a_trial_below_the_median(kfnb_home: Path) -> None:
    # The fourth trial (number 3) scores far below the three before it, step by step.
    cell = (
        "import os, time\n"
        "scale = 0.01 if os.environ['KFNB_JOB_NAME'].endswith('-3') else 1.0\n"
        "for step in range(8):\n"
        "    tfjob.report(score=scale * (step + 1))\n"
        "    time.sleep(0.3)\n"
    )
    sweep = start_sweep(
        cell,
        spec("x=uniform(0, 1)", trials=4, early_stopping="medianstop", algorithm="random"),
        backend="local",
    )
    status = sweep.wait(timeout=120)
    states = {t.number: t.state for t in status.trials}
    assert states == {0: "Succeeded", 1: "Succeeded", 2: "Succeeded", 3: "EarlyStopped"}
    stopped = status.trials[3]
    assert len(stopped.curve) < 8 and stopped.message == "stopped early by medianstop"
    from kfnb.job import Job

    assert Job.attach(stopped.name).status().finished  # its job was stopped
    assert status.phase == "Succeeded"


# -- the magics ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("--trials 3", "--trials apply to a sweep: add --sweep NAME=SPACE"),
        ("--sweep 'x=uniform(1)' --objective 'maximize s'", "--sweep 'x=uniform(1)'"),
        ("--sweep 'x=uniform(0, 1)'", "needs --objective"),
        (
            "--sweep 'x=uniform(0, 1)' --objective 'maximize s' --trials 2 --parallel 5",
            "--parallel 5 is above --trials 2",
        ),  # fmt: skip
    ],
)
def test_sweep_flags_misused_are_one_line(shell: Any, line: str, says: str) -> None:
    from IPython.core.error import UsageError

    with pytest.raises(UsageError) as caught:
        shell.run_cell_magic("tfjob", line, "print(tfjob.params)\n")
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_sweep_from_a_cell_then_list_status_and_delete(shell: Any, capsys: Any) -> None:
    line = (
        "--backend local --name sw --sweep 'x=choice(1, 2, 3)' --trials 3 --parallel 2 "
        "--objective 'maximize score' --algorithm grid --wait"
    )
    sweep = shell.run_cell_magic("tfjob", line, "tfjob.report(score=tfjob.params['x'])\n")
    out = capsys.readouterr().out
    assert "Sweep sw: maximize score, grid, 3 trials, 2 at a time" in out
    assert "[3/3 succeeded; best sw-" in out and "score=3]" in out
    assert sweep.best.params == {"x": 3} and sweep.best.objective == 3.0
    shell.run_line_magic("kfnb", "sweeps")
    listed = capsys.readouterr().out
    assert (
        "sw " in listed and "Succeeded" in listed and "3/3" in listed and "maximize score" in listed
    )
    shell.run_line_magic("kfnb", "sweep status sw")
    status = capsys.readouterr().out
    assert status.count("Succeeded") >= 4 and "x=3" in status
    assert shell.run_line_magic("kfnb", "sweep attach sw").name == "sw"
    shell.run_line_magic("kfnb", "list")  # the trials are jobs too
    assert "sw-0" in capsys.readouterr().out
    shell.run_line_magic("kfnb", "sweep delete sw --purge")
    shell.run_line_magic("kfnb", "sweeps")
    assert "No sweeps yet" in capsys.readouterr().out
    from kfnb.records import load_record

    assert load_record("sw-0") is None


def test_a_sweep_name_that_is_a_path_reads_and_removes_nothing(tmp_path: Path) -> None:
    from kfnb.spec import SpecError
    from kfnb.sweeps.record import sweep_dir

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    crafted = {"record_version": 1, "name": str(victim), "backend": "local", "storage": "/s",
               "spec": {}}  # fmt: skip
    (tmp_path / "victim.json").write_text(json.dumps(crafted))
    with pytest.raises(SweepError, match="no sweep named"):
        Sweep.attach(str(victim))  # a path is never a sweep's name, and its record unread
    with pytest.raises(SpecError, match="DNS-1035"):
        sweep_dir("../../victim")
    assert (victim / "keep.txt").read_text() == "mine"
