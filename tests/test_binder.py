"""binder/ and environment.yml install what `make setup` installs (the same pins and extras).

Binder itself cannot run here; the README's Binder section says how binder/ was checked in
a clean virtual environment. These tests keep the three set-ups from drifting apart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def make_variable(name: str) -> list[str]:
    line = re.search(rf"^{name} \?= (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert line, name
    return line.group(1).split()


def extras(spec: str) -> set[str]:
    found = re.search(r"\.\[([\w,]+)\]", spec)
    assert found, spec
    return set(found.group(1).split(","))


def test_requirements_pin_the_makefiles_tensorflow() -> None:
    lines = (REPO / "binder" / "requirements.txt").read_text().splitlines()
    pins = [line for line in lines if line.strip() and not line.startswith("#")]
    assert pins == make_variable("TF_PACKAGES")


def test_post_build_installs_kfnb_and_the_no_deps_packages_as_the_makefile_does() -> None:
    post_build = REPO / "binder" / "postBuild"
    assert os.access(post_build, os.X_OK), "repo2docker runs postBuild only if it is executable"
    text = post_build.read_text()
    assert text.startswith("#!") and "set -euo pipefail" in text
    no_deps = re.search(r"pip install .*--no-deps (.+)$", text, re.MULTILINE)
    assert no_deps and no_deps.group(1).split() == make_variable("TF_NO_DEPS")
    kfnb = re.search(r'pip install .*-e "(\.\[[\w,]+\])"', text)
    assert kfnb, text
    # What the demo notebook needs: its data, widgets and the model server.
    assert {"mnist", "widgets", "serving"} <= extras(kfnb.group(1))


def test_conda_environment_has_the_binder_extras_and_full_tensorflow() -> None:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    post_build = (REPO / "binder" / "postBuild").read_text()
    binder_extras = extras(re.search(r'-e "(\.\[[\w,]+\])"', post_build).group(1))
    assert extras(pip[0]) == binder_extras | {"tensorflow"}
