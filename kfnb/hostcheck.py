"""Which ``Host`` headers kfnb's local HTTP servers answer: a guard against DNS rebinding.

A web page on ``attacker.example`` can make its name resolve to 127.0.0.1 and then
read whatever a server on this machine answers, as if it were its own origin. The
browser still sends ``Host: attacker.example``, so a server that answers only the
names it is reached by closes that door, as Jupyter Server does for its own API
(``ServerApp.local_hostnames``, ``allow_remote_access``).

Answered:

- no ``Host`` at all (not a browser: every browser sends one);
- an IP address literal (rebinding needs a name the attacker owns; kubelet probes
  and Prometheus send the pod's IP);
- ``localhost`` and names under it;
- the names a server is given (``--allowed-hosts``, ``KFNB_ALLOWED_HOSTS``,
  ``%config Kfnb.allowed_hosts``): exact, ``.suffix`` or ``*.suffix`` for a
  domain and the names under it, ``*`` for any name;
- for a server bound beyond loopback (``--host 0.0.0.0`` in a pod), the names a
  cluster reaches it by: one-label names (a Service's short name, the pod's
  hostname), ``*.svc`` and ``*.svc.<cluster domain>`` (the domain from
  ``/etc/resolv.conf``'s search list; ``cluster.local`` without one), and this
  machine's hostname. None of these can be registered on the public internet.

Standard library only: the model server and TensorBoard's wrapper both import it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENV", "HostPolicy", "configured_names"]

ENV = "KFNB_ALLOWED_HOSTS"  # comma-separated names, read by the servers at start

_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")


def configured_names(*given: Iterable[str] | str | None) -> tuple[str, ...]:
    """Names from flags, settings and ``KFNB_ALLOWED_HOSTS`` (each comma-separated or a
    list), lower-cased, without blanks or duplicates, in order."""
    names: list[str] = []
    for item in (*given, os.environ.get(ENV, "")):
        if not item:
            continue
        parts = item.split(",") if isinstance(item, str) else item
        for part in parts:
            name = part.strip().lower().rstrip(".")
            if name and name not in names:
                names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class HostPolicy:
    """The ``Host`` names one server answers (see the module's docstring)."""

    names: tuple[str, ...] = ()
    cluster_domains: tuple[str, ...] = ()  # empty: bound to loopback, no cluster names
    hostname: str = ""

    @classmethod
    def for_server(cls, bound_host: str, names: Iterable[str] = ()) -> HostPolicy:
        """The policy of a server listening on ``bound_host`` that was given ``names``."""
        configured = configured_names(list(names))
        if _is_loopback(bound_host):
            return cls(configured)
        return cls(configured, _cluster_domains(), socket.gethostname().lower())

    @property
    def any_name(self) -> bool:
        return "*" in self.names

    def allows(self, header: str | None) -> bool:
        """Whether a request with this ``Host`` header is answered."""
        if header is None or self.any_name:
            return True
        name = _hostname(header)
        if name is None:
            return False
        if _is_ip(name) or name == "localhost" or name.endswith(".localhost"):
            return True
        if any(_matches(name, pattern) for pattern in self.names):
            return True
        if not self.cluster_domains:
            return False
        if "." not in name or name == self.hostname or name.endswith(".svc"):
            return True
        return any(name.endswith(f".svc.{domain}") for domain in self.cluster_domains)

    def refusal(self, header: str) -> str:
        """The one-line error for a refused ``Host``, naming the fix."""
        name = _hostname(header) or header[:100]
        return (
            f"Host {name!r} is not a name this server answers (a guard against DNS "
            f"rebinding): reach it as 127.0.0.1 or localhost, or start it with "
            f"--allowed-hosts {name} (%serve --allowed-host, Kfnb.allowed_hosts or "
            f"{ENV})"
        )


def _hostname(header: str) -> str | None:
    """The name or address of a ``Host`` header, lower-cased, less its port; None when
    it is not a host name at all."""
    text = header.strip().lower()
    if text.startswith("["):  # an IPv6 literal, maybe with a port
        end = text.find("]")
        rest = text[end + 1 :] if end > 0 else "x"
        if end < 0 or (rest and not re.fullmatch(r":[0-9]*", rest)):
            return None
        return text[1:end] if _is_ip(text[1:end]) else None
    name, colon, port = text.rpartition(":")
    if not colon:
        name = text
    elif not port.isdigit() and port:
        return None
    name = name.rstrip(".")
    return name if _NAME.fullmatch(name) else None


def _matches(name: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        pattern = pattern[1:]
    if pattern.startswith("."):
        return name == pattern[1:] or name.endswith(pattern)
    return name == pattern


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, "" or 0.0.0.0: reachable from elsewhere


def _cluster_domains(resolv: Path = Path("/etc/resolv.conf")) -> tuple[str, ...]:
    """The cluster DNS domains of a pod (``cluster.local`` from ``svc.cluster.local`` in
    the search list); ``cluster.local`` where the list names none."""
    domains: list[str] = []
    try:
        lines = resolv.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        words = line.split()
        if words and words[0] == "search":
            for word in words[1:]:
                word = word.lower().rstrip(".")
                if word.startswith("svc.") and word[4:] not in domains:
                    domains.append(word[4:])
    return tuple(domains) or ("cluster.local",)
