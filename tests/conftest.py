"""Shared fixtures: an isolated state folder per test and the real data samples beside the repo."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks.data import DATA_ENV, data_dir
from pipeline.core.settings import StatePaths, apply_process_defaults, get_state_paths

REPO = Path(__file__).resolve().parent.parent
# The project's process defaults (MLflow's telemetry off: it is on when no test is running as mlflow
# is first imported, as during collection, and its thread raced a test reading os.environ, CI of
# 724532d) for the whole run and every process the tests start; set here, before anything imports
# mlflow.
apply_process_defaults()
# CI sets this: a missing sample fails the run there instead of skipping its tests.
REQUIRE_DATA = "SHOPML_REQUIRE_DATA"


def demo_shop(days: int) -> list[str]:
    """``python -m pipeline`` arguments that generate ``days`` days of `make demo`'s shop from
    2026-11-01: dense enough in users and items per event for the sequential model to learn from
    (the retrain tests under Airflow, PostgreSQL and Docker run on it)."""
    return [
        "generate",
        "--days",
        str(days),
        "--events-per-day",
        "5000",
        "--start-date",
        "2026-11-01",
        "--initial-users",
        "2000",
        "--initial-items",
        "1200",
        "--seed",
        "11",
    ]


def need_sample(path: Path) -> Path:
    """``path`` (a public data sample), or skip the test with a message naming the setting."""
    if path.exists():
        return path
    message = f"the public data sample {path} is missing: set {DATA_ENV} to their folder, or run `make data`"
    if os.environ.get(REQUIRE_DATA) == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session", autouse=True)
def bento_store(tmp_path_factory) -> Path:
    """One Bento store for the session, set before BentoML is first imported (it reads BENTOML_HOME
    once per process). Tags carry run ids, so tests never collide in it."""
    home = tmp_path_factory.mktemp("bentoml")
    os.environ["BENTOML_HOME"] = str(home)
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    # One worker per test server: the worker count changes no answer, and on 2 cores every extra
    # worker's start-up (torch, MLflow, the model) is paid by each of the suite's servers.
    os.environ.setdefault("SHOPML_API_WORKERS", "1")
    return home


@pytest.fixture
def state(tmp_path, monkeypatch) -> StatePaths:
    """A fresh SHOPML_HOME for one test."""
    monkeypatch.setenv("SHOPML_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("SHOPML_DVC_REMOTE", raising=False)
    # Ingestion reads only allowed sources: here the test's own folder, the public samples and the
    # in-memory filesystem (tests/test_ingest.py checks the default, the state folder's landing).
    monkeypatch.setenv("SHOPML_INGEST_SOURCES", f"{tmp_path},{data_dir()},memory://")
    return get_state_paths()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public samples (``$SHOPML_DATA_DIR``, default ../shared/data; read, never copied)."""
    return need_sample(data_dir())


@contextmanager
def published_shop(home: Path, params, publish: int | None = None) -> Iterator[StatePaths]:
    """A state folder at ``home`` holding ``params.days`` generated days, the first ``publish`` of
    them (default: all) ingested, validated and published, with MLflow on its default store there;
    for module-scoped fixtures (no monkeypatch)."""
    from pipeline.cli import main as cli
    from pipeline.data.generate import generate_shop_data

    mp = pytest.MonkeyPatch()
    mp.setenv("SHOPML_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        paths = get_state_paths()
        generate_shop_data(params, paths.landing)
        assert cli(["run", "--start", params.start_date, "--days", str(publish or params.days)]) == 0
        yield paths
    finally:
        mp.undo()


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))
    return path


def wait_http(url: str, proc, log: Callable[[], str], seconds: float = 180.0) -> None:
    """Wait until ``url`` answers with a 2xx; fail with the end of ``log()`` when the server process
    ``proc`` exits first, or when ``seconds`` pass."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:3]} exited with {proc.returncode}:\n{log()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=3):
                return
        except OSError:  # not listening yet, or not ready (an HTTP error status is an OSError too)
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {seconds:.0f} s:\n{log()[-3000:]}")
