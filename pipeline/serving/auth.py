"""API keys for the served models: who may call ``/recommend``, ``/score`` and the rest, and who may
read ``/metadata`` and ``/metrics``.

A key is a random token (``shopml_`` and 43 URL-safe characters, 256 bits), shown once when it is
made (``shopml keys add``) and stored only as its SHA-256, in a JSON file
(``SHOPML_API_KEYS``, default ``$SHOPML_HOME/serving/api-keys.json``): reading the file does not
give a key. A plain hash and no salt or slow hash, because the tokens are random and long (a
password needs a slow hash because it is guessable; a 256-bit token is not), the way GitHub and
Stripe keep theirs. A request sends it as ``Authorization: Bearer <key>`` or ``x-api-key: <key>``;
its hash is compared with every stored hash in constant time (``hmac.compare_digest``, no early
exit), so the time taken says nothing about which key, or how much of one, matched.

Two roles: ``client`` calls the model endpoints; ``admin`` also reads ``/metadata`` (the commit, run,
dataset and log location) and ``/metrics``, and alone may report chargebacks (the fraud service's
``/chargebacks``: a checkout's key that could would let its holder mark any customer's account or
card as charged back), sign-ups (``/signups``: one could make a new account look years old)
and sessions (``/sessions``: one could make a stranger's device look familiar), and set
``x-shopml-event-time`` (a replay's answer logged at a past hour).
Health probes (``/livez``, ``/readyz``, ``/healthz``) need no key.

Nobody gets in without a key: a service with no keys file, or an empty one, answers 401 to every
request but the probes. ``SHOPML_AUTH=off`` turns the check off for a server on loopback that only
this machine reaches (the test and benchmark helper ``served()`` and the replay use it); never for
a server others reach.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipeline.core.errors import BadInput, NotFound

ROLES = ("client", "admin")
PREFIX = "shopml_"
PROBES = ("/livez", "/readyz", "/healthz")
ADMIN_PATHS = ("/metadata", "/metrics", "/chargebacks", "/signups", "/sessions")


class KeyFileError(BadInput):
    """The keys file cannot be read as keys."""


def keys_path(home: Path | None = None) -> Path:
    """Where the keys file is: ``SHOPML_API_KEYS``, else ``<home>/serving/api-keys.json``."""
    if os.environ.get("SHOPML_API_KEYS"):
        return Path(os.environ["SHOPML_API_KEYS"])
    if home is None:
        from pipeline.core.settings import get_state_paths

        home = get_state_paths().home
    return home / "serving" / "api-keys.json"


def auth_off() -> bool:
    return os.environ.get("SHOPML_AUTH", "").lower() == "off"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class StoredKey:
    name: str
    role: str
    sha256: str
    created: str


class KeyStore:
    """The hashed keys of one file; ``role_of(key)`` is the role a presented key carries, or None."""

    def __init__(self, keys: list[StoredKey], path: Path | None = None) -> None:
        self.keys, self.path = keys, path

    @classmethod
    def load(cls, path: Path) -> KeyStore:
        """The keys in ``path``; none when the file does not exist. A file that is not a keys file
        is an error naming it (a service then refuses to start rather than let anyone in)."""
        if not path.exists():
            return cls([], path)
        try:
            raw = json.loads(path.read_text())
            entries = raw["keys"]
            keys = [StoredKey(e["name"], e["role"], e["sha256"], e.get("created", "")) for e in entries]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f'{path}: not an API keys file ({exc!r}); expected {{"keys": [...]}}') from exc
        for n, key in enumerate(keys):
            if key.role not in ROLES or len(key.sha256) != 64:
                raise KeyFileError(
                    f"{path}: keys[{n}] ({key.name!r}): role {key.role!r} (one of {ROLES}) or a sha256 "
                    f"of {len(key.sha256)} characters (64 expected)"
                )
        return cls(keys, path)

    def role_of(self, presented: str | None) -> str | None:
        """The role of the stored key ``presented`` hashes to; None for no key or no match. Every
        stored key is compared, each in constant time."""
        if not presented:
            return None
        wanted = digest(presented).encode()
        role = None
        for key in self.keys:
            if hmac.compare_digest(wanted, key.sha256.encode()) and role != "admin":
                role = key.role
        return role

    def add(self, name: str, role: str = "client") -> str:
        """A new key for ``name``: its hash written to the file (mode 0600), the key returned (the
        only time it is seen)."""
        if role not in ROLES:
            raise BadInput(f"role {role!r}: one of {', '.join(ROLES)}")
        if any(k.name == name for k in self.keys):
            raise BadInput(f"a key named {name!r} exists in {self.path}; revoke it first or pick another name")
        key = PREFIX + secrets.token_urlsafe(32)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.keys = [*self.keys, StoredKey(name, role, digest(key), created)]
        self._save()
        return key

    def revoke(self, name: str) -> None:
        if not any(k.name == name for k in self.keys):
            raise NotFound(f"no key named {name!r} in {self.path}; names: {[k.name for k in self.keys]}")
        self.keys = [k for k in self.keys if k.name != name]
        self._save()

    def _save(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"keys": [k.__dict__ for k in self.keys]}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(body, fh, indent=2)
        os.replace(tmp, self.path)


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key an ASGI request carries: ``Authorization: Bearer <key>`` or ``x-api-key``."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return None
