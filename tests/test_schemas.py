"""The schemas copied into tests/schemas/ load, say where they come from, and catch errors.

The TFJob and InferenceService schemas are exercised by every manifest test; these
checks cover the copies themselves, and the kinds that pipelines and sweeps render.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import _SCHEMA_ROOTS, SCHEMAS, schema_errors

TFJOB = {
    "apiVersion": "kubeflow.org/v1",
    "kind": "TFJob",
    "metadata": {"name": "mnist"},
    "spec": {
        "tfReplicaSpecs": {
            "Worker": {
                "replicas": 2,
                "template": {"spec": {"containers": [{"name": "tensorflow", "image": "tf"}]}},
            }
        }
    },
}

WORKFLOW = {
    "apiVersion": "argoproj.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"generateName": "mnist-"},
    "spec": {
        "entrypoint": "main",
        "templates": [
            {"name": "main", "dag": {"tasks": [{"name": "train", "template": "train"}]}},
            {
                "name": "train",
                "resource": {
                    "action": "create",
                    "successCondition": "status.replicaStatuses.Worker.succeeded == 2",
                    "manifest": "apiVersion: kubeflow.org/v1\nkind: TFJob\n",
                },
            },
        ],
    },
}

EXPERIMENT = {
    "apiVersion": "kubeflow.org/v1beta1",
    "kind": "Experiment",
    "metadata": {"name": "mnist"},
    "spec": {
        "objective": {"type": "maximize", "objectiveMetricName": "accuracy"},
        "algorithm": {"algorithmName": "random"},
        "parallelTrialCount": 3,
        "maxTrialCount": 12,
        "parameters": [
            {"name": "lr", "parameterType": "double",
             "feasibleSpace": {"min": "0.0001", "max": "0.01"}}
        ],
        "trialTemplate": {"primaryContainerName": "tensorflow", "trialSpec": TFJOB},
    },
}

GRAPH = {
    "apiVersion": "serving.kserve.io/v1alpha1",
    "kind": "InferenceGraph",
    "metadata": {"name": "mnist"},
    "spec": {
        "nodes": {
            "root": {
                "routerType": "Splitter",
                "steps": [
                    {"serviceName": "mnist-a", "weight": 90},
                    {"serviceName": "mnist-b", "weight": 10},
                ],
            }
        }
    },
}


def broken(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``manifest`` with the dotted ``path`` set to ``value``."""
    import copy

    out = copy.deepcopy(manifest)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return out


@pytest.mark.parametrize(
    ("manifest", "path", "bad"),
    [
        (TFJOB, "spec.tfReplicaSpecs.Worker.replicas", "two"),
        (TFJOB, "spec.tfReplicaSpecs.Worker.replicaz", 2),  # only the strict copy sees it
        (WORKFLOW, "spec.templates.1.resource.action", 5),
        (EXPERIMENT, "spec.parallelTrialCount", "three"),
        (GRAPH, "spec.nodes.root.steps", "mnist-a"),
    ],
    ids=["tfjob", "tfjob-misspelt", "workflow", "experiment", "inferencegraph"],
)
def test_each_schema_accepts_a_good_manifest_and_rejects_a_broken_one(
    manifest: dict[str, Any], path: str, bad: Any
) -> None:
    assert schema_errors(manifest) == []
    assert schema_errors(broken(manifest, path, bad))


def test_every_schema_names_its_source_and_license() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    files = {file for file, _ in _SCHEMA_ROOTS.values()}
    assert files == {p.name for p in SCHEMAS.glob("*.json")}
    for file in files:
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{file}`"))
        assert re.search(r"commit [0-9a-f]{40}", row), row
        assert "Apache-2.0" in row
