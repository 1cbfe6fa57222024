"""docker/: the images lint clean, the compose file is valid Compose, and neither drifts from the lock.

No Docker engine runs here, so nothing is built or started: hadolint lints the Dockerfiles and the
Compose specification's JSON schema (as vendored by check-jsonschema) validates the stack.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

# The fast layer (`make test-fast`): no training, no servers, no Airflow runs.
pytestmark = pytest.mark.fast

DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
COMPOSE = DOCKER / "docker-compose.yaml"
AIRFLOW_COMPONENTS = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)


def _lock() -> dict[str, str]:
    from pipeline.serving.package import lock_entries

    return {
        name: version
        for lock in ("requirements.lock", "requirements-torch.lock")
        for name, (version, _) in lock_entries(REPO / lock).items()
    }


def test_the_four_images_exist():
    assert [p.name for p in DOCKERFILES] == ["airflow.Dockerfile", "mlflow.Dockerfile", "train.Dockerfile"]
    assert (DOCKER / "docker-compose.yaml").exists() and (DOCKER / ".env.example").exists()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    done = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_what_it_should(tmp_path):
    """The lint is real: an unpinned, root, latest-tagged image fails it."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install mlflow\nRUN cd /tmp && apt-get install -y curl\n")
    done = subprocess.run([str(BIN / "hadolint"), str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3003", "DL3008"):
        assert rule in done.stdout, done.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_non_root_and_pinned_by_the_lock(dockerfile):
    text = dockerfile.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage: a build stage and a slim runtime"
    assert re.search(r"^USER \d+$", text, re.M), "the runtime runs as a numeric non-root user"
    assert "latest" not in re.findall(r"^ARG PYTHON_IMAGE=(.*)$", text, re.M)[0]
    lock = _lock()
    # Either the whole lock file, or each package pinned at the lock's version.
    if "requirements.lock" not in text:
        for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\\]*)", text):
            if name != "pip":
                assert lock[name.lower()] == version, (
                    f"{dockerfile.name} pins {name}=={version}, the lock has {lock[name.lower()]}"
                )


def test_compose_file_is_valid_against_the_compose_specification():
    done = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_catches_an_invalid_compose_file(tmp_path):
    stack = yaml.safe_load(COMPOSE.read_text())
    stack["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "service_ready"  # not a condition
    stack["services"]["postgres"]["restart_policy"] = "always"  # not a service key
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(stack))
    done = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "restart_policy" in done.stdout and "service_ready" in done.stdout


def test_compose_stack_has_the_services_health_checks_and_named_volumes():
    stack = yaml.safe_load(COMPOSE.read_text())
    services = stack["services"]
    for name in ("postgres", "redis", "minio", "mlflow", *AIRFLOW_COMPONENTS):
        assert name in services
        assert "healthcheck" in services[name], f"{name} has no health check"
        assert services[name].get("restart") == "unless-stopped"
    assert services["airflow-worker-gpu"]["profiles"] == ["gpu"]
    assert services["airflow-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    gpu_worker = services["airflow-worker-gpu"]["command"]
    assert gpu_worker[gpu_worker.index("--queues") + 1] == "gpu"
    # Every Airflow component waits for the database, the broker, MLflow and the migration.
    for name in AIRFLOW_COMPONENTS:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy" and deps["redis"]["condition"] == "service_healthy"
        assert deps["airflow-init"]["condition"] == "service_completed_successfully"
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://") and env["MLFLOW_TRACKING_URI"]
    mlflow = services["mlflow"]["command"]
    assert mlflow[mlflow.index("--backend-store-uri") + 1].startswith("postgresql+psycopg2://")
    assert mlflow[mlflow.index("--artifacts-destination") + 1].startswith("s3://")
    # Data lives in named volumes, declared at the top level.
    mounted = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert (
        mounted == set(stack["volumes"]) == {"postgres-data", "redis-data", "minio-data", "shopml-state", "mlflow-auth"}
    )


def test_no_secret_is_committed_and_env_example_lists_every_required_one():
    text = COMPOSE.read_text()
    stack = yaml.safe_load(text)
    secret = re.compile(r"(PASSWORD|SECRET|FERNET|KEY)", re.I)
    for name, service in stack["services"].items():
        env = service.get("environment", {})
        for key, value in env.items():
            if secret.search(key):
                # A variable, or the path of a Compose secret (a file mounted under /run/secrets).
                assert str(value).startswith(("${", "/run/secrets/")), f"{name}.{key} is a literal, not a ${{VARIABLE}}"
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert required <= set(example), f".env.example lacks {sorted(required - set(example))}"
    assert all("CHANGE-ME" in example[k] for k in example if secret.search(k))
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert ignored.returncode == 0, "docker/.env must be git-ignored"


def test_images_copy_what_the_pipeline_needs_and_the_build_context_skips_local_state():
    for dockerfile in (DOCKER / "airflow.Dockerfile", DOCKER / "train.Dockerfile"):
        text = dockerfile.read_text()
        for needed in ("pipeline", "models", "dags", "expectations", "params.yaml", "policy.yaml"):
            assert re.search(rf"^COPY .*\b{re.escape(needed)}\b", text, re.M), f"{dockerfile.name} lacks {needed}"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".state"} <= set(ignored)


