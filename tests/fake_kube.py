"""A FAKE Kubernetes API server over real HTTP on 127.0.0.1, for tests and benchmarks.

It is not Kubernetes and proves nothing about a real cluster. It serves what kfnb's
Kubernetes backend asks of one, through the real ``kubernetes`` client:

- a generic namespaced object store (any ``/api/v1`` or ``/apis/<group>/<version>``
  plural: TFJobs, ConfigMaps, pods, events, and later InferenceServices, Deployments,
  Services), with create/get/list/delete, label and field selectors, resourceVersions
  and ``?watch=true`` streams of chunked JSON events;
- a fake Training Operator: a TFJob gets pods labelled as the operator labels them,
  which go Pending -> Running -> Succeeded/Failed, write timestamped log lines
  (served with ``follow``, ``timestamps`` and ``sinceTime``), and stay Pending with a
  FailedScheduling event when they ask for more ``nvidia.com/gpu`` than a node has;
  the TFJob's status carries its conditions and ``replicaStatuses`` counted per type;
- a fake Argo controller: DAG tasks in order with ``depends``/``when``; a ``resource``
  task (``create``/``apply``) creates its object here and is decided by its success and
  failure conditions read as Argo reads them (label selectors over JSON paths); other
  tasks (container steps) are decided by ``workflow_script``, running no pod;
- RBAC for a Role bound in one namespace and ClusterRoles bound cluster-wide (``rules``,
  ``cluster_rules``), SelfSubjectAccessReviews and 403/404/409 answers worded as the API
  server words them, DeleteOptions' uid and resourceVersion preconditions among them;
- Namespace objects with the labels a profile's namespace has (``namespace_labels``:
  Istio injection, Pod Security), and API discovery per group and version, with
  Argo's Workflow and Katib's Experiment CRDs on or off (``argo``, ``katib``);
- a fake Katib controller (`katib_results`): an Experiment gets Trials whose TFJobs
  are its trial template with the trial's parameters substituted, each Trial ending with
  the given observation or failed;
- a fake KServe controller: an InferenceService (created or replaced) becomes Ready
  with a URL and the traffic split its ``canaryTrafficPercent`` asks for; an
  InferenceGraph becomes Ready with a URL once every InferenceService its steps name
  is Ready (a fake of KServe's webhook refuses a Splitter whose weights do not sum to
  100); a Deployment becomes available;
- faults on demand: denied verbs, no TFJob CRD, no KServe, dropped streams, garbage answers;
- watches as the API server's watch cache serves them: BOOKMARK events when asked for
  (``allowWatchBookmarks``), and an ERROR event with a 410 Expired Status when a watch
  asks for a resourceVersion older than the history kept (see `while_disconnected`);
- PersistentVolumeClaims (`claim`), and for pods whose claim is missing, unbound, or
  ReadWriteOnce and attached on another node, the scheduler's and the attach
  controller's events in their words;
- log lines stamped in a zone other than UTC, and stderr lines stamped out of order;
- in-cluster mode (``tls=True`` and `service_account`): HTTPS with a CA made for the
  test, and every request must carry the service account's current bearer token (401
  otherwise, worded as the API server words it); `rotate_token` replaces it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

CORE = "api/v1"
TFJOBS = ("apis/kubeflow.org/v1", "tfjobs")
ISVCS = ("apis/serving.kserve.io/v1beta1", "inferenceservices")
WORKFLOWS = ("apis/argoproj.io/v1alpha1", "workflows")
DEPLOYMENTS = ("apis/apps/v1", "deployments")
EXPERIMENTS = ("apis/kubeflow.org/v1beta1", "experiments")
TRIALS = ("apis/kubeflow.org/v1beta1", "trials")
GRAPHS = ("apis/serving.kserve.io/v1alpha1", "inferencegraphs")
KINDS = {
    "tfjobs": "TFJob",
    "configmaps": "ConfigMap",
    "pods": "Pod",
    "events": "Event",
    "nodes": "Node",
    "namespaces": "Namespace",
    "services": "Service",
    "deployments": "Deployment",
    "secrets": "Secret",
    "inferenceservices": "InferenceService",
    "inferencegraphs": "InferenceGraph",
    "serviceaccounts": "ServiceAccount",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "workflows": "Workflow",
    "experiments": "Experiment",
    "trials": "Trial",
}
CLUSTER_SCOPED = {"nodes", "namespaces"}
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
# What discovery lists for a custom resource group/version (other prefixes: all KINDS).
DISCOVERY = {
    "apis/kubeflow.org/v1": ["tfjobs"],
    "apis/kubeflow.org/v1beta1": ["experiments", "suggestions", "trials"],
    "apis/argoproj.io/v1alpha1": ["workflows", "workflowtaskresults"],
}


UNAUTHORIZED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}


def stamp(ns: int, zone: int = 0) -> str:
    """RFC 3339 with nanoseconds, as the kubelet writes log timestamps; ``zone``: minutes
    east of UTC, as containerd and conmon stamp lines in the node's local zone."""
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9 + zone * 60))
    offset = f"{'-' if zone < 0 else '+'}{abs(zone) // 60:02d}:{abs(zone) % 60:02d}"
    return f"{local}.{ns % 10**9:09d}{offset if zone else 'Z'}"


