"""The production stack started for real (`make test-compose`): docker/docker-compose.yaml, with
docker/compose.debian.yaml's Debian-built images where Docker Hub cannot be reached (SHOPML_BASE=debian).

One test, in order: every service healthy; a generated shop published to the stack's S3 DVC remote;
`retrain_next_item` run by the Celery worker on the stack's PostgreSQL and Redis, its gate decision
in the registry on the MLflow server; the champion served by the `serve` container, a 401 without
a key and an answer with one; a day replayed against it with the admin key; the monitor reading
that day's answers from the container's prediction log on S3; the stack torn down, volumes too.
The images come from `make images` (the make target builds them first).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO, demo_shop

pytestmark = pytest.mark.compose

PROJECT = "shopml-compose-test"
SERVE_PORT = 3000  # docker-compose.yaml publishes the served model on 127.0.0.1:3000


def _compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.fail("no Docker Compose: `apt-get install docker.io docker-compose` (or Docker's compose plugin)")


class Stack:
    def __init__(self, env_file: Path):
        base_file = REPO / "docker/docker-compose.yaml"
        if _compose_command() == ["docker-compose"]:
            # Debian's docker-compose 1.29 reads a top-level `name:` as a version-1 service: the same
            # file without it, beside the original (its relative paths), the project named by -p.
            text = base_file.read_text()
            base_file = REPO / "docker/.compose-v1.yaml"
            base_file.write_text(text.replace("\nname: shopml\n", "\n", 1))
        files = ["-f", str(base_file)]
        if os.environ.get("SHOPML_BASE", "debian") == "debian":
            files += ["-f", str(REPO / "docker/compose.debian.yaml")]
        self.base = [*_compose_command(), "-p", PROJECT, "--env-file", str(env_file), *files]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args[:4])}: exit {done.returncode}\n{(done.stdout + done.stderr)[-6000:]}")
        return done

    def task(self, *command: str, env: dict[str, str] | None = None, timeout: float = 1200) -> str:
        """A one-off container of the Airflow image, with the workers' settings and the shared state."""
        extra = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        done = self.compose(
            "run",
            "--rm",
            "--no-deps",
            *extra,
            "--entrypoint",
            command[0],
            "airflow-worker",
            *command[1:],
            timeout=timeout,
        )
        return done.stdout

    def containers(self) -> dict[str, str]:
        """service -> health (or state, for a container without a health check)."""
        ids = self.compose("ps", "-q").stdout.split()
        out = {}
        for cid in ids:
            info = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True, text=True).stdout)[0]
            service = info["Config"]["Labels"]["com.docker.compose.service"]
            state = info["State"]
            out[service] = state.get("Health", {}).get("Status") or f"{state['Status']}:{state['ExitCode']}"
        return out

    def wait_healthy(self, services: set[str], deadline_s: float = 600) -> dict[str, str]:
        end = time.monotonic() + deadline_s
        while True:
            seen = self.containers()
            if all(seen.get(s) == "healthy" for s in services):
                return seen
            bad = {
                s: h for s, h in seen.items() if h == "unhealthy" or (h.startswith("exited:") and not h.endswith(":0"))
            }
            if bad or time.monotonic() > end:
                logs = self.compose("logs", "--tail", "40", timeout=120, check=False).stdout[-8000:]
                raise AssertionError(f"not healthy: {bad or {s: seen.get(s) for s in services}}\n{logs}")
            time.sleep(5)


# What a service's credentials reach: each S3 call and database connection, allowed or refused.
PROBE = """
import json, os, sys
import boto3, botocore, sqlalchemy
s3 = boto3.client("s3", region_name="us-east-1")
out = {}
for bucket in sys.argv[1].split(","):
    try:
        s3.list_objects_v2(Bucket=bucket, MaxKeys=1)
        out["s3:" + bucket] = "allowed"
    except botocore.exceptions.ClientError as exc:
        out["s3:" + bucket] = exc.response["Error"]["Code"]
url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "").rsplit("/", 1)[0]
for db in filter(None, (sys.argv[2] if len(sys.argv) > 2 else "").split(",")):
    try:
        sqlalchemy.create_engine(url + "/" + db).connect().close()
        out["db:" + db] = "allowed"
    except sqlalchemy.exc.OperationalError as exc:
        out["db:" + db] = "refused" if "permission denied" in str(exc) else str(exc)[:200]
print(json.dumps(out))
"""


