"""A thin layer over the official ``kubernetes`` client: config, requests, errors.

Every request goes through `KubeApi.request`, which returns plain JSON dicts (the
shape manifests are written in) and turns API server failures into one-line
`BackendError`s that name the fix. The client is imported here, on first use, so
``import kfnb`` never loads it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfnb._util import first_line
from kfnb.backends import BackendError

log = logging.getLogger(__name__)

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Where the pod's service-account files are read from instead (tests give their own).
SA_DIR_ENV = "KFNB_SERVICE_ACCOUNT_DIR"
RBAC_FIX = "ask your cluster admin to run `kubectl apply -f deploy/rbac.yaml` for this namespace"
OPERATOR_INSTALL = (
    'kubectl apply --server-side -k "github.com/kubeflow/trainer.git/manifests/overlays/'
    'standalone?ref=v1.9.3"'
)
TFJOB_GROUP, TFJOB_VERSION, TFJOB_PLURAL = "kubeflow.org", "v1", "tfjobs"
# Both wordings: "cannot create resource "tfjobs" in API group "kubeflow.org"" (1.11+)
# and seed 000's older "cannot create tfjobs.kubeflow.org".
_FORBIDDEN = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>\S+) '
    r'(?:resource "(?P<resource>[^"]+)" in API group "(?P<group>[^"]*)"|(?P<old>\S+))'
    r'(?: in the namespace "(?P<namespace>[^"]+)")?'
)


class ApiError(BackendError):
    """A request the API server refused; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def kubeconfig_paths() -> list[Path]:
    """Kubeconfig files as kubectl finds them: $KUBECONFIG's list, else ~/.kube/config."""
    listed = os.environ.get("KUBECONFIG")
    if listed is not None:
        return [Path(p).expanduser() for p in listed.split(os.pathsep) if p]
    return [Path("~/.kube/config").expanduser()]


def sa_dir() -> Path:
    """The service-account directory a pod gets: token, ca.crt and namespace files."""
    return Path(os.environ.get(SA_DIR_ENV) or SA_DIR)


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (sa_dir() / "token").exists()


class ServiceAccountToken:
    """The pod's bearer token, read again whenever the kubelet rewrites the file.

    Bound tokens expire (an hour by default) and the kubelet replaces the file before
    they do; the client's own loader re-reads it only once a minute, which a token the
    server has just stopped accepting cannot wait for. A stat per request is cheap.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None

    def refresh(self, configuration: Any) -> None:
        try:
            info = self.path.stat()
            key = (info.st_ino, info.st_mtime_ns, info.st_size)
            token = self.path.read_text().strip() if key != self._seen else None
        except OSError:
            return  # mid-swap: the last token read is still the best there is
        if token:
            self._seen = key
            # "authorization" is the key 35.x reads and 36.x still honours (as an alias).
            configuration.api_key["authorization"] = f"Bearer {token}"


def incluster_configuration(configuration: Any) -> None:
    """Fill ``configuration`` from KUBERNETES_SERVICE_HOST/PORT and the service account."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "")
    directory = sa_dir()
    ca = directory / "ca.crt"
    if not port:
        raise BackendError(
            "KUBERNETES_SERVICE_HOST is set but KUBERNETES_SERVICE_PORT is not: this pod's "
            "environment is incomplete; set both, or unset KUBERNETES_SERVICE_HOST to use "
            "a kubeconfig"
        )
    if not ca.is_file():
        raise BackendError(
            f"in a pod, but {ca} is missing: the service account's CA is needed to trust the "
            "API server; mount the service account token (automountServiceAccountToken)"
        )
    configuration.host = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    configuration.ssl_ca_cert = str(ca)
    token = ServiceAccountToken(directory / "token")
    token.refresh(configuration)
    configuration.refresh_api_key_hook = token.refresh


def cluster_configured() -> bool:
    """Whether any cluster is configured, answered without importing the client."""
    return in_cluster() or any(p.is_file() for p in kubeconfig_paths())


def forbidden_message(message: str) -> str:
    """The API server's 403 text as one line: who lacks which verb on what, and the fix."""
    found = _FORBIDDEN.search(message)
    if not found:
        return f"the Kubernetes API server refused: {message}: {RBAC_FIX}"
    resource = found["old"] or (
        f"{found['resource']}.{found['group']}" if found["group"] else found["resource"]
    )
    where = f" in namespace {found['namespace']}" if found["namespace"] else ""
    return (
        f"{found['user']} may not {found['verb']} {resource}{where}, which kfnb needs: {RBAC_FIX}"
    )


def _parse_status(status: int, body: bytes | str) -> tuple[str, str]:
    """(message, reason) from a Kubernetes Status body, or a note that it was not one."""
    if isinstance(body, str):
        body = body.encode()
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("kind") == "Status":
        return str(data.get("message", "")), str(data.get("reason", ""))
    text = body.decode(errors="replace").strip().splitlines()
    return (text[0][:200] if text else f"HTTP {status}"), ""