def _test_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA made for this fake and a certificate for 127.0.0.1 signed by it: (CA, cert,
    key) PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kube test CA")])

    def certificate(subject: x509.Name, public: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )
        if ca:
            usage = dict.fromkeys(
                ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"),
                False,
            )
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                    **usage,
                ),
                critical=True,
            )
        else:
            names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256())

    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    paths = (directory / "ca.crt", directory / "server.crt", directory / "server.key")
    pem = serialization.Encoding.PEM
    paths[0].write_bytes(certificate(ca_name, ca_key.public_key(), True).public_bytes(pem))
    paths[1].write_bytes(certificate(server_name, key.public_key(), False).public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _since(value: str) -> int:
    import calendar

    return calendar.timegm(time.strptime(value.rstrip("Z")[:19], "%Y-%m-%dT%H:%M:%S")) * 10**9


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _matches(obj: dict[str, Any], labels: str | None, fields: str | None) -> bool:
    for term in filter(None, (labels or "").split(",")):
        key, _, value = term.partition("=")
        if obj.get("metadata", {}).get("labels", {}).get(key) != value:
            return False
    for term in filter(None, (fields or "").split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if str(_get(obj, key)) == value:
                return False
        else:
            key, _, value = term.partition("=")
            if str(_get(obj, key)) != value:
                return False
    return True


@dataclass
class ReplicaScript:
    """What a fake replica does once Running: print ``lines``, then exit."""

    lines: list[str]
    exit_code: int = 0
    burst: int = 3  # lines sharing one timestamp, as fast prints do
    late: frozenset[int] = frozenset()  # lines (stderr's) stamped before the line before
    # Under restartPolicy ExitCode, an exit code of 128+ is retried: the operator deletes
    # the pod, creates it again under the same name, and that pod runs ``retry``.
    retry: ReplicaScript | None = None


@dataclass
class FakeKube:
    """The fake API server; ``with FakeKube() as fake:`` starts and stops it."""

    namespaces: set[str] = field(default_factory=lambda: {"default", "alice"})
    user: str = "system:serviceaccount:alice:default-editor"
    crd: bool = True
    kserve: bool = True  # the InferenceService CRD is installed
    argo: bool = True  # Argo's Workflow CRD (argoproj.io/v1alpha1) is installed
    # What the fake Argo controller makes of each DAG task: (phase, output parameters,
    # message); a task not listed Succeeds with no outputs. Scripted: no step runs.
    workflow_script: dict[str, tuple[str, dict[str, str], str]] = field(default_factory=dict)
    katib: bool = True  # Katib's Experiment CRD (kubeflow.org/v1beta1) is installed
    # The fake Katib controller's trials: each one's objective observation, None for a
    # trial whose job fails (see `_katib`).
    katib_results: list[float | None] = field(default_factory=list)
    # Labels of the namespace objects (istio-injection, pod-security.kubernetes.io/enforce).
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    # The fake KServe's storage initializer finds models only at this S3 endpoint ("": any).
    store_endpoint: str = ""
    load_failures: dict[str, str] = field(default_factory=dict)  # storageUri -> why it fails
    copy_model_error: str = ""  # the TF Serving Deployment's copy-model fails with this log
    step: float = 0.05  # seconds between the fake operator's moves
    gpu_nodes: dict[str, int] = field(default_factory=lambda: {"node-a": 2, "node-b": 0})
    script: Callable[[str, str], ReplicaScript] = field(
        default=lambda job, replica: ReplicaScript([f"{replica} says {i}" for i in range(6)])
    )
    deny: set[tuple[str, str, str]] = field(default_factory=set)  # (verb, group, resource)
    # A Role's rules (deploy/rbac.yaml's), bound in ``role_namespace``: when given, only
    # what they grant there, and what ``cluster_rules`` grant anywhere, is allowed.
    rules: list[dict[str, Any]] | None = None
    role_namespace: str = "alice"
    # ClusterRoles' rules bound to the user by ClusterRoleBindings: every namespace and the
    # cluster scope (deploy/rbac-nodes.yaml's). Only read when ``rules`` is given.
    cluster_rules: list[dict[str, Any]] = field(default_factory=list)
    # The OwnerReferencesPermissionEnforcement admission plugin (on by default in OpenShift).
    owner_enforcement: bool = False
    # Kueue managing every job (manageJobsWithoutQueueName): its webhook creates each TFJob
    # with runPolicy.suspend true, and it stays Suspended until admit().
    kueue: bool = False
    pull_seconds: float = 0.0  # pods wait this long (pulling images) before they run
    legacy_forbidden: bool = False  # seed 000's pre-1.11 wording of a 403
    garbage: bool = False  # answer everything with an HTML page, as a wrong proxy would
    lag: dict[str, float] = field(default_factory=dict)  # plural -> seconds its watches lag
    bookmark_every: float = 0.5  # seconds an idle watch waits before a BOOKMARK (real: ~60)
    log_zone: int = 0  # minutes east of UTC that log lines are stamped in (+08:00: 480)
    tls: bool = False  # HTTPS with a CA made for the test (in-cluster mode)
    # Every pod's first init container fails with this log (the kubelet's termination
    # message under FallbackToLogsOnError), as kfnb-packages does when the index is away.
    init_failure: str = ""
    node_labels: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> more labels
    # Images under this prefix need an existing image pull secret (others are public).
    private_registry: str = "registry.example.com/private/"

    def __post_init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self.history: list[tuple[int, str, str, str, dict[str, Any]]] = []
        self.logs: dict[tuple[str, str], list[tuple[int, str]]] = {}
        self.running_at: dict[str, float] = {}  # job -> when the fake set Running
        self.requests: list[tuple[str, str]] = []
        self.counts: Counter[str] = Counter()  # requests by kind ("watch pods", "log follow")
        self.version = 0
        self.drops = 0
        self.compacted = 0  # resourceVersions up to this one are no longer kept
        self.lists: list[str] = []  # paths of list (not watch) requests
        self.refused = 0  # requests answered 401
        self.tokens: set[str] | None = None  # bearer tokens accepted; None: no auth at all
        self.cond = threading.Condition()
        self.stopping = False
        for name, gpus in self.gpu_nodes.items():
            self._put(CORE, "nodes", "", self._node(name, gpus))
        for name in sorted(self.namespaces):
            labels = {"kubernetes.io/metadata.name": name, **self.namespace_labels.get(name, {})}
            meta = {"name": name, "labels": labels}
            namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}
            self._put(CORE, "namespaces", "", namespace)

    def allows(self, verb: str, group: str, resource: str, namespace: str | None = None) -> bool:
        """RBAC's answer for the fake's user: not denied, and, if ``rules`` are set, granted
        by them in their namespace or by ``cluster_rules``. ``namespace``: "" for the
        cluster scope (nodes, or pods of every namespace); None for the Role's."""
        if (verb, group, resource) in self.deny:
            return False
        if self.rules is None:
            return True
        in_role = namespace is None or namespace == self.role_namespace
        return any(
            group in rule.get("apiGroups", ())
            and resource in rule.get("resources", ())
            and (verb in rule.get("verbs", ()) or "*" in rule.get("verbs", ()))
            for rule in (self.rules if in_role else []) + self.cluster_rules
        )

    def owner_refusal(
        self, group: str, plural: str, obj: dict[str, Any], namespace: str | None = None
    ) -> str:
        """Why OwnerReferencesPermissionEnforcement refuses to create ``obj``, in its own
        words (plugin/pkg/admission/gc), or "": an ownerReference needs ``delete`` on the
        object; ``blockOwnerDeletion`` needs ``update`` on the owner's finalizers."""
        refs = obj.get("metadata", {}).get("ownerReferences") or []
        if not self.owner_enforcement or not refs:
            return ""
        if not self.allows("delete", group, plural, namespace):
            return "cannot set an ownerRef on a resource you can't delete: , <nil>"
        for ref in refs:
            owner_group = ref["apiVersion"].rpartition("/")[0]
            owner = next((p for p, k in KINDS.items() if k == ref["kind"]), "")
            if ref.get("blockOwnerDeletion") and not self.allows(
                "update", owner_group, f"{owner}/finalizers", namespace
            ):
                return (
                    "cannot set blockOwnerDeletion if an ownerReference refers to a resource "
                    "you can't set finalizers on: , <nil>"
                )
        return ""

    def admit(self, namespace: str, job: str) -> None:
        """Kueue admits the job: runPolicy.suspend false. The operator resumes it as
        Training Operator 1.9 does (Suspended False, TFJobResumed, startTime now)."""

        def resume(obj: dict[str, Any]) -> None:
            obj["spec"]["runPolicy"]["suspend"] = False
            message = f"TFJob {job} is resumed."
            _condition("Suspended", "TFJobResumed", message, "False")(obj)
            obj["status"]["startTime"] = stamp(time.time_ns())[:19] + "Z"

        self.update(*TFJOBS, namespace, job, resume)
        self._react(*TFJOBS, namespace, self.get(*TFJOBS, namespace, job) or {})

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> FakeKube:
        fake = self

        class Handler(_Handler):
            kube = fake

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.tls:
            self._certs = Path(tempfile.mkdtemp(prefix="fake-kube-tls-"))
            ca, cert, key = _test_certificates(self._certs)
            self.ca_pem = ca.read_bytes()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            # The handshake happens in the request's thread (_Handler.setup), not in accept.
            self.server.socket = context.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.url = self.url.replace("http:", "https:")
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
        if self.tls:
            shutil.rmtree(self._certs, ignore_errors=True)

    def service_account(self, directory: Path, namespace: str = "alice") -> dict[str, str]:
        """A pod's service-account files for this fake (token, ca.crt, namespace) and the
        environment a pod gets; from now on every request needs that token."""
        from kfnb.backends.kube_api import SA_DIR_ENV

        if not self.tls:
            raise ValueError("in-cluster mode needs FakeKube(tls=True)")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.crt").write_bytes(self.ca_pem)
        (directory / "namespace").write_text(namespace)
        self.rotate_token(directory)
        return {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.server.server_address[1]),
            SA_DIR_ENV: str(directory),
        }

    def rotate_token(self, directory: Path) -> str:
        """A new bound token, as the kubelet rotates them before they expire: the fake
        accepts only it from now on, and the token file is replaced whole."""
        token = f"fake-bound-token-{secrets.token_hex(8)}"
        staged = directory / ".token.new"
        staged.write_text(token)
        os.replace(staged, directory / "token")
        with self.cond:
            self.tokens = {token}
        return token

    def kubeconfig(self, path: Path, namespace: str | None = "alice") -> Path:
        context: dict[str, Any] = {"cluster": "fake", "user": "fake"}
        if namespace:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": context}],
        }
        path.write_text(json.dumps(config))
        return path

    def drop_streams(self) -> None:
        """Cut every open watch and log stream mid-way, as a flaky network would."""
        with self.cond:
            self.drops += 1
            self.cond.notify_all()

    def while_disconnected(self, change: Callable[[], None]) -> None:
        """Cut every stream, make ``change``, and forget the history until now, as when a
        client stays away longer than the API server keeps events (etcd compacts them):
        a watch resumed from before gets 410 Expired, and must list again."""
        with self.cond:
            self.drops += 1
            change()
            self.compacted = self.version
            self.cond.notify_all()

    # -- the store -----------------------------------------------------------------

    def _node(self, name: str, gpus: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, **self.node_labels.get(name, {})},
            },
            "status": {
                "allocatable": {"cpu": "8", "nvidia.com/gpu": str(gpus)},
                "addresses": [{"type": "InternalIP", "address": f"10.0.0.{len(name)}"}],
            },
        }

    def _put(
        self, prefix: str, plural: str, namespace: str, obj: dict[str, Any], kind: str = "ADDED"
    ) -> dict[str, Any]:
        with self.cond:
            self.version += 1
            meta = obj.setdefault("metadata", {})
            meta["resourceVersion"] = str(self.version)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", stamp(time.time_ns())[:19] + "Z")
            meta.setdefault("generation", 1)
            if namespace:
                meta["namespace"] = namespace
            store = self.objects.setdefault((prefix, plural), {})
            if kind == "DELETED":
                store.pop((namespace, meta["name"]), None)
            else:
                store[(namespace, meta["name"])] = obj
            self.history.append(
                (self.version, f"{prefix}/{plural}", namespace, kind, json.loads(json.dumps(obj)))
            )
            self.cond.notify_all()
            return obj

    def get(self, prefix: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.cond:
            return self.objects.get((prefix, plural), {}).get((namespace, name))

    def update(
        self,
        prefix: str,
        plural: str,
        namespace: str,
        name: str,
        change: Callable[[dict[str, Any]], None],
    ) -> None:
        with self.cond:
            obj = self.get(prefix, plural, namespace, name)
            if obj is None:
                return
            change(obj)
            self._put(prefix, plural, namespace, obj, "MODIFIED")

    def delete(self, prefix: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.cond:
            obj = self.get(prefix, plural, namespace, name)
            if obj is None:
                return None
            self._put(prefix, plural, namespace, obj, "DELETED")
            uid = obj["metadata"]["uid"]
            # The garbage collector: whatever this object owned goes with it.
            for (p, pl), store in list(self.objects.items()):
                for (ns, n), child in list(store.items()):
                    owners = child.get("metadata", {}).get("ownerReferences", [])
                    if any(o.get("uid") == uid for o in owners):
                        self.delete(p, pl, ns, n)
            return obj

    def event(
        self,
        namespace: str,
        pod: str,
        reason: str,
        message: str,
        kind: str = "Warning",
        involved: str = "Pod",
    ) -> None:
        self._put(
            CORE,
            "events",
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{pod}.{uuid.uuid4().hex[:12]}"},
                "involvedObject": {"kind": involved, "name": pod, "namespace": namespace},
                "reason": reason,
                "message": message,
                "type": kind,
            },
        )

    def claim(
        self,
        name: str,
        namespace: str = "alice",
        phase: str = "Bound",
        modes: tuple[str, ...] = ("ReadWriteMany",),
    ) -> dict[str, Any]:
        """A PersistentVolumeClaim, bound to a volume unless ``phase`` says otherwise."""
        status: dict[str, Any] = {"phase": phase}
        spec: dict[str, Any] = {
            "accessModes": list(modes),
            "resources": {"requests": {"storage": "10Gi"}},
        }
        if phase == "Bound":
            spec["volumeName"] = f"pvc-{uuid.uuid4()}"
            status.update(accessModes=list(modes), capacity={"storage": "10Gi"})
        obj = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}}
        return self._put(
            CORE, "persistentvolumeclaims", namespace, {**obj, "spec": spec, "status": status}
        )

    # -- controllers -----------------------------------------------------------------

    def _react(self, prefix: str, plural: str, namespace: str, obj: dict[str, Any]) -> None:
        """What the cluster's controllers would do with a new or changed object."""
        targets = {
            TFJOBS: self._operate,
            ISVCS: self._serve,
            GRAPHS: self._route_graph,
            DEPLOYMENTS: self._roll_out,
            WORKFLOWS: self._orchestrate,
            EXPERIMENTS: self._katib,
        }
        target = targets.get((prefix, plural))
        if target is not None:
            threading.Thread(target=target, args=(namespace, obj), daemon=True).start()

    def _orchestrate(self, namespace: str, workflow: dict[str, Any]) -> None:
        """The fake Argo controller: walks the entrypoint's DAG in order, evaluating each
        task's ``depends`` (false: Omitted) and ``when`` on earlier outputs (false:
        Skipped), and records each node's phase, times and output parameters in
        ``status.nodes`` as Argo does; a Failed task fails the Workflow and no later task
        starts. A ``resource`` task (``create``, ``apply``) creates its object and follows
        its conditions (`_argo_resource`); any other task (container steps) is decided by
        ``workflow_script``: no pod runs."""
        name = workflow["metadata"]["name"]
        spec = workflow["spec"]
        templates = {t["name"]: t for t in spec["templates"]}
        main = templates[spec["entrypoint"]]
        phases: dict[str, str] = {}
        outputs: dict[str, dict[str, str]] = {}

        def now() -> str:
            return stamp(time.time_ns())[:19] + "Z"

        def set_status(**changes: Any) -> None:
            def change(obj: dict[str, Any]) -> None:
                obj.setdefault("status", {"nodes": {}}).update(changes)

            self.update(*WORKFLOWS, namespace, name, change)

        def set_node(task: str, **node: Any) -> None:
            def change(obj: dict[str, Any]) -> None:
                nodes = obj.setdefault("status", {}).setdefault("nodes", {})
                key = f"{name}-{zlib.crc32(task.encode())}"
                nodes[key] = {**nodes.get(key, {}), "id": key, "name": f"{name}.{task}",
                              "displayName": task, "templateName": task, **node}  # fmt: skip

            self.update(*WORKFLOWS, namespace, name, change)

        set_status(phase="Running", startedAt=now(), nodes={})
        failed = ""
        for task in main["dag"]["tasks"]:
            time.sleep(self.step)
            if failed:
                break
            step = task["name"]
            if not _argo_true(task.get("depends", ""), phases, outputs, depends=True):
                phases[step] = "Omitted"
                set_node(step, type="Skipped", phase="Omitted", message="omitted: depends")
                continue
            if task.get("when") and not _argo_true(task["when"], phases, outputs):
                phases[step] = "Skipped"
                set_node(step, type="Skipped", phase="Skipped",
                         message=f"when '{task['when']}' evaluated false")  # fmt: skip
                continue
            template = templates.get(task.get("template", step), {})
            resource = template.get("resource")
            set_node(step, type="Pod", phase="Running", startedAt=now())
            time.sleep(self.step)
            if resource and resource.get("action") in ("create", "apply"):
                phase, message = self._argo_resource(namespace, workflow, resource, outputs)
                values = {}
            else:
                phase, values, message = self.workflow_script.get(step, ("Succeeded", {}, ""))
            phases[step], outputs[step] = phase, values
            parameters = [{"name": k, "value": v} for k, v in values.items()]
            set_node(step, phase=phase, finishedAt=now(), message=message,
                     outputs={"parameters": parameters})  # fmt: skip
            if phase != "Succeeded":
                failed = step
        if failed:
            set_status(phase="Failed", finishedAt=now(), message=f"child '{failed}' failed")
        else:
            set_status(phase="Succeeded", finishedAt=now())

    def _argo_resource(
        self,
        namespace: str,
        workflow: dict[str, Any],
        resource: dict[str, Any],
        outputs: dict[str, dict[str, str]],
    ) -> tuple[str, str]:
        """A fake of Argo's executor for a ``resource`` template with ``action: create`` or
        ``apply`` (workflow/executor/resource.go): the manifest, its ``{{...}}``
        substituted, is created in this store (owned by the Workflow when
        ``setOwnerReference``; ``apply`` over an existing object replaces its spec, labels
        and annotations, as a fake of kubectl's merge), and its controllers react; then
        it is re-read until a condition decides: any failure requirement matching fails
        the node, all success requirements matching succeed it (failure first), no
        conditions succeed it at once. Returns (phase, message). Not modelled: the
        executor pod, its service account's RBAC, the 5 s poll, the other actions."""
        import yaml

        meta = workflow["metadata"]
        values = {
            "workflow.name": meta["name"],
            "workflow.namespace": namespace,
            **{
                f"workflow.parameters.{p['name']}": str(p.get("value", ""))
                for p in workflow["spec"].get("arguments", {}).get("parameters", [])
            },
            **{
                f"tasks.{task}.outputs.parameters.{name}": value
                for task, named in outputs.items()
                for name, value in named.items()
            },
        }
        text = re.sub(
            r"\{\{\s*([^{}]+?)\s*\}\}", lambda m: values.get(m[1], m[0]), resource["manifest"]
        )
        obj = yaml.safe_load(text)
        version = obj["apiVersion"]
        prefix = f"apis/{version}" if "/" in version else f"api/{version}"
        plural = next(p for p, kind in KINDS.items() if kind == obj["kind"])
        name = obj["metadata"]["name"]
        if resource.get("setOwnerReference"):
            owner = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                     "name": meta["name"], "uid": meta["uid"],
                     "blockOwnerDeletion": True, "controller": True}  # fmt: skip
            obj["metadata"].setdefault("ownerReferences", []).append(owner)
        try:
            success = _selector(resource.get("successCondition", ""))
            failure = _selector(resource.get("failureCondition", ""))
        except ValueError as error:
            return "Error", str(error)
        with self.cond:
            existing = self.get(prefix, plural, namespace, name)
            if existing is not None and resource["action"] == "create":
                return "Failed", f'{plural} "{name}" already exists'
            if existing is not None:  # apply: the manifest's spec and metadata over it
                existing["spec"] = obj.get("spec", {})
                for key in ("labels", "annotations", "ownerReferences"):
                    if key in obj["metadata"]:
                        existing["metadata"][key] = obj["metadata"][key]
                existing["metadata"]["generation"] += 1
                obj = self._put(prefix, plural, namespace, existing, "MODIFIED")
            else:
                obj = self._put(prefix, plural, namespace, obj)
        self._react(prefix, plural, namespace, obj)
        while not self.stopping:
            current = self.get(prefix, plural, namespace, name)
            if current is None:
                return (
                    "Failed",
                    "The resource has been deleted while its status was still being checked.",
                )
            current = json.loads(json.dumps(current))  # a read, as the executor's GET
            hit = next((r for r in failure if _requirement_matches(r, current)), None)
            if hit is not None:
                return "Failed", f"failure condition '{_requirement_text(hit)}' evaluated true"
            if all(_requirement_matches(r, current) for r in success):
                return "Succeeded", ""
            time.sleep(self.step / 5)
        return "Failed", "stopped"

    def _katib(self, namespace: str, experiment: dict[str, Any]) -> None:
        """The fake Katib controller: for each of ``katib_results`` (up to maxTrialCount)
        a Trial with parameter values from the feasible spaces, whose TFJob is the trial
        template with ``${trialParameters.*}`` substituted (the fake operator runs it),
        then the Trial Succeeded with its observation, or Failed; the Experiment ends
        Succeeded, or Failed once more than maxFailedTrialCount trials failed. It asks
        no suggestion service and collects no metrics: the observations are given."""
        if experiment.get("status"):
            return  # a change of an Experiment already run
        name = experiment["metadata"]["name"]
        spec = experiment["spec"]
        metric = spec["objective"]["objectiveMetricName"]
        template = spec["trialTemplate"]
        owner = {"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment", "name": name,
                 "uid": experiment["metadata"]["uid"], "controller": True}  # fmt: skip
        self.update(
            *EXPERIMENTS,
            namespace,
            name,
            _condition("Created", "ExperimentCreated", "Experiment is created"),
        )
        time.sleep(self.step)
        self.update(
            *EXPERIMENTS,
            namespace,
            name,
            _condition("Running", "ExperimentRunning", "Experiment is running"),
        )
        failed = 0
        limit = spec.get("maxFailedTrialCount")
        for index, result in enumerate(self.katib_results[: spec.get("maxTrialCount", 1)]):
            trial_name = f"{name}-{uuid.uuid4().hex[:8]}"
            values = {}
            for parameter in spec["parameters"]:
                space = parameter["feasibleSpace"]
                listed = space.get("list")
                values[parameter["name"]] = listed[index % len(listed)] if listed else space["min"]
            assignments = [{"name": k, "value": v} for k, v in values.items()]
            refs = {p["name"]: p["reference"] for p in template["trialParameters"]}
            text = json.dumps(template["trialSpec"])
            for key, reference in refs.items():
                value = trial_name if reference == "${trialSpec.Name}" else values[reference]
                text = text.replace("${trialParameters." + key + "}", value)
            job = json.loads(text)
            job["metadata"].update(name=trial_name, namespace=namespace)
            trial = {
                "apiVersion": "kubeflow.org/v1beta1",
                "kind": "Trial",
                "metadata": {
                    "name": trial_name,
                    "labels": {"katib.kubeflow.org/experiment": name},
                    "ownerReferences": [owner],
                },  # fmt: skip
                "spec": {"parameterAssignments": assignments, "runSpec": job},
            }
            self._put(*TRIALS, namespace, trial)
            self.update(
                *TRIALS,
                namespace,
                trial_name,
                _condition("Running", "TrialRunning", "Trial is running"),
            )
            self._put(*TFJOBS, namespace, job)
            self._react(*TFJOBS, namespace, job)
            time.sleep(self.step)

            def ended(obj: dict[str, Any], result: float | None = result) -> None:
                status = obj.setdefault("status", {})
                status["startTime"] = status["completionTime"] = stamp(time.time_ns())[:19] + "Z"
                if result is None:
                    _condition(
                        "Failed", "TrialFailed", "Trial has failed. Job message: TFJob failed"
                    )(obj)
                else:
                    observed = {
                        "name": metric,
                        "latest": str(result),
                        "min": str(result),
                        "max": str(result),
                    }
                    status["observation"] = {"metrics": [observed]}
                    _condition("Succeeded", "TrialSucceeded", "Trial has succeeded")(obj)

            self.update(*TRIALS, namespace, trial_name, ended)
            failed += result is None
            if limit is not None and failed > limit:
                message = "Experiment has failed because max failed count has reached"
                end = _condition("Failed", "ExperimentMaxFailedTrialsReached", message)
                self.update(*EXPERIMENTS, namespace, name, end)
                return
        message = "Experiment has succeeded because max trial count has reached"
        end = _condition("Succeeded", "ExperimentMaxTrialsReached", message)
        self.update(*EXPERIMENTS, namespace, name, end)

    def _serve(self, namespace: str, isvc: dict[str, Any]) -> None:
        """The fake KServe controller. A new spec makes a new revision. As KServe copies
        status.observedGeneration from the Knative Service, the status first says the new
        generation is observed, still Ready on the previous revision (latestCreatedRevision
        ahead of latestReadyRevision); a step later the new revision is ready with the
        split ``canaryTrafficPercent`` asks, or its model failed to load (modelStatus
        FailedToLoad with the storage initializer's message, Ready still Unknown)."""
        time.sleep(self.step)
        name = isvc["metadata"]["name"]
        revision: dict[str, Any] = {}

        def created(obj: dict[str, Any]) -> None:
            status = obj.setdefault("status", {})
            if status.get("observedGeneration") == obj["metadata"]["generation"]:
                return  # the same spec again: no new revision
            revision["predictor"] = obj["spec"]["predictor"]  # the newest spec, as reconciled
            count = status.get("revisions", 0) + 1
            revision["name"] = f"{name}-predictor-{count:05d}"
            component = status.setdefault("components", {}).setdefault("predictor", {})
            component["latestCreatedRevision"] = revision["name"]
            status.setdefault("conditions", [{"type": "Ready", "status": "Unknown"}])
            status.update(
                observedGeneration=obj["metadata"]["generation"],
                revisions=count,
                url=f"http://{name}.{namespace}.example.com",
                address={"url": f"http://{name}.{namespace}.svc.cluster.local"},
            )

        self.update(*ISVCS, namespace, name, created)
        if not revision:
            return
        time.sleep(self.step)
        predictor = revision["predictor"]
        failure = self._load_failure(namespace, predictor)

        def ready(obj: dict[str, Any]) -> None:
            status = obj["status"]
            component = status["components"]["predictor"]
            latest, previous = revision["name"], component.get("latestReadyRevision")
            canary = predictor.get("canaryTrafficPercent")
            traffic = [{"revisionName": latest, "percent": 100, "latestRevision": True}]
            if canary is not None and previous:
                traffic = [
                    {"revisionName": latest, "percent": canary, "latestRevision": True},
                    {"revisionName": previous, "percent": 100 - canary, "latestRevision": False},
                ]
            component.update(latestReadyRevision=latest, traffic=traffic)
            status["conditions"] = [
                {"type": "PredictorReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ]
            loaded = {"activeModelState": "Loaded", "targetModelState": "Loaded"}
            status["modelStatus"] = {"transitionStatus": "UpToDate", "states": loaded}

        def failed(obj: dict[str, Any]) -> None:
            status = obj["status"]
            active = (status.get("modelStatus") or {}).get("states", {}).get("activeModelState")
            status["modelStatus"] = {
                "transitionStatus": "BlockedByFailedLoad",
                "states": {"activeModelState": active or "", "targetModelState": "FailedToLoad"},
                "lastFailureInfo": {
                    "location": revision["name"],
                    "reason": "ModelLoadFailed",
                    "message": failure,
                    "exitCode": 1,
                },
            }

        self.update(*ISVCS, namespace, name, failed if failure else ready)

    def _route_graph(self, namespace: str, graph: dict[str, Any]) -> None:
        """The fake KServe controller for an InferenceGraph: its router is Ready (with a URL)
        once every InferenceService its root's steps name is Ready; until then Ready is
        False, as KServe reports a graph whose services are not ready."""
        name = graph["metadata"]["name"]
        steps = graph["spec"]["nodes"]["root"].get("steps", [])
        deadline = time.monotonic() + 30
        while True:
            time.sleep(self.step)
            services = [self.get(*ISVCS, namespace, s.get("serviceName", "")) for s in steps]
            ready = all(
                any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (isvc or {}).get("status", {}).get("conditions", []))
                for isvc in services
            )  # fmt: skip
            if ready or time.monotonic() > deadline:
                break

        def observed(obj: dict[str, Any]) -> None:
            condition = {"type": "Ready", "status": "True"}
            if not ready:
                condition = {"type": "Ready", "status": "False", "reason": "ServiceNotReady",
                             "message": "fake KServe: an InferenceService of a step is not "
                             "ready"}  # fmt: skip
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "url": f"http://{name}.{namespace}.example.com",
                "conditions": [condition],
            }

        self.update(*GRAPHS, namespace, name, observed)

    def _load_failure(self, namespace: str, predictor: dict[str, Any]) -> str:
        """Why the fake storage initializer cannot fetch the model ("" when it can)."""
        uri = predictor.get("model", {}).get("storageUri", "")
        if uri in self.load_failures:
            return self.load_failures[uri]
        if not self.store_endpoint:
            return ""
        endpoint = self._initializer_endpoint(namespace, predictor.get("serviceAccountName"))
        if endpoint == self.store_endpoint:
            return ""
        where = endpoint or "AWS S3 (no s3-endpoint annotation on the Secret)"
        return f"fake storage initializer: failed to fetch {uri} from {where}: NoSuchBucket"

    def _initializer_endpoint(self, namespace: str, account_name: str | None) -> str:
        """The S3 endpoint KServe gives its storage initializer: the s3-endpoint annotation
        of a Secret the ServiceAccount lists that holds an S3 secret key (the
        ServiceAccount's own annotations count only beside an IRSA role)."""
        account = self.get(CORE, "serviceaccounts", namespace, account_name or "default") or {}
        key = "serving.kserve.io/s3-endpoint"
        endpoint = ""
        own = account.get("metadata", {}).get("annotations") or {}
        if "eks.amazonaws.com/role-arn" in own:
            endpoint = own.get(key, "")
        for ref in account.get("secrets") or []:
            secret = self.get(CORE, "secrets", namespace, ref.get("name", "")) or {}
            data = {**secret.get("data", {}), **secret.get("stringData", {})}
            if "AWS_SECRET_ACCESS_KEY" in data:  # KServe's default s3SecretAccessKeyName
                endpoint = (secret["metadata"].get("annotations") or {}).get(key, "")
        return endpoint

    def _roll_out(self, namespace: str, deployment: dict[str, Any]) -> None:
        """The fake Deployment controller: its pods, then available, unless ``copy_model_error``
        (the init container then crash-loops; the kubelet puts the log's tail in the
        termination message only under ``terminationMessagePolicy: FallbackToLogsOnError``)."""
        time.sleep(self.step)
        replicas = deployment.get("spec", {}).get("replicas", 1)
        failing = bool(self.copy_model_error)
        for index in range(replicas):
            self._put(CORE, "pods", namespace, self._serving_pod(deployment, index))

        def available(obj: dict[str, Any]) -> None:
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "replicas": replicas,
                "availableReplicas": 0 if failing else replicas,
            }

        self.update(*DEPLOYMENTS, namespace, deployment["metadata"]["name"], available)

    def _serving_pod(self, deployment: dict[str, Any], index: int) -> dict[str, Any]:
        meta, template = deployment["metadata"], deployment["spec"]["template"]
        name = f"{meta['name']}-7c9f8d6b5-{index:05d}"
        status: dict[str, Any] = {"phase": "Running"}
        init = (template["spec"].get("initContainers") or [{}])[0]
        if self.copy_model_error:
            terminated: dict[str, Any] = {"exitCode": 1, "reason": "Error"}
            if init.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                terminated["message"] = self.copy_model_error
            waiting = {
                "reason": "CrashLoopBackOff",
                "message": f"back-off 10s restarting failed container={init.get('name')} "
                f"pod={name}",
            }
            status = {
                "phase": "Pending",
                "initContainerStatuses": [
                    {
                        "name": init.get("name"),
                        "ready": False,
                        "restartCount": 1,
                        "state": {"waiting": waiting},
                        "lastState": {"terminated": terminated},
                    }
                ],
            }
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"]}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": dict(template["metadata"].get("labels", {})),
                "ownerReferences": [{**owner, "uid": meta["uid"], "controller": True}],
            },
            "spec": template["spec"],
            "status": status,
        }

    # -- the fake Training Operator ------------------------------------------------

    def _operate(self, namespace: str, tfjob: dict[str, Any]) -> None:
        job = tfjob["metadata"]["name"]
        owner = {
            "apiVersion": "kubeflow.org/v1",
            "kind": "TFJob",
            "name": job,
            "uid": tfjob["metadata"]["uid"],
            "controller": True,
        }

        policies = {
            kind.lower(): spec.get("restartPolicy", "Never")
            for kind, spec in tfjob["spec"]["tfReplicaSpecs"].items()
        }
        self.update(
            *TFJOBS,
            namespace,
            job,
            _condition("Created", "TFJobCreated", f"TFJob {namespace}/{job} is created."),
        )
        if tfjob["spec"].get("runPolicy", {}).get("suspend"):  # no pods until resumed
            message = f"TFJob {job} is suspended."
            self.update(*TFJOBS, namespace, job, _condition("Suspended", "TFJobSuspended", message))
            return
        pods: list[tuple[str, str, dict[str, Any]]] = []
        for kind, spec in tfjob["spec"]["tfReplicaSpecs"].items():
            for index in range(spec.get("replicas", 1)):
                replica = f"{kind.lower()}-{index}"
                template = spec["template"]
                container = template["spec"]["containers"][0]
                pod = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": f"{job}-{replica}",
                        "ownerReferences": [owner],
                        "annotations": dict(template.get("metadata", {}).get("annotations", {})),
                        "labels": {
                            **template.get("metadata", {}).get("labels", {}),
                            "training.kubeflow.org/job-name": job,
                            "training.kubeflow.org/replica-type": kind.lower(),
                            "training.kubeflow.org/replica-index": str(index),
                            "training.kubeflow.org/operator-name": "tfjob-controller",
                        },
                    },
                    "spec": json.loads(json.dumps(template["spec"])),
                    "status": {"phase": "Pending"},
                }
                refused = self._admission(namespace, pod)
                if refused:
                    # The operator's create fails; it says so on the TFJob and retries later.
                    self.event(
                        namespace, job, "FailedCreatePod", f"Error creating: {refused}",
                        involved="TFJob",
                    )  # fmt: skip
                    return
                self._put(CORE, "pods", namespace, pod)
                pods.append((replica, f"{job}-{replica}", container))

        def started(obj: dict[str, Any]) -> None:  # the operator's first status update
            obj["status"].setdefault("startTime", stamp(time.time_ns())[:19] + "Z")

        self._tfjob_status(namespace, job, started)
        time.sleep(self.step)
        blocked = False
        for _, pod, container in pods:
            gpus = int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
            spec = (self.get(CORE, "pods", namespace, pod) or {}).get("spec", {})
            if not self._selectable(spec.get("nodeSelector") or {}):
                n = len(self.gpu_nodes)
                self._unschedulable(
                    namespace,
                    pod,
                    f"0/{n} nodes are available: {n} node(s) didn't match Pod's node "
                    f"affinity/selector. preemption: 0/{n} nodes are available: {n} "
                    "Preemption is not helpful for scheduling.",
                )
                blocked = True
            elif self._pull_refused(namespace, pod, container["image"], spec):
                blocked = True
            elif gpus > max(self.gpu_nodes.values(), default=0):
                n = len(self.gpu_nodes)
                short = sum(1 for g in self.gpu_nodes.values() if g < gpus)
                message = (
                    f"0/{n} nodes are available: {short} Insufficient nvidia.com/gpu. "
                    f"preemption: 0/{n} nodes are available: {n} No preemption victims "
                    "found for incoming pod."
                )
                self._unschedulable(namespace, pod, message)
                blocked = True
            elif "does-not-exist" in container["image"]:
                image = container["image"]
                message = (
                    f'Failed to pull image "{image}": rpc error: code = NotFound desc = '
                    f'failed to pull and unpack image "{image}": not found'
                )
                self.update(
                    CORE,
                    "pods",
                    namespace,
                    pod,
                    lambda o, m=message, i=image: o["status"].update(
                        containerStatuses=[
                            {
                                "name": "tensorflow",
                                "restartCount": 0,
                                "ready": False,
                                "image": i,
                                "imageID": "",
                                "state": {"waiting": {"reason": "ErrImagePull", "message": m}},
                            }
                        ]
                    ),
                )
                self.event(namespace, pod, "Failed", message)
                blocked = True
        blocked = self._schedule_claims(namespace, [pod for _, pod, _ in pods]) or blocked
        if blocked:
            return
        # The mount waits for the code ConfigMap: the job's own, or a pipeline's shared one.
        mounted = {
            volume["configMap"]["name"]
            for spec in tfjob["spec"]["tfReplicaSpecs"].values()
            for volume in spec["template"]["spec"].get("volumes", [])
            if volume.get("configMap", {}).get("name", "").endswith("-code")
        } or {f"{job}-code"}
        while any(self.get(CORE, "configmaps", namespace, c) is None for c in mounted):
            if self.get(*TFJOBS, namespace, job) is None or self.stopping:
                return
            time.sleep(self.step / 5)
        time.sleep(self.pull_seconds)
        scripts = {replica: self.script(job, replica) for replica, _, _ in pods}
        if not self._run(namespace, job, pods, scripts):
            return
        retried = {
            replica: script.retry
            for replica, script in scripts.items()
            if script.retry is not None
            and script.exit_code >= 128  # under ExitCode, 1-127 are permanent, 128+ retried
            and policies.get(replica.split("-")[0]) == "ExitCode"
        }
        if retried:
            kinds = sorted({r.split("-")[0].capitalize() for r in retried})
            message = (
                f"TFJob {namespace}/{job} is restarting because {len(retried)} "
                f"{kinds[0]} replica(s) failed."
            )
            self._tfjob_status(namespace, job, _condition("Restarting", "TFJobRestarting", message))
            time.sleep(self.step)  # the operator's next reconcile
            again = []
            for replica, pod, container in pods:
                # The operator deletes the failed pod and creates it anew under the same
                # name; the old pod's log goes with it.
                old = self.delete(CORE, "pods", namespace, pod) if replica in retried else None
                if old is not None:
                    with self.cond:
                        self.logs.pop((namespace, pod), None)
                    self._put(CORE, "pods", namespace, _fresh_pod(old))
                    again.append((replica, pod, container))
            time.sleep(self.step)
            scripts.update({r: s for r, s in retried.items() if s is not None})
            if not self._run(namespace, job, again, scripts):
                return
        failed = [r for r, s in scripts.items() if s.exit_code]
        if failed:
            kind = failed[0].split("-")[0].capitalize()
            message = f"TFJob {namespace}/{job} has failed because 1 {kind} replica(s) failed."
            self._tfjob_status(namespace, job, _condition("Failed", "TFJobFailed", message))
        else:
            self._tfjob_status(
                namespace,
                job,
                _condition(
                    "Succeeded",
                    "TFJobSucceeded",
                    f"TFJob {namespace}/{job} successfully completed.",
                ),
            )

    def _tfjob_status(
        self, namespace: str, job: str, change: Callable[[dict[str, Any]], None]
    ) -> None:
        """One status update of the fake operator: ``change`` (a condition), with
        ``replicaStatuses`` counted from the job's pods as the Training Operator's
        updateJobReplicaStatuses counts them (common/pod.go): per replica type as the spec
        names it (Chief, Worker, PS, Evaluator), Running pods ``active``, Succeeded
        ``succeeded``, Failed ``failed``; zero counts omitted (omitempty), so a type with
        no pod running or ended is ``{}``."""

        def counted(obj: dict[str, Any]) -> None:
            kinds = {kind.lower(): kind for kind in obj["spec"]["tfReplicaSpecs"]}
            counts: dict[str, dict[str, int]] = {kind: {} for kind in kinds.values()}
            for (ns, _), pod in self.objects.get((CORE, "pods"), {}).items():
                labels = pod["metadata"].get("labels", {})
                if ns != namespace or labels.get("training.kubeflow.org/job-name") != job:
                    continue
                kind = kinds.get(labels.get("training.kubeflow.org/replica-type", ""))
                phase = pod.get("status", {}).get("phase")
                field = {"Running": "active", "Succeeded": "succeeded", "Failed": "failed"}
                if kind is not None and phase in field:
                    counts[kind][field[phase]] = counts[kind].get(field[phase], 0) + 1
            obj.setdefault("status", {})["replicaStatuses"] = counts
            change(obj)

        self.update(*TFJOBS, namespace, job, counted)

    def _selectable(self, selector: dict[str, str]) -> bool:
        """Some node has every label the pod's nodeSelector asks for."""
        nodes = [self._node(name, gpus) for name, gpus in self.gpu_nodes.items()]
        labels = [n["metadata"]["labels"] for n in nodes]
        return any(all(have.get(k) == v for k, v in selector.items()) for have in labels)

    def _unschedulable(self, namespace: str, pod: str, message: str) -> None:
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
        self.update(
            CORE,
            "pods",
            namespace,
            pod,
            lambda o: o["status"].update(conditions=[{**condition, "message": message}]),
        )
        self.event(namespace, pod, "FailedScheduling", message)

    def _pull_refused(self, namespace: str, pod: str, image: str, spec: dict[str, Any]) -> bool:
        """The kubelet's words for pull secrets it cannot find, and a private image's
        pull that fails without them (public images pull anyway)."""
        names = [r["name"] for r in spec.get("imagePullSecrets") or []]
        absent = [n for n in names if self.get(CORE, "secrets", namespace, n) is None]
        if absent:
            self.event(
                namespace,
                pod,
                "FailedToRetrieveImagePullSecret",
                f"Unable to retrieve some image pull secrets ({', '.join(absent)}); attempting "
                "to pull the image may not succeed.",
            )
        if not image.startswith(self.private_registry) or (names and not absent):
            return False
        message = (
            f'Failed to pull image "{image}": failed to pull and unpack image "{image}": '
            f'failed to resolve reference "{image}": pull access denied, repository does not '
            "exist or may require authorization: authorization failed: no basic auth credentials"
        )
        waiting = {"waiting": {"reason": "ErrImagePull", "message": message}}
        self.update(
            CORE,
            "pods",
            namespace,
            pod,
            lambda o: o["status"].update(containerStatuses=[_container_status(waiting, False)]),
        )
        self.event(namespace, pod, "Failed", message)
        return True

    def _admission(self, namespace: str, pod: dict[str, Any]) -> str:
        """PodSecurity admission's refusal of ``pod`` in ``namespace``, or ""."""
        from tests.pod_security import (
            admission_message,
            baseline_violations,
            restricted_violations,
        )

        # The namespace's pod-security.kubernetes.io/enforce label, as admission reads it.
        ns = self.get(CORE, "namespaces", "", namespace) or {}
        level = ns.get("metadata", {}).get("labels", {}).get(ENFORCE_LABEL, "privileged")
        check = {"restricted": restricted_violations, "baseline": baseline_violations}.get(level)
        violations = check(pod["spec"]) if check else []
        name = pod["metadata"]["name"]
        return admission_message("pods", name, level, violations) if violations else ""

    def _initialize(self, namespace: str, pods: list[tuple[str, str, dict[str, Any]]]) -> bool:
        """The pods' init containers run first; False when they fail (``init_failure``)."""
        failed = False
        for _, pod, _ in pods:
            spec = (self.get(CORE, "pods", namespace, pod) or {}).get("spec", {})
            init = (spec.get("initContainers") or [None])[0]
            if init is None:
                continue
            terminated: dict[str, Any] = {"exitCode": 0, "reason": "Completed"}
            if self.init_failure:
                terminated = {"exitCode": 1, "reason": "Error"}
                if init.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                    terminated["message"] = self.init_failure
                failed = True
            waiting = {"waiting": {"reason": "PodInitializing"}}
            self.update(
                CORE,
                "pods",
                namespace,
                pod,
                lambda o, t=terminated, n=init["name"], w=waiting: o["status"].update(
                    phase="Failed" if t["exitCode"] else "Pending",
                    initContainerStatuses=[
                        {**_container_status({"terminated": t}, False), "name": n}
                    ],
                    containerStatuses=[_container_status(w, False)],
                ),
            )
        return not failed

    def _schedule_claims(self, namespace: str, pods: list[str]) -> bool:
        """The fake scheduler and attach/detach controller for claims: pods go to the nodes
        in turn; a missing or unbound claim is a FailedScheduling event, a ReadWriteOnce
        volume already attached on another node a Multi-Attach error (the pod stays
        ContainerCreating), each worded as Kubernetes words it. True if any pod is stuck."""
        nodes, n = sorted(self.gpu_nodes), len(self.gpu_nodes)
        attached: dict[str, tuple[str, str]] = {}  # volume -> (node, pod)
        stuck = False
        for index, pod in enumerate(pods):
            spec = (self.get(CORE, "pods", namespace, pod) or {}).get("spec", {})
            node = nodes[index % n]
            for volume in spec.get("volumes") or []:
                claim_name = volume.get("persistentVolumeClaim", {}).get("claimName")
                if not claim_name:
                    continue
                claim = self.get(CORE, "persistentvolumeclaims", namespace, claim_name)
                later = f"preemption: 0/{n} nodes are available: {n} Preemption is not helpful "
                if claim is None or claim["status"]["phase"] != "Bound":
                    why = (
                        f'persistentvolumeclaim "{claim_name}" not found'
                        if claim is None
                        else "pod has unbound immediate PersistentVolumeClaims"
                    )
                    message = f"0/{n} nodes are available: {why}. {later}for scheduling."
                    self._unschedulable(namespace, pod, message)
                    stuck = True
                    continue
                self.update(
                    CORE, "pods", namespace, pod, lambda o, w=node: o["spec"].update(nodeName=w)
                )
                self.event(
                    namespace,
                    pod,
                    "Scheduled",
                    f"Successfully assigned {namespace}/{pod} to {node}",
                    kind="Normal",
                )
                volume_name = claim["spec"]["volumeName"]
                where = attached.setdefault(volume_name, (node, pod))
                one_node = "ReadWriteMany" not in claim["spec"]["accessModes"]
                if one_node and where[0] != node:
                    self.event(
                        namespace,
                        pod,
                        "FailedAttachVolume",
                        f"Multi-Attach error for "
                        f'volume "{volume_name}" Volume is already used by pod(s) '
                        f"{where[1]}",
                    )
                    stuck = True
        return stuck

    def _run(
        self,
        namespace: str,
        job: str,
        pods: list[tuple[str, str, dict[str, Any]]],
        scripts: dict[str, ReplicaScript],
    ) -> bool:
        """The pods run their scripts and end; False if the job went away meanwhile."""
        if not self._initialize(namespace, pods):
            kind = pods[0][0].split("-")[0].capitalize()
            message = f"TFJob {namespace}/{job} has failed because 1 {kind} replica(s) failed."
            self._tfjob_status(namespace, job, _condition("Failed", "TFJobFailed", message))
            return False
        for _, pod, _ in pods:
            self.update(
                CORE,
                "pods",
                namespace,
                pod,
                lambda o: o["status"].update(
                    phase="Running", containerStatuses=[_container_status({"running": {}}, True)]
                ),
            )
        message = f"TFJob {namespace}/{job} is running."
        self._tfjob_status(namespace, job, _condition("Running", "TFJobRunning", message))
        self.running_at[job] = time.time()
        longest = max(len(scripts[replica].lines) for replica, _, _ in pods)
        for i in range(longest):
            if self.get(*TFJOBS, namespace, job) is None or self.stopping:
                return False
            for replica, pod, _ in pods:
                script = scripts[replica]
                if i < len(script.lines):
                    with self.cond:
                        if i % script.burst == 0:
                            self._stamp = time.time_ns()
                        # A line of the other stream (stderr), stamped just before the
                        # line printed before it.
                        at = self._stamp - 1_000_000 if i in script.late else self._stamp
                        self.logs.setdefault((namespace, pod), []).append((at, script.lines[i]))
                        self.cond.notify_all()
            if (i + 1) % 3 == 0:
                time.sleep(self.step)
        for replica, pod, _ in pods:
            code = scripts[replica].exit_code
            ended = {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed"}}
            self.update(
                CORE,
                "pods",
                namespace,
                pod,
                lambda o, c=code, e=ended: o["status"].update(
                    phase="Failed" if c else "Succeeded",
                    containerStatuses=[_container_status(e, False)],
                ),
            )
        return True

    _stamp = 0


def request_kind(method: str, path: str, query: dict[str, str]) -> str:
    """What a request is, for counting: ``list pods``, ``watch tfjobs``, ``log follow``..."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    if not rest:
        return "get discovery"
    plural, named = rest[0], len(rest) > 1
    if rest[2:] == ["log"]:
        return "log follow" if query.get("follow") == "true" else "log read"
    verb = {"POST": "create", "DELETE": "delete", "PUT": "update"}.get(method)
    if verb is None:
        verb = "get" if named else ("watch" if query.get("watch") in ("true", "1") else "list")
    return f"{verb} {plural}"


def _argo_true(
    text: str,
    phases: dict[str, str],
    outputs: dict[str, dict[str, str]],
    depends: bool = False,
) -> bool:
    """The fake's reading of a task's ``depends`` or ``when`` (test code: Python's eval on
    the substituted text, with no builtins)."""
    if not text:
        return True
    if depends:
        text = re.sub(
            r"([a-z][-a-z0-9]*)\.(Succeeded|Skipped|Failed)",
            lambda m: str(
                phases.get(m[1]) in (("Skipped", "Omitted") if m[2] == "Skipped" else (m[2],))
            ),
            text,
        )
    else:
        text = re.sub(
            r"\{\{tasks\.([-a-z0-9]+)\.outputs\.parameters\.(\w+)\}\}",
            lambda m: outputs.get(m[1], {}).get(m[2], "None"),
            text,
        )
    text = text.replace("&&", " and ").replace("||", " or ").replace("true", "True")
    return bool(eval(text, {"__builtins__": {}}))  # noqa: S307 - the fake's own test input


# A label key (a qualified name, as apimachinery validates it) and a label value.
_LABEL_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"
_LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")
_REQUIREMENT = re.compile(
    r"\s*(?P<not>!)?\s*(?P<key>[^\s=!<>(),]+)\s*"
    r"(?:(?P<op>==|=|!=|>|<)\s*(?P<value>[^\s,()]*)"
    r"|\s(?P<set>in|notin)\s*\((?P<values>[^()]*)\))?\s*"
)


def _selector(text: str) -> list[tuple[str, str, list[str]]]:
    """A condition of an Argo resource template, parsed as Argo does: as a Kubernetes
    label selector (labels.ParseToRequirements): comma-separated requirements, each
    ``key``, ``!key``, ``key=v``, ``key==v``, ``key!=v``, ``key>n``, ``key<n``,
    ``key in (a,b)``, ``key notin (a,b)``, keys being label keys; ValueError otherwise."""
    parts = re.findall(r"(?:[^,(]|\([^)]*\))+", text) if text.strip() else []
    requirements = []
    for part in parts:
        found = _REQUIREMENT.fullmatch(part)
        if found is None:
            raise ValueError(f"unable to parse requirement: {part.strip()!r}")
        key = found["key"]
        if not _LABEL_KEY.fullmatch(key) or len(key.rpartition("/")[2]) > 63:
            raise ValueError(f"invalid label key {key!r}")
        if found["not"]:
            if found["op"] or found["set"]:
                raise ValueError(f"unable to parse requirement: {part.strip()!r}")
            requirements.append((key, "!", []))
            continue
        op = found["op"] or found["set"] or "exists"
        values = [found["value"] or ""] if found["op"] else []
        if found["set"]:
            values = [v.strip() for v in found["values"].split(",")]
        for value in values:
            if op in (">", "<") and not re.fullmatch(r"[-+]?[0-9]+", value):
                raise ValueError(
                    f"for 'Gt', 'Lt' operators, the value must be an integer: {part.strip()!r}"
                )
            if not _LABEL_VALUE.fullmatch(value) or len(value) > 63:
                raise ValueError(f"invalid label value {value!r}")
        requirements.append((key, op, values))
    return requirements


def _gjson(obj: Any, path: str) -> tuple[bool, str]:
    """Whether a dotted path exists in the object and its value as gjson's String() gives
    it (strings bare, numbers and booleans as JSON text)."""
    for part in path.split("."):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return False, ""
    if isinstance(obj, str):
        return True, obj
    return True, "" if obj is None else json.dumps(obj, separators=(",", ":"))


def _requirement_matches(requirement: tuple[str, str, list[str]], obj: dict[str, Any]) -> bool:
    """apimachinery's Requirement.Matches over the object's gjson paths."""
    key, op, values = requirement
    has, value = _gjson(obj, key)
    if op in ("=", "==", "in"):
        return has and value in values
    if op in ("!=", "notin"):
        return not has or value not in values
    if op == "exists":
        return has
    if op == "!":
        return not has
    if not has or not re.fullmatch(r"[-+]?[0-9]+", value):
        return False  # the object's value must parse as an integer
    return int(value) > int(values[0]) if op == ">" else int(value) < int(values[0])


def _requirement_text(requirement: tuple[str, str, list[str]]) -> str:
    key, op, values = requirement
    if op == "exists":
        return key
    if op == "!":
        return f"!{key}"
    if op in ("in", "notin"):
        return f"{key} {op} ({','.join(values)})"
    return f"{key}{op}{values[0]}"


def _condition(
    kind: str, reason: str, message: str, state: str = "True"
) -> Callable[[dict[str, Any]], None]:
    """The operator's change to a TFJob's status conditions, as its setCondition makes it
    (pkg/util/status.go): one condition per type, the changed one last; Running and
    Restarting replace each other; Running turns False at the end; lastTransitionTime
    moves only when the condition's status does."""

    def change(obj: dict[str, Any]) -> None:
        status = obj.setdefault("status", {})
        conditions = status.setdefault("conditions", [])
        now = stamp(time.time_ns())[:19] + "Z"
        current = next((c for c in conditions if c["type"] == kind), None)
        if current is not None and (current["status"], current["reason"]) == (state, reason):
            return
        since = current["lastTransitionTime"] if current and current["status"] == state else now
        kept = []
        for c in conditions:
            if c["type"] == kind or {c["type"], kind} == {"Running", "Restarting"}:
                continue
            if c["type"] == "Running" and kind in ("Succeeded", "Failed"):
                c["status"] = "False"
            kept.append(c)
        status["conditions"] = kept + [
            {
                "type": kind,
                "status": state,
                "reason": reason,
                "message": message,
                "lastUpdateTime": now,
                "lastTransitionTime": since,
            }
        ]
        if kind in ("Succeeded", "Failed"):
            status["completionTime"] = stamp(time.time_ns())[:19] + "Z"

    return change


def _container_status(state: dict[str, Any], ready: bool) -> dict[str, Any]:
    return {
        "name": "tensorflow",
        "restartCount": 0,
        "ready": ready,
        "image": "",
        "imageID": "",
        "state": state,
    }


def _fresh_pod(old: dict[str, Any]) -> dict[str, Any]:
    """The pod the operator creates in place of a failed one: same name, new uid."""
    pod: dict[str, Any] = json.loads(json.dumps(old))
    keep = ("name", "ownerReferences", "labels")
    pod["metadata"] = {k: v for k, v in pod["metadata"].items() if k in keep}
    pod["status"] = {"phase": "Pending"}
    return pod


def _precondition_failed(preconditions: dict[str, Any], obj: dict[str, Any] | None) -> str:
    """The API server's words for a DeleteOptions precondition the object fails, or ""
    (apiserver/pkg/storage/interfaces.go, Preconditions.Check)."""
    if obj is None:
        return ""
    meta = obj["metadata"]
    for word, key in (("UID", "uid"), ("ResourceVersion", "resourceVersion")):
        wanted = preconditions.get(key)
        if wanted is not None and wanted != meta.get(key):
            return (
                f"Precondition failed: {word} in precondition: {wanted}, "
                f"{word} in object meta: {meta.get(key)}"
            )
    return ""


def _expired(since: int, oldest: int) -> dict[str, Any]:
    """The Status of a watch from a resourceVersion older than the history kept."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {since} ({oldest})",
        "reason": "Expired",
        "code": 410,
    }


def _bookmark(prefix: str, plural: str, version: int) -> dict[str, Any]:
    """A BOOKMARK's object: the collection's kind with only a resourceVersion."""
    return {
        "kind": KINDS.get(plural, plural),
        "apiVersion": prefix.split("/", 1)[-1],
        "metadata": {"resourceVersion": str(version)},
    }


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)  # a client that never says hello frees its thread
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def _authenticated(self) -> bool:
        """The bearer token, as the API server's token authenticator reads it."""
        tokens = self.kube.tokens
        if tokens is None:
            return True
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() in tokens

    # -- answers -------------------------------------------------------------------

    def _send(self, code: int, body: Any, content: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str, details: dict[str, Any]) -> None:
        self._send(
            code,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": reason,
                "details": details,
                "code": code,
            },
        )

    def _forbidden(self, verb: str, group: str, resource: str, name: str, ns: str) -> None:
        full = f"{resource.split('/')[0]}.{group}" if group else resource.split("/")[0]
        subject = f'{full} "{name}"' if name else full
        where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
        if self.kube.legacy_forbidden:
            message = f'{subject} is forbidden: User "{self.kube.user}" cannot {verb} {full}{where}'
        else:
            message = (
                f'{subject} is forbidden: User "{self.kube.user}" cannot {verb} resource '
                f'"{resource}" in API group "{group}"{where}'
            )
        details: dict[str, Any] = {"kind": resource.split("/")[0]}
        if group:
            details["group"] = group
        if name:
            details["name"] = name
        self._status(403, "Forbidden", message, details)

    def _stream_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        """End a stream without its last chunk: the client sees a broken connection."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- routing -------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PUT(self) -> None:
        self._route("PUT")

    def _route(self, method: str) -> None:
        kube = self.kube
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        kube.requests.append((method, url.path))
        kube.counts[request_kind(method, url.path, query)] += 1
        if not self._authenticated():
            kube.refused += 1
            self._send(401, UNAUTHORIZED)
            return
        if kube.garbage:
            self._send(200, b"<html><body>Welcome to nginx!</body></html>", "text/html")
            return
        parts = url.path.strip("/").split("/")
        if parts[0] == "api":
            prefix, group, rest = CORE, "", parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            prefix, group, rest = "/".join(parts[:3]), parts[1], parts[3:]
        else:
            self._send(404, b"404 page not found", "text/plain")
            return
        if (
            (group == "kubeflow.org" and not kube.crd)
            or (group == "serving.kserve.io" and not kube.kserve)
            or (group == "argoproj.io" and not kube.argo)
            or (prefix == "apis/kubeflow.org/v1beta1" and not kube.katib)
        ):
            self._send(404, b"404 page not found\n", "text/plain")
            return
        if group == "authorization.k8s.io" and rest == ["selfsubjectaccessreviews"]:
            if ("create", group, "selfsubjectaccessreviews") in kube.deny:  # may not even ask
                self._forbidden("create", group, "selfsubjectaccessreviews", "", "")
                return
            attrs = (body or {}).get("spec", {}).get("resourceAttributes", {})
            resource = attrs.get("resource", "")
            if attrs.get("subresource"):
                resource += "/" + attrs["subresource"]
            allowed = kube.allows(
                attrs.get("verb", ""), attrs.get("group", ""), resource, attrs.get("namespace", "")
            )
            self._send(201, {**body, "status": {"allowed": allowed}})
            return
        if not rest:  # discovery
            plurals = DISCOVERY.get(prefix, sorted(KINDS))
            self._send(
                200,
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": prefix.split("/", 1)[-1],
                    "resources": [
                        {"name": p, "namespaced": p not in CLUSTER_SCOPED, "kind": KINDS.get(p, p)}
                        for p in plurals
                    ],
                },
            )
            return
        ns = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        plural, name, sub = rest[0], (rest[1] if len(rest) > 1 else ""), "/".join(rest[2:])
        watch = query.get("watch") in ("true", "1")
        verb = {"POST": "create", "DELETE": "delete", "PUT": "update"}.get(
            method, "get" if name else ("watch" if watch else "list")
        )
        resource = f"{plural}/{sub}" if sub else plural
        if not kube.allows(verb, group, resource, ns):
            self._forbidden(verb, group, resource, name, ns)
            return
        full = f"{plural}.{group}" if group else plural
        if method == "POST":
            self._create(prefix, plural, full, ns, body or {})
        elif method == "PUT":
            self._replace(prefix, plural, full, ns, name, body or {})
        elif sub == "log":
            self._log(ns, name, query)
        elif name and method == "GET":
            obj = kube.get(prefix, plural, ns, name)
            if obj is None:
                self._not_found(full, name, group, plural)
            else:
                self._send(200, obj)
        elif name and method == "DELETE":
            with kube.cond:  # DeleteOptions' preconditions, checked as the API server does
                current = kube.get(prefix, plural, ns, name)
                failed = _precondition_failed((body or {}).get("preconditions") or {}, current)
                obj = None if failed else kube.delete(prefix, plural, ns, name)
            if failed:  # the storage layer's error, as the API server passes it on
                key = "/".join(filter(None, ("/registry", group, plural, ns, name)))
                message = (
                    f'Operation cannot be fulfilled on {full} "{name}": StorageError: invalid '
                    f"object, Code: 4, Key: {key}, ResourceVersion: 0, AdditionalErrorMsg: "
                    + failed
                )
                self._status(409, "Conflict", message, {"name": name, "kind": plural})
            elif obj is None:
                self._not_found(full, name, group, plural)
            else:
                self._send(200, obj)
        elif watch:
            self._watch(prefix, plural, ns, query)
        else:
            kube.lists.append(url.path)
            with kube.cond:
                items = [
                    o
                    for (n, _), o in kube.objects.get((prefix, plural), {}).items()
                    if (not ns or n == ns)
                    and _matches(o, query.get("labelSelector"), query.get("fieldSelector"))
                ]
                version = str(kube.version)
            self._send(
                200,
                {
                    "kind": f"{KINDS.get(plural, plural)}List",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": version},
                    "items": items,
                },
            )

    def _not_found(self, full: str, name: str, group: str, plural: str) -> None:
        details = {"name": name, "kind": plural, **({"group": group} if group else {})}
        self._status(404, "NotFound", f'{full} "{name}" not found', details)

    def _create(self, prefix: str, plural: str, full: str, ns: str, body: dict[str, Any]) -> None:
        kube = self.kube
        name = body.get("metadata", {}).get("name", "")
        if ns and ns not in kube.namespaces:
            self._status(
                404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}
            )
            return
        group = "" if prefix == CORE else prefix.split("/")[1]
        refused = kube.owner_refusal(group, plural, body, ns)
        if refused:
            message = f'{full} "{name}" is forbidden: {refused}'
            self._status(403, "Forbidden", message, {"name": name, "kind": plural})
            return
        if not self._admitted(prefix, plural, full, name, body):
            return
        if kube.kueue and (prefix, plural) == TFJOBS:  # Kueue's mutating webhook
            body.setdefault("spec", {}).setdefault("runPolicy", {})["suspend"] = True
        with kube.cond:
            if kube.get(prefix, plural, ns, name) is not None:
                details = {"name": name, "kind": plural}
                self._status(409, "AlreadyExists", f'{full} "{name}" already exists', details)
                return
            obj = kube._put(prefix, plural, ns, body)
        self._send(201, obj)
        kube._react(prefix, plural, ns, obj)

    def _admitted(
        self, prefix: str, plural: str, full: str, name: str, body: dict[str, Any]
    ) -> bool:
        """A fake of KServe's validating webhook for InferenceGraphs: a Splitter node's
        step weights must sum to 100 (the real webhook's wording is not copied)."""
        if (prefix, plural) != GRAPHS:
            return True
        for node, spec in (body.get("spec", {}).get("nodes") or {}).items():
            weights = [int(step.get("weight", 0)) for step in spec.get("steps", [])]
            if spec.get("routerType") == "Splitter" and sum(weights) != 100:
                message = (f'admission webhook denied the request: fake KServe: {full} '
                           f'"{name}" node {node}: the Splitter weights sum to {sum(weights)}, '
                           "not 100")  # fmt: skip
                self._status(400, "BadRequest", message, {"name": name, "kind": plural})
                return False
        return True

    def _replace(
        self, prefix: str, plural: str, full: str, ns: str, name: str, body: dict[str, Any]
    ) -> None:
        """PUT: optimistic concurrency on resourceVersion, as the API server checks it."""
        kube = self.kube
        if not self._admitted(prefix, plural, full, name, body):
            return
        with kube.cond:
            current = kube.get(prefix, plural, ns, name)
            if current is None:
                self._not_found(full, name, prefix.split("/")[1] if "/" in prefix else "", plural)
                return
            given = body.get("metadata", {}).get("resourceVersion")
            if given != current["metadata"]["resourceVersion"]:
                self._status(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {full} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                    {"name": name, "kind": plural},
                )
                return
            body["metadata"]["uid"] = current["metadata"]["uid"]
            # As the API server does: a new spec is a new generation; the status stays
            # until a controller has seen it (status.observedGeneration).
            generation = current["metadata"].get("generation", 1)
            changed = body.get("spec") != current.get("spec")
            body["metadata"]["generation"] = generation + 1 if changed else generation
            body.setdefault("status", current.get("status", {}))
            obj = kube._put(prefix, plural, ns, body, "MODIFIED")
        self._send(200, obj)
        kube._react(prefix, plural, ns, obj)

    def _watch(self, prefix: str, plural: str, ns: str, query: dict[str, str]) -> None:
        kube = self.kube
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 60)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        drops = kube.drops
        self._stream_start()
        collection = f"{prefix}/{plural}"
        sent = since
        marked = time.monotonic()
        with kube.cond:
            compacted = kube.compacted
        if since and since < compacted:  # the watch cache's answer: one ERROR event
            self._event("ERROR", _expired(since, compacted))
            self._chunk(b"")
            return
        while True:
            bookmark = None
            with kube.cond:
                if kube.stopping or kube.drops != drops:
                    break  # what was not sent yet is lost with the connection
                batch = [
                    (v, kind, obj)
                    for v, c, n, kind, obj in kube.history
                    if v > sent and c == collection and (not ns or n == ns)
                ]
                if not batch:
                    if time.monotonic() > deadline:
                        self._chunk(b"")
                        return
                    if not bookmarks or time.monotonic() - marked < kube.bookmark_every:
                        kube.cond.wait(0.1)
                        continue
                    # Every event of this collection up to now has been sent.
                    bookmark = kube.version
            if bookmark is not None:
                marked, sent = time.monotonic(), bookmark
                self._event("BOOKMARK", _bookmark(prefix, plural, bookmark))
                continue
            # Separate watches are separate streams: one can fall behind another.
            time.sleep(kube.lag.get(plural, 0.0))
            for version, kind, obj in batch:
                sent = version
                if _matches(obj, query.get("labelSelector"), query.get("fieldSelector")):
                    self._event(kind, obj)
        self._cut()

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        self._chunk(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

    def _log(self, ns: str, pod_name: str, query: dict[str, str]) -> None:
        kube = self.kube
        pod = kube.get(CORE, "pods", ns, pod_name)
        if pod is None:
            self._not_found("pods", pod_name, "", "pods")
            return
        state = (pod["status"].get("containerStatuses") or [{}])[0].get("state", {})
        if not ("running" in state or "terminated" in state):
            self._status(
                400,
                "BadRequest",
                f'container "tensorflow" in pod "{pod_name}" is '
                "waiting to start: ContainerCreating",
                {},
            )
            return
        since = _since(query["sinceTime"]) if "sinceTime" in query else 0
        with_time = query.get("timestamps") == "true"
        follow = query.get("follow") == "true"
        drops = kube.drops
        self._stream_start()
        sent = 0
        while True:
            with kube.cond:
                lines = kube.logs.get((ns, pod_name), [])[sent:]
                sent += len(lines)
                current = kube.get(CORE, "pods", ns, pod_name)
                done = current is None or current["status"]["phase"] in ("Succeeded", "Failed")
                if not lines and follow and not done:
                    if kube.stopping or kube.drops != drops:
                        break
                    kube.cond.wait(0.2)
                    continue
            data = b"".join(
                ((stamp(t, kube.log_zone) + " ") if with_time else "").encode()
                + text.encode()
                + b"\n"
                for t, text in lines
                if t >= since
            )
            if data:
                self._chunk(data)
            if not follow or (done and not lines):
                self._chunk(b"")
                return
        self._cut()