def _env_file(tmp: Path, keys_file: Path) -> Path:
    from cryptography.fernet import Fernet

    def token() -> str:
        return secrets.token_urlsafe(24)

    values = {
        "POSTGRES_USER": "shopml",
        "POSTGRES_PASSWORD": token(),
        "AIRFLOW_DB_PASSWORD": token(),
        "MLFLOW_DB_PASSWORD": token(),
        "REDIS_PASSWORD": token(),
        "MINIO_ROOT_USER": "shopml",
        "MINIO_ROOT_PASSWORD": token(),
        "S3_AIRFLOW_ACCESS_KEY": "shopml-airflow",
        "S3_AIRFLOW_SECRET_KEY": token(),
        "S3_MLFLOW_ACCESS_KEY": "shopml-mlflow",
        "S3_MLFLOW_SECRET_KEY": token(),
        "S3_SERVE_ACCESS_KEY": "shopml-serve",
        "S3_SERVE_SECRET_KEY": token(),
        "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW_JWT_SECRET": token(),
        "AIRFLOW_API_SECRET_KEY": token(),
        "AIRFLOW_USERS": "ops:admin,analyst:viewer",
        "MLFLOW_ADMIN_PASSWORD": token(),
        "MLFLOW_FLASK_SECRET_KEY": token(),
        "SHOPML_MLFLOW_WRITER_PASSWORD": token(),
        "SHOPML_MLFLOW_READER_PASSWORD": token(),
        "SHOPML_API_KEYS_FILE": str(keys_file),
        "SHOPML_PREDICTION_LOG_FLUSH_S": "2",
        "SHOPML_ACCEPT_EVENT_TIME": "1",
        "AIRFLOW_PORT": "18080",
        "MLFLOW_PORT": "15000",
    }
    path = tmp / "stack.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


@pytest.fixture
def stack(tmp_path):
    from pipeline.serving.auth import KeyStore

    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("no Docker engine: `apt-get install docker.io`, then `dockerd &` (make test-compose)")
    keys_file = tmp_path / "api-keys.json"
    store = KeyStore.load(keys_file)
    keys = {"admin": store.add("compose-admin", "admin"), "client": store.add("checkout", "client")}
    keys_file.chmod(0o644)  # a Compose secret is a bind mount: the serving user (50000) reads it
    s = Stack(_env_file(tmp_path, keys_file))
    s.keys = keys
    s.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
    try:
        yield s
    finally:
        s.compose("--profile", "serve", "down", "-v", "--remove-orphans", timeout=300, check=False)