def error_for(status: int, body: bytes | str, what: str, in_pod: bool = False) -> ApiError:
    """The one-line error for an API server's refusal of ``what`` (``in_pod``: kfnb
    authenticates with the pod's service-account token, not a kubeconfig)."""
    message, reason = _parse_status(status, body)
    if status == 403:
        return ApiError(forbidden_message(message), status, reason)
    if status == 404 and reason == "" and "page not found" in message:
        # No such API group at all: the TFJob CRD is not installed.
        return ApiError(
            f"this cluster has no TFJob resource ({what}): install the Kubeflow Training "
            f"Operator 1.9 with {OPERATOR_INSTALL}",
            status,
            "NoCRD",
        )
    if status == 404 and message.startswith('namespaces "'):
        name = message.split('"')[1]
        return ApiError(
            f"namespace {name!r} does not exist: set %config Kfnb.namespace (or --namespace) "
            "to your Kubeflow profile's namespace",
            status,
            reason,
        )
    if status == 409 and reason == "AlreadyExists":
        return ApiError(f"{message}: pick another --name, or delete it first", status, reason)
    if status == 401 and in_pod:
        return ApiError(
            f"the Kubernetes API server refused this pod's service-account credentials "
            f"({message}, token {sa_dir() / 'token'}): the token has expired or its service "
            "account is gone; restart the notebook server so that its pod gets a fresh token",
            status,
            reason,
        )
    if status == 401:
        return ApiError(
            f"the Kubernetes API server does not accept kfnb's credentials ({message}): "
            "refresh your kubeconfig (log in again)",
            status,
            reason,
        )
    return ApiError(
        f"{what}: the Kubernetes API server answered {status}: {message}", status, reason
    )


@dataclass(frozen=True)
class ClusterInfo:
    server: str
    namespace: str
    source: str  # "in-cluster" or the kubeconfig path


def _default_namespace(config_file: Path | None) -> str:
    """The pod's service-account namespace in-cluster, else the kubeconfig context's,
    else default."""
    if config_file is None:  # in-cluster
        try:
            return (sa_dir() / "namespace").read_text().strip() or "default"
        except OSError:
            return "default"
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=str(config_file))
    except Exception:
        return "default"
    namespace = (active or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else "default"


class KubeApi:
    """One connection to one cluster, configured in-cluster first, then from kubeconfig."""

    def __init__(self, namespace: str | None = None, timeout: float = 10.0) -> None:
        try:
            from kubernetes import client, config
        except ImportError as err:
            raise BackendError(
                "the Kubernetes backend needs the kubernetes client: pip install 'kfnb[kubernetes]'"
            ) from err
        configuration = client.Configuration()
        config_file: Path | None = None
        if in_cluster():
            incluster_configuration(configuration)
            source = "in-cluster"
        else:
            config_file = next((p for p in kubeconfig_paths() if p.is_file()), None)
            if config_file is None:
                raise BackendError(
                    "no Kubernetes cluster is configured (no kubeconfig at "
                    f"{os.pathsep.join(map(str, kubeconfig_paths()))} and not in a pod): set "
                    "KUBECONFIG, or use --backend local, or --dry-run to print the TFJob manifest"
                )
            try:
                config.load_kube_config(
                    config_file=str(config_file), client_configuration=configuration
                )
            except Exception as err:
                raise BackendError(
                    f"cannot use the kubeconfig {config_file}: {first_line(err)}: fix it, or "
                    "use --backend local"
                ) from err
            source = str(config_file)
        configuration.retries = 0  # kfnb retries streams itself; a dead server fails at once
        self.client = client.ApiClient(configuration)
        self.timeout = timeout
        self.info = ClusterInfo(
            configuration.host, namespace or _default_namespace(config_file), source
        )

    @property
    def namespace(self) -> str:
        return self.info.namespace

    def _send(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None,
        body: Any,
        timeout: float | tuple[float, float] | None,
    ) -> Any:
        # The method and path only: the bearer token travels in headers, never logged.
        log.debug("Kubernetes API %s %s", method, path)
        try:
            return self.client.call_api(
                path,
                method,
                query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=timeout,
            )
        except Exception as err:
            status = getattr(err, "status", None)
            if isinstance(status, int) and status:
                body = getattr(err, "body", b"") or b""
                in_pod = self.info.source == "in-cluster"
                raise error_for(status, body, f"{method} {path}", in_pod) from err
            raise ApiError(
                f"cannot reach the Kubernetes API server at {self.info.server} "
                f"({type(err).__name__}): check the cluster is up and the kubeconfig's server "
                "address, or use --backend local",
            ) from err

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One request; the answer as a dict, or an `ApiError` in one line."""
        response = self._send(method, path, query, body, timeout or self.timeout)
        data = response.data
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or "kind" not in parsed and "apiVersion" not in parsed:
            raise ApiError(
                f"the Kubernetes API server at {self.info.server} answered {method} {path} with "
                f"something that is not Kubernetes JSON ({bytes(data[:40])!r}): check the "
                "kubeconfig's server address (a proxy or a wrong port?)",
                response.status,
                "Garbage",
            )
        return parsed

    def text(self, path: str, query: dict[str, Any]) -> str:
        """A plain-text answer, such as a pod's log."""
        response = self._send("GET", path, query, None, self.timeout)
        return bytes(response.data).decode(errors="replace")

    def stream(
        self, path: str, query: dict[str, Any], read_timeout: float | None = None
    ) -> Iterator[bytes]:
        """Lines of a streaming answer (a watch, a followed log) until the server ends it.

        A dropped connection raises `ApiError` with status 0; callers resume.
        """
        response = self._send("GET", path, query, None, (self.timeout, read_timeout or 300.0))
        try:
            pending = b""
            for chunk in response.stream(4096, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from lines
            if pending:
                yield pending
        except Exception as err:
            raise ApiError(f"the stream {path} was cut ({type(err).__name__})") from err
        finally:
            response.release_conn()
