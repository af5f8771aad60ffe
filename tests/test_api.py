"""The Python API under the magics: `kfnb.submit`, `kfnb.render`, `kfnb.attach`.

The magics are a thin layer over it: what a cell does, a script can do, and the
errors speak of the API's arguments there and of the magic's flags in a cell.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import kfnb
from kfnb.backends import JobNotFound
from kfnb.spec import SpecError

SCRIPT = """
import kfnb

def triple(x):
    return 3 * x

job = kfnb.submit("print('tripled', triple(14))", name="from-a-script", backend="local")
print(job.wait(timeout=60).phase)
print(kfnb.attach("from-a-script").logs())
"""


def test_a_script_submits_with_its_own_functions(tmp_path: Path) -> None:
    """Outside IPython the names a job may read are the caller's globals."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "Succeeded"
    assert "tripled 42" in done.stdout
    assert "running jobs on the local backend" not in done.stdout  # asked for by name


def test_render_is_what_the_dry_run_prints(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_cell("factor = 3")
    capsys.readouterr()
    cell = "print(factor)\n"
    shell.run_cell_magic("tfjob", "--name same --workers 2 --env EPOCHS=3 --dry-run", cell)
    printed = yaml.safe_load(capsys.readouterr().out)
    rendered = kfnb.render(cell, name="same", workers=2, env={"EPOCHS": "3"})
    assert rendered == printed
    assert rendered["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2
    with pytest.raises(JobNotFound):  # nothing was submitted: no record
        kfnb.attach("same")


def test_errors_name_arguments_in_the_api_and_flags_in_the_magic(
    shell: InteractiveShell,
) -> None:
    with pytest.raises(SpecError) as api_error:
        kfnb.render("print(1)\n", names={}, restart_policy="Sometimes")
    assert str(api_error.value).startswith("restart_policy 'Sometimes' is not one of")
    with pytest.raises(SpecError) as api_error:
        kfnb.render("print(1)\n", names={}, backoff_limit=-1)
    assert str(api_error.value) == "backoff_limit takes a positive number, not -1"
    with pytest.raises(UsageError) as magic_error:
        shell.run_cell_magic("tfjob", "--backoff-limit -1", "print(1)\n")
    assert str(magic_error.value) == "--backoff-limit takes a positive number, not -1"


def test_a_taken_name_is_refused_before_anything_runs() -> None:
    first = kfnb.submit("print(1)\n", name="taken", names={}, backend="local")
    assert first.wait(timeout=60).phase == "Succeeded"
    with pytest.raises(SpecError, match="a job named 'taken' exists already: pick another name"):
        kfnb.submit("print(2)\n", name="taken", names={}, backend="local")
    assert first.logs().strip() == "1"  # the first job's log is untouched


def test_the_serve_magic_takes_sub_commands(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("serve", "list")
    assert "No models are served" in capsys.readouterr().out
    for line, words in {
        "stop nothere": "no model server named nothere",
        "restart": "the following arguments are required: name",
        "list extra": "%serve list takes no arguments",
    }.items():
        with pytest.raises(UsageError) as error:
            shell.run_line_magic("serve", line)
        assert words in str(error.value), (line, error.value)
        assert "\n" not in str(error.value)


def test_the_api_is_exported_lazily() -> None:
    code = textwrap.dedent(
        """
        import sys, kfnb
        assert "kfnb.api" not in sys.modules
        assert callable(kfnb.submit) and callable(kfnb.serve)
        assert "kfnb.api" in sys.modules
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
