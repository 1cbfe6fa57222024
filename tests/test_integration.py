"""The production profile, for real, without Docker: PostgreSQL, Redis, an MLflow server, Celery.

``make test-integration`` runs this module. It needs a PostgreSQL server and a Redis server:

- ``SHOPML_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``): a role that
  may create databases; the suite creates two of its own (Airflow's and MLflow's) and drops them;
- ``SHOPML_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``): the Celery broker; the suite uses
  a queue of its own and deletes the keys it made.

It starts, as processes on loopback, an MLflow tracking server (PostgreSQL backend store, proxied
artifacts), Airflow's api-server (the Execution API the worker's tasks talk to) and a Celery worker;
the environment is the production profile's (docs/how-to/production.md). Then ``ingest_events`` and
``retrain_next_item`` run end to end through the CeleryExecutor (``airflow dags test
--use-executor``), and the champion is read back from MLflow's tables in PostgreSQL. Everything it
started is stopped, and its databases dropped, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from conftest import REPO, demo_shop, wait_http

pytestmark = pytest.mark.integration

POSTGRES_URL = os.environ.get("SHOPML_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("SHOPML_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
BIN = Path(sys.executable).parent


class ServiceMissing(RuntimeError):
    """A service the suite needs does not answer at its URL."""


def check_services(postgres_url: str = POSTGRES_URL, redis_url: str = REDIS_URL) -> None:
    """Raise ServiceMissing naming the service, its URL and the variable that sets it."""
    import psycopg2
    import redis

    try:
        psycopg2.connect(postgres_url, connect_timeout=5).close()
    except psycopg2.Error as exc:
        raise ServiceMissing(
            f"PostgreSQL is not reachable at {_redact(postgres_url)} "
            f"(set SHOPML_TEST_POSTGRES_URL): {str(exc).strip().splitlines()[0]}"
        ) from exc
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        raise ServiceMissing(
            f"Redis is not reachable at {_redact(redis_url)} (set SHOPML_TEST_REDIS_URL): {exc}"
        ) from exc


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)


def _with_db(url: str, database: str, scheme: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((scheme, parts.netloc, f"/{database}", parts.query, ""))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The processes and databases of one integration run."""

    def __init__(self, root: Path):
        self.root = root
        self.tag = f"shopml_it_{secrets.token_hex(4)}"
        self.databases = {"airflow": f"{self.tag}_airflow", "mlflow": f"{self.tag}_mlflow"}
        self.queue = self.tag
        self.procs: list[subprocess.Popen] = []
        self.mlflow_port, self.api_port = _free_port(), _free_port()
        self.env = self._env()

    def _env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPML_", "AIRFLOW", "MLFLOW_"))}
        airflow_db = _with_db(POSTGRES_URL, self.databases["airflow"], "postgresql+psycopg2")
        return {
            **clean,
            "PATH": f"{BIN}{os.pathsep}{clean.get('PATH', '')}",
            "SHOPML_HOME": str(self.root / "state"),
            # The production profile: every switch is an environment variable.
            "AIRFLOW_HOME": str(self.root / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
            "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + _with_db(POSTGRES_URL, self.databases["airflow"], "postgresql"),
            "SHOPML_QUEUE": self.queue,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.mlflow_port}",
            "SHOPML_TRAIN_QUEUE": self.queue,
            "OMP_NUM_THREADS": "1",
        }

    # -- databases -------------------------------------------------------------------------------
    def _each_database(self, statement: str) -> None:
        """Run ``statement`` (with ``{name}``) for each of the suite's databases, outside a transaction."""
        import psycopg2

        conn = psycopg2.connect(POSTGRES_URL)
        conn.autocommit = True  # CREATE and DROP DATABASE refuse to run in a transaction
        try:
            with conn.cursor() as cur:
                for name in self.databases.values():
                    cur.execute(statement.format(name=name))
        finally:
            conn.close()

    def create_databases(self) -> None:
        self._each_database('CREATE DATABASE "{name}"')

    def drop_databases(self) -> None:
        self._each_database('DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def query(self, database: str, sql: str) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(_with_db(POSTGRES_URL, self.databases[database], "postgresql"))
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()

    # -- processes -------------------------------------------------------------------------------
    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        proc = subprocess.Popen(
            list(args), env=self.env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        proc.log = log
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def clean_redis(self, before: set[bytes]) -> None:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        made = [k for k in client.keys("*") if k not in before or self.queue.encode() in k]
        if made:
            client.delete(*made)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    import redis

    missing = None
    try:
        check_services()
    except ServiceMissing as exc:
        missing = str(exc)
    if missing:
        pytest.fail(missing, pytrace=False)
    root = tmp_path_factory.mktemp("integration")
    s = Stack(root)
    redis_before = set(redis.Redis.from_url(REDIS_URL).keys("*"))
    s.create_databases()
    try:
        mlflow = s.start(
            "mlflow",
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            _with_db(POSTGRES_URL, s.databases["mlflow"], "postgresql+psycopg2"),
            "--artifacts-destination",
            (root / "mlflow-artifacts").as_uri(),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(s.mlflow_port),
            "--workers",
            "1",
        )
        migrated = s.run(str(BIN / "airflow"), "db", "migrate", timeout=600)
        assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
        pool = s.run(str(BIN / "airflow"), "pools", "set", "shopml_training", "1", "one training per GPU")
        assert pool.returncode == 0, pool.stderr[-2000:]
        api = s.start(
            "api-server",
            str(BIN / "airflow"),
            "api-server",
            "--host",
            "127.0.0.1",
            "--port",
            str(s.api_port),
            "--workers",
            "1",
        )
        worker = s.start(
            "celery-worker",
            str(BIN / "airflow"),
            "celery",
            "worker",
            "--queues",
            s.queue,
            "--concurrency",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--celery-hostname",
            f"{s.tag}@%h",
        )
        wait_http(f"http://127.0.0.1:{s.mlflow_port}/health", mlflow, mlflow.log.read_text)
        wait_http(f"http://127.0.0.1:{s.api_port}/api/v2/monitor/health", api, api.log.read_text)
        s.worker = worker
        yield s
    finally:
        s.stop()
        s.drop_databases()
        s.clean_redis(redis_before)


def test_a_missing_service_is_named_with_its_url():
    dead = _free_port()
    with pytest.raises(
        ServiceMissing, match=rf"PostgreSQL is not reachable at postgresql://u:\*\*\*@127.0.0.1:{dead}/x"
    ):
        check_services(f"postgresql://u:secret@127.0.0.1:{dead}/x", REDIS_URL)
    with pytest.raises(ServiceMissing, match=rf"Redis is not reachable at redis://127.0.0.1:{dead}/0 \(set SHOPML_"):
        check_services(POSTGRES_URL, f"redis://127.0.0.1:{dead}/0")


def test_ingest_and_retrain_through_celery_on_postgresql_with_an_mlflow_server(stack, tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train_recommender"].update(epochs=10, patience=3)  # params.yaml's model, fewer epochs
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stack.env["SHOPML_PARAMS"] = str(tmp_path / "params.yaml")
    py = sys.executable
    # Seven days published from the command line (faster), the eighth through the DAG.
    for args in (
        demo_shop(10),
        ["run", "--start", "2026-11-01", "--days", "9"],
    ):
        done = stack.run(py, "-m", "pipeline", *args)
        assert done.returncode == 0, done.stderr[-3000:]

    ingest = stack.run(str(BIN / "airflow"), "dags", "test", "--use-executor", "ingest_events", "2026-11-11")
    assert ingest.returncode == 0, (ingest.stdout + ingest.stderr)[-5000:]
    retrain = stack.run(str(BIN / "airflow"), "dags", "test", "--use-executor", "retrain_next_item", timeout=1500)
    assert retrain.returncode == 0, (retrain.stdout + retrain.stderr)[-5000:]

    # Every task ran on the Celery worker, recorded in Airflow's metadata on PostgreSQL.
    rows = stack.query(
        "airflow",
        "select dag_id, task_id, state, queue, hostname from task_instance "
        "where dag_id in ('ingest_events', 'retrain_next_item')",
    )
    assert {(r[0], r[1]) for r in rows} == {
        ("ingest_events", t) for t in ("ingest_events", "validate_batch", "version_dataset")
    } | {
        ("retrain_next_item", f"{t}_next_item")
        for t in ("features", "train", "evaluate", "gate", "register", "package", "promote")
    }
    assert {r[2] for r in rows} == {"success"}, rows
    assert {r[3] for r in rows} == {stack.queue}
    worker_log = stack.worker.log.read_text()
    assert "retrain_next_item" in worker_log and "train_next_item" in worker_log

    # The registry lives on PostgreSQL: the champion alias points at the version the DAG promoted.
    # (Version 1 when the learned candidate cleared its floors; else it is registered as rejected and the
    # strongest floor, version 2, serves.)
    aliases = stack.query("mlflow", "select name, alias, version from registered_model_aliases")
    champion = next((v for n, a, v in aliases if (n, a) == ("next_item", "champion")), None)
    assert champion in (1, 2), aliases
    tags = dict(
        stack.query(
            "mlflow", f"select key, value from model_version_tags where name = 'next_item' and version = {champion}"
        )
    )
    assert tags["smoke_test"] == "passed" and tags["bento_tag"].startswith(f"shopml-next-item:v{champion}-")
    assert (champion == 2) == tags["gate.reasons"].startswith("PASS floor serves: ")
    run_id = stack.query(
        "mlflow", f"select run_id from model_versions where name = 'next_item' and version = {champion}"
    )[0][0]
    run_tags = dict(stack.query("mlflow", f"select key, value from tags where run_uuid = '{run_id}'"))
    current = json.loads((Path(stack.env["SHOPML_HOME"]) / "dataset" / "versions" / "current.json").read_text())
    assert run_tags["dataset_version"] == current["version"]
    # Artifacts went through the server's proxy to its destination, not to a local mlruns folder.
    assert list((stack.root / "mlflow-artifacts").rglob("MLmodel"))
    assert not (REPO / "mlruns").exists()


def _fake_passed_version(client, run_name: str) -> str:
    """A registered version with a logged model, passed by the gate and the smoke test."""
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    experiment = client.get_experiment_by_name("it-registry") or client.get_experiment(
        client.create_experiment("it-registry")
    )
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=run_name) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo())
    mv = mlflow.register_model(info.model_uri, "next_item")
    for key, value in {
        "gate.decision": "passed",
        "smoke_test": "passed",
        "status": "challenger",
        "run_id": run.info.run_id,
        "dataset_version": "0" * 32,
    }.items():
        client.set_model_version_tag("next_item", mv.version, key, value)
    return str(mv.version)


@pytest.fixture
def registry_env(stack, tmp_path, monkeypatch):
    """This process as a worker of the stack: its MLflow server on PostgreSQL, a state folder of its own."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.env["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("SHOPML_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("SHOPML_LOCK_URL", POSTGRES_URL)
    mlflow.set_tracking_uri(stack.env["MLFLOW_TRACKING_URI"])
    from pipeline.core.settings import get_state_paths
    from pipeline.core.tracking import mlflow_client

    return get_state_paths(), mlflow_client(get_state_paths())


def test_champion_history_fits_postgresql_after_many_promotions(stack, registry_env):
    """25 promotions with long reasons: one growing JSON tag passed VARCHAR(5000) after about 20."""
    from pipeline.lifecycle import registry

    paths, client = registry_env
    reason = "scheduled retrain from Airflow after the nightly ingest; " * 8  # about 450 characters
    versions = [_fake_passed_version(client, f"history-{i}") for i in range(25)]
    for v in versions:
        registry.promote(paths, "next_item", v, by="airflow", reason=reason)
    history = registry.champion_history(client, "next_item")
    assert [h["version"] for h in history][-25:] == versions
    assert history[-1]["reason"] == reason and history[-1]["by"] == "airflow"
    longest = stack.query("mlflow", "select max(length(value)) from registered_model_tags")[0][0]
    assert longest < 5000
    registry.rollback(paths, "next_item", by="bob", reason="conversion dropped")
    assert str(registry.alias_version(client, "next_item", registry.CHAMPION).version) == versions[-2]
    # Reset for the next test: no champion.
    client.delete_registered_model_alias("next_item", registry.CHAMPION)


def test_two_workers_promoting_on_postgresql_exactly_one_wins(stack, registry_env, tmp_path):
    """Two processes, separate state folders (no shared file lock), the same MLflow server: both
    were evaluated against no champion; the advisory lock in PostgreSQL lets one win, and the other
    fails the compare-and-set."""
    from mlflow.exceptions import MlflowException

    from pipeline.lifecycle import registry

    _, client = registry_env
    with contextlib.suppress(MlflowException):  # a clean registry: no champion, no history
        client.delete_registered_model("next_item")
    a, b = _fake_passed_version(client, "race-a"), _fake_passed_version(client, "race-b")
    start_at = time.time() + 8  # both imported and waiting by then
    procs = []
    for name, version in (("a", a), ("b", b)):
        env = {
            **stack.env,
            "SHOPML_HOME": str(tmp_path / f"worker-{name}"),
            "SHOPML_LOCK_URL": POSTGRES_URL,
            "SHOPML_TEST_START_AT": str(start_at),
            "PYTHONPATH": str(REPO),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "reliability_worker.py"), "promote", version, "none"],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 3], results
    winner = (a, b)[[r[0] for r in results].index(0)]
    assert str(registry.alias_version(client, "next_item", registry.CHAMPION).version) == winner
    loser_out = next(r[1] for r in results if r[0] == 3)
    assert "was evaluated against none" in loser_out
    assert [h["version"] for h in registry.champion_history(client, "next_item")] == [winner]