def test_images_with_the_locked_packages_carry_the_system_libraries_they_link():
    """LightGBM's wheel links the system OpenMP runtime (libgomp.so.1), which slim images lack: an
    image that installs requirements.lock must install libgomp1 in the stage that runs."""
    lightgbm = (REPO / "requirements.lock").read_text()
    assert "\nlightgbm==" in lightgbm
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        if "-r /tmp/requirements.lock" not in text:
            continue
        runtime = text[text.index("AS runtime") :]
        assert "libgomp1=" in runtime, f"{dockerfile.name}: the runtime stage does not install libgomp1"


def test_a_placeholder_secret_stops_the_stack_before_anything_starts():
    """airflow-init runs the check first; .env.example's values, copied as they are, fail it."""
    import sys

    from pipeline.core.secrets_check import placeholders

    stack = yaml.safe_load(COMPOSE.read_text())
    assert stack["services"]["airflow-init"]["command"][0].startswith("python -m pipeline.core.secrets_check && ")
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert "AIRFLOW_USERS" in placeholders(example) and "MLFLOW_ADMIN_PASSWORD" in placeholders(example)
    assert placeholders({"REDIS_PASSWORD": "", "POSTGRES_USER": "shopml"}) == ["REDIS_PASSWORD"]
    # An empty AWS secret: a hole, unless the keys come from a credentials file that is there.
    aws = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    assert placeholders(aws) == ["AWS_SECRET_ACCESS_KEY"]
    assert placeholders({**aws, "AWS_SHARED_CREDENTIALS_FILE": str(REPO / "no-such-file")}) == ["AWS_SECRET_ACCESS_KEY"]
    assert placeholders({**aws, "AWS_SHARED_CREDENTIALS_FILE": str(REPO / "pyproject.toml")}) == []
    env = {"PATH": "/usr/bin", "AIRFLOW_JWT_SECRET": "CHANGE-ME"}
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.core.secrets_check"], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 1 and "AIRFLOW_JWT_SECRET" in run.stdout
    env["AIRFLOW_JWT_SECRET"] = "a-real-secret"
    assert subprocess.run([sys.executable, "-m", "pipeline.core.secrets_check"], env=env, cwd=REPO).returncode == 0


LOCKS = ("requirements.lock", "requirements-torch-cpu.lock", "requirements-torch.lock")


@pytest.mark.parametrize("lock", LOCKS)
def test_every_locked_requirement_is_pinned_and_hashed(lock):
    """pip's --require-hashes refuses a file a package index swapped: every entry names its files."""
    entries = re.split(
        r"\n(?=\S)", "\n".join(ln for ln in (REPO / lock).read_text().splitlines() if not ln.startswith("#"))
    )
    assert entries
    for entry in entries:
        assert re.match(r"[A-Za-z0-9._-]+==\S+", entry), entry
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"{lock}: {entry.split()[0]} has no hash"


def test_every_install_checks_hashes_and_reads_one_index():
    """make install and each image install the locks by hash, with no second index (dependency confusion)."""
    installs = [(REPO / "Makefile").read_text()] + [p.read_text() for p in DOCKERFILES]
    for text in installs:
        for line in re.findall(r"pip install[^\n]*-r \S*requirements[^\n]*", text):
            assert "--require-hashes" in line and "--no-deps" in line, line
        assert "--extra-index-url" not in text and "--index-url" not in text


def test_make_audit_fails_on_an_advisory_not_in_the_allowlist():
    """The allowlist is the only way past an advisory, and each of its entries gives a reason."""
    recipe = (REPO / "Makefile").read_text().split("\naudit:", 1)[1].split("\n\n", 1)[0]
    assert "pip-audit" in recipe and "--require-hashes" in recipe and "|| true" not in recipe
    for line in (REPO / ".ci/audit-allowlist").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert len(line.split(None, 1)) == 2, f"an allowlisted advisory without a reason: {line}"
