"""Whether an environment variable holds a secret, by its name or by its value.

`--env` values and the package index settings are written into the TFJob manifest
(and so into the cluster's etcd, `--dry-run` output and `kubectl get -o yaml`), so a
secret among them is refused before anything is rendered. One check for all of them:

- by name: ``*SECRET*``, ``*PASSWORD*``/``*PASSWD*``/``*PASSPHRASE*``,
  ``*CREDENTIAL*``, ``*ACCESS_KEY*``/``*PRIVATE_KEY*``/``*API_KEY*``, a name ending
  in ``_KEY`` or ``_PAT``, a ``PASS`` part, a part ending in ``TOKEN``. Parts are
  split at ``_``: ``TOKENIZERS_PARALLELISM``, ``KEYBOARD``, ``PASSES`` and
  ``BYPASS_CACHE`` are no secrets. A name ending in ``_FILE``, ``_PATH`` or ``_DIR``
  says where a secret lives (the convention of the official images), not the secret.
- by value, whatever the name: a URL with credentials, ``scheme://user:password@``
  in any scheme, or ``https://token@`` (a user alone is a token for http(s): GitHub,
  package indexes), anywhere in the value. ``ssh://git@host`` is a user name, no secret.

Standard library only: `kfnb.spec` and `kfnb.packages` import it.
"""

from __future__ import annotations

import re

_SECRET_WORDS = re.compile(
    r"SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|ACCESS_?KEY|PRIVATE_?KEY|API_?KEY"
)
_LOCATION_SUFFIXES = ("_FILE", "_PATH", "_DIR")
# scheme://userinfo@ : the userinfo has no "/", "@" or blank.
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*)://([^/@\s]+)@")

# How to pass a secret instead, for messages that refuse one.
SECRET_HOW_TO = (
    "locally set it in the kernel's environment (os.environ: local replicas inherit it); "
    "on Kubernetes reference a Secret with valueFrom.secretKeyRef in %config "
    "Kfnb.pod_template, or let a PodDefault inject it (--label)"
)


def secret_name(name: str) -> bool:
    """Whether variable ``name`` is, by its name, meant to hold a secret."""
    upper = name.upper()
    if upper.endswith(_LOCATION_SUFFIXES):
        return False
    if _SECRET_WORDS.search(upper):
        return True
    parts = [p for p in upper.split("_") if p]
    if not parts:
        return False
    return parts[-1] in ("KEY", "PAT") or "PASS" in parts or any(p.endswith("TOKEN") for p in parts)


def url_credentials(value: str) -> bool:
    """Whether ``value`` holds a URL with credentials (anywhere in it)."""
    for match in _URL_USERINFO.finditer(value):
        scheme, userinfo = match.group(1).lower(), match.group(2)
        if ":" in userinfo or scheme.rsplit("+", 1)[-1] in ("http", "https"):
            return True
    return False


def secret_reason(name: str, value: str) -> str | None:
    """Why ``name=value`` looks like a secret (never quoting the value); None if not."""
    if secret_name(name):
        return "by its name"
    if url_credentials(value):
        return "its value is a URL with credentials"
    return None
