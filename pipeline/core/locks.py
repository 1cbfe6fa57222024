"""One lock per promotion, held in the backend every worker shares.

A promotion is a compare-and-set on the ``champion`` alias: read it, check it is the champion the
candidate was compared with, move it. Two workers doing that at once must be serialised by
something both see:

* ``SHOPML_LOCK_URL=postgresql://...``: a PostgreSQL advisory lock (``pg_advisory_lock``), for
  example on the database the MLflow server stores its tables in. The lock lives as long as the
  connection, so a worker killed while holding it releases it (its connection closes);
* ``SHOPML_LOCK_URL=redis://...``: a Redis lock with an expiry (a killed holder's lock lapses);
* unset, and ``MLFLOW_TRACKING_URI`` itself a ``postgresql`` database: an advisory lock there;
* otherwise a file lock under ``$SHOPML_HOME/registry/``, right for one machine (SQLite tracking).

Hand-written around the drivers' own primitives (psycopg2, redis-py's ``Lock``, filelock): no
well-kept library picks among the three by URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator

from pipeline.core.errors import BadInput
from pipeline.core.settings import StatePaths

LOCK_TIMEOUT_S = 120
POSTGRES_SCHEMES = ("postgresql://", "postgresql+psycopg2://", "postgres://")


class LockTimeout(RuntimeError):
    """The lock was held by another worker for longer than the timeout."""


def lock_url() -> str | None:
    """Where promotion locks live: ``SHOPML_LOCK_URL``, else a PostgreSQL tracking store, else None (a file)."""
    url = os.environ.get("SHOPML_LOCK_URL")
    if url:
        return url
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    return tracking if tracking.startswith(POSTGRES_SCHEMES) else None


def _key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` (Python's hash() changes per process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


@contextlib.contextmanager
def _postgres_lock(url: str, name: str, timeout: float) -> Iterator[None]:
    import psycopg2

    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = %s", (f"{int(timeout * 1000)}ms",))
            try:
                cur.execute("SELECT pg_advisory_lock(%s)", (_key(name),))
            except psycopg2.errors.LockNotAvailable:
                raise LockTimeout(
                    f"lock {name!r} in PostgreSQL held by another worker for over {timeout:.0f}s"
                ) from None
        yield
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_key(name),))
    finally:
        conn.close()


@contextlib.contextmanager
def _redis_lock(url: str, name: str, timeout: float) -> Iterator[None]:
    import redis

    client = redis.Redis.from_url(url)
    # Expires after 10 minutes, so a killed holder cannot block promotions for ever.
    lock = client.lock(f"shopml:lock:{name}", timeout=600, blocking_timeout=timeout)
    if not lock.acquire():
        raise LockTimeout(f"lock {name!r} in Redis held by another worker for over {timeout:.0f}s")
    try:
        yield
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()


@contextlib.contextmanager
def _file_lock(paths: StatePaths, name: str, timeout: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    folder = paths.home / "registry"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(folder / f"{name}.lock"), timeout=timeout):
            yield
    except Timeout:
        raise LockTimeout(f"lock {folder / name}.lock held for over {timeout:.0f}s") from None


def shared_lock(paths: StatePaths, name: str, timeout: float = LOCK_TIMEOUT_S):
    """A context manager holding the lock ``name`` where every worker sees it (see the module)."""
    url = lock_url()
    if url is None:
        return _file_lock(paths, name, timeout)
    if url.startswith(POSTGRES_SCHEMES):
        return _postgres_lock(url, name, timeout)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return _redis_lock(url, name, timeout)
    raise BadInput(f"SHOPML_LOCK_URL={url!r}: expected a postgresql:// or redis:// URL")
