"""Kubernetes backend against the FAKE API server (tests/fake_kube.py), not a cluster:

(a) submit-to-Running as the notebook sees it (`Job.status()` polled as `Job.wait`
    polls it) minus the moment the fake operator set Running; and a 2,000-line log
    read through five dropped streams: lines lost, repeated, out of order.
(b) rendering and validating (TFJob CRD schema as given and strict, ConfigMap with
    kubernetes-validate) a 16-worker job.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, private_home

sys.path.insert(0, str(REPO))


def _running_lag(runs: int = 5) -> list[float]:
    import kfnb
    from kfnb.backends.kubernetes import KubernetesBackend, stop_watchers
    from tests.fake_kube import FakeKube

    lags = []
    with FakeKube() as fake:
        os.environ["KUBECONFIG"] = str(fake.kubeconfig(Path(tempfile.mkdtemp()) / "config"))
        backend = KubernetesBackend()
        for run in range(runs):
            name = f"lag-{run}"
            kfnb.submit("print(1)\n", name=name, workers=2, names={}, backend=backend)
            while backend.status(name).phase not in ("Running", "Succeeded"):
                time.sleep(0.1)  # Job.wait's poll
            lags.append(time.time() - fake.running_at[name])
        stop_watchers()
    return lags


def _dropped_streams() -> tuple[int, int, bool]:
    import kfnb
    from kfnb.backends.kubernetes import stop_watchers
    from tests.fake_kube import FakeKube, ReplicaScript

    lines = [f"line {i}" for i in range(2000)]
    with FakeKube(step=0.002, script=lambda job, replica: ReplicaScript(lines)) as fake:
        os.environ["KUBECONFIG"] = str(fake.kubeconfig(Path(tempfile.mkdtemp()) / "config"))
        job = kfnb.submit("print(1)\n", name="drops", names={}, backend="kubernetes")
        got: list[str] = []
        offset = drops = 0
        while True:
            status = job.status()
            text, offset = job.log_since("worker-0", offset, partial=status.finished)
            got += text.splitlines()
            if status.finished:
                break
            if got and drops < 5 and len(got) > 300 * (drops + 1):
                fake.drop_streams()
                drops += 1
            time.sleep(0.01)
        stop_watchers()
    missing = len(set(lines) - set(got))
    repeated = len(got) - len(set(got))
    return missing, repeated, got == lines and drops == 5


def _render_and_validate(runs: int = 20) -> float:
    import kubernetes_validate

    from kfnb.backends.kube_manifests import ClusterSettings, configmap_for, for_cluster, owned_by
    from kfnb.bundle import build_bundle
    from tests.conftest import schema_validators

    validators = schema_validators("TFJob")
    bundle = build_bundle("print(1)\n", {"x": 1}, job_name="big")
    from kfnb.spec import JobSpec

    store = ClusterSettings("alice", "s3://runs", "minio:9000", "s3-creds")
    kubernetes_validate.validate(configmap_for(bundle, "big", "alice"), "1.30", strict=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        spec = JobSpec(name="big", workers=16, ps=2, chief=1, gpus=1,
                       code_files=tuple(bundle.files))
        tfjob = for_cluster(spec.to_manifest(), store)
        for validator in validators:
            validator.validate(tfjob)
        configmap = owned_by(configmap_for(bundle, "big", "alice"), {**tfjob, "metadata": {
            **tfjob["metadata"], "uid": "u"}})
        kubernetes_validate.validate(configmap, "1.30", strict=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    private_home()
    lags = _running_lag()
    print("\n== Kubernetes backend against the FAKE API server (not a cluster)")
    print(f"  submit-to-Running seen by the notebook after the fake set it: median "
          f"{statistics.median(lags):.3f} s, max {max(lags):.3f} s over {len(lags)} jobs  "
          f"({'ok' if max(lags) < 1 else 'OVER'} 1 s)")
    missing, repeated, ok = _dropped_streams()
    print(f"  2000 log lines through 5 dropped streams: {missing} lost, {repeated} repeated, "
          f"{'in order' if ok else 'NOT in order'}")
    median = _render_and_validate()
    print(f"  render + validate a 16-worker TFJob and its ConfigMap: median {median * 1000:.1f} ms"
          f"  ({'ok' if median < 0.05 else 'OVER'} 50 ms)")


if __name__ == "__main__":
    main()