@pytest.mark.timeout(3600)  # the stack's start, a retrain on 2 cores, serving and a replay: about 15 minutes
def test_the_production_stack_retrains_through_celery_serves_with_keys_and_monitors_from_s3(stack):
    started = time.monotonic()

    def say(what: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {what}", flush=True)

    core = {
        "postgres",
        "redis",
        "minio",
        "mlflow",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
    }
    up = stack.compose("up", "-d", timeout=900, check=False)
    if up.returncode != 0:
        failed = [s for s, h in stack.containers().items() if h.startswith("exited:") and not h.endswith(":0")]
        logs = stack.compose("logs", "--no-color", "--tail", "60", *failed, timeout=120, check=False).stdout
        raise AssertionError(f"up -d: exit {up.returncode}; failed: {failed}\n{up.stderr[-2000:]}\n{logs[-8000:]}")
    health = stack.wait_healthy(core, deadline_s=900)
    assert health.get("airflow-init") == "exited:0" and health.get("mlflow-users") == "exited:0", health
    say("services healthy: " + ", ".join(sorted(f"{s}={h}" for s, h in health.items())))

    # Least privilege: the workers' S3 account reaches the DVC remote, not MLflow's artifacts (the
    # server proxies them); their database role reaches Airflow's database, not MLflow's.
    reach = json.loads(stack.task("python", "-c", PROBE, "shopml-dvc,shopml-mlflow", "airflow,mlflow").splitlines()[-1])
    assert reach == {
        "s3:shopml-dvc": "allowed",
        "s3:shopml-mlflow": "AccessDenied",
        "db:airflow": "allowed",
        "db:mlflow": "refused",
    }, reach
    say(f"the workers' credentials reach: {reach}")

    # A shop: nine days published from the command line onto the S3 remote, the tenth by the DAG.
    stack.task("python", "-m", "pipeline", *demo_shop(12))
    stack.task("python", "-m", "pipeline", "run", "--start", "2026-11-01", "--days", "9")
    stack.task("airflow", "dags", "test", "--use-executor", "ingest_events", "2026-11-11")
    say("ten days ingested, validated and versioned (DVC remote s3://shopml-dvc)")
    stack.task("airflow", "dags", "test", "--use-executor", "retrain_next_item", timeout=2400)
    worker_log = stack.compose("logs", "--no-color", "airflow-worker", timeout=120).stdout
    assert "train_next_item" in worker_log and "promote_next_item" in worker_log, worker_log[-3000:]
    models = stack.task("shopml", "models", "--model", "next_item")
    champion = next(line for line in models.splitlines() if "champion" in line)
    assert "passed" in champion or "floor" in models, models
    say(f"retrain_next_item ran on the Celery worker; the registry on the MLflow server:\n{models}")

    # The champion served by the serve container, nobody in without a key.
    stack.compose("--profile", "serve", "up", "-d", "serve", timeout=600)
    stack.wait_healthy({"serve"}, deadline_s=600)
    url = f"http://127.0.0.1:{SERVE_PORT}"
    body = {"user_id": "u1", "history": ["i1003", "i1172"], "k": 5}
    anonymous = httpx.post(f"{url}/recommend", json=body, timeout=30)
    assert anonymous.status_code == 401 and anonymous.json() == {"error": "unauthorized"}, anonymous.text
    answer = httpx.post(
        f"{url}/recommend", json=body, headers={"authorization": f"Bearer {stack.keys['client']}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["items"]) == 5, answer.text
    say(f"served: 401 without a key; with the client key {answer.status_code} {answer.text[:160]}")
    # The serve container's S3 account finds the prediction log's bucket (to append to it) and
    # reaches no other bucket.
    probe = stack.compose(
        "exec", "-T", "serve", "python", "-c", PROBE, "shopml-dvc,shopml-mlflow,shopml-predictions", ""
    )
    reach = json.loads(probe.stdout.splitlines()[-1])
    assert reach == {
        "s3:shopml-dvc": "AccessDenied",
        "s3:shopml-mlflow": "AccessDenied",
        "s3:shopml-predictions": "allowed",
    }, reach
    say(f"the serve container's S3 account reaches: {reach}")

    # The eleventh day replayed against the container, its answers logged to S3; then judged.
    replay = stack.task(
        "shopml",
        "replay",
        "--model",
        "next_item",
        "--date",
        "2026-11-11",
        "--url",
        "http://serve:3000",
        "--limit",
        "400",
        env={"SHOPML_API_KEY": stack.keys["admin"]},
    )
    assert ", 0 failed" in replay, replay
    time.sleep(6)  # two flushes of the container's log
    stack.task("python", "-m", "pipeline", "run", "--start", "2026-11-11", "--days", "2")
    report = stack.task("shopml", "monitor", "--model", "next_item", "--date", "2026-11-11", "--no-trigger")
    logged = stack.task(
        "python", "-c", "import fsspec; print(len(fsspec.filesystem('s3').find('shopml-predictions/log')))"
    )
    assert int(logged.split()[-1]) > 0, "the serve container logged nothing to s3://shopml-predictions/log"
    online = [line for line in report.splitlines() if line.startswith("online next_item 2026-11-11")]
    assert online and "champion v" in online[0], report[-3000:]
    say("monitor, from the serve container's prediction log on S3:\n" + "\n".join(online))
