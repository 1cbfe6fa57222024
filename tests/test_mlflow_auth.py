"""The MLflow server of the production profile refuses writes from anyone but the training account:
``docker/mlflow/basic_auth.ini`` on a real ``mlflow server --app-name basic-auth`` (SQLite here)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, wait_http


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    from pipeline.core.mlflow_auth import READER, WRITER, provision
    from pipeline.serving.package import free_port

    tmp = tmp_path_factory.mktemp("mlflow-auth")
    config = (REPO / "docker" / "mlflow" / "basic_auth.ini").read_text()
    config = "\n".join(
        f"database_uri = sqlite:///{tmp / 'auth.db'}" if line.startswith("database_uri") else line
        for line in config.splitlines()
    )
    (tmp / "basic_auth.ini").write_text(config)
    admin = secrets.token_urlsafe(16)
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),  # the app's CSRF key
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp / "server.log").open("wb")  # closed when the server is stopped, below
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--app-name",
            "basic-auth",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, (tmp / "server.log").read_text)
        passwords = {WRITER: secrets.token_urlsafe(16), READER: secrets.token_urlsafe(16)}
        provision(url, admin, passwords)
        provision(url, admin, passwords)  # a second run changes nothing
        yield url, passwords
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        log.close()


def _client(url: str, monkeypatch, username: str | None, password: str | None):
    from mlflow.tracking import MlflowClient

    for name, value in (("MLFLOW_TRACKING_USERNAME", username), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return MlflowClient(tracking_uri=url, registry_uri=url)


def test_only_the_training_account_writes_what_the_gate_trusts(auth_server, monkeypatch):
    from mlflow.exceptions import MlflowException

    from pipeline.core.mlflow_auth import READER, WRITER

    url, passwords = auth_server
    writer = _client(url, monkeypatch, WRITER, passwords[WRITER])
    writer.create_registered_model("fraud")
    experiment = writer.create_experiment("fraud")
    run = writer.create_run(experiment)
    version = writer.create_model_version("fraud", f"runs:/{run.info.run_id}/model", run.info.run_id)
    writer.set_model_version_tag("fraud", version.version, "gate.decision", "passed")

    anonymous = _client(url, monkeypatch, None, None)
    with pytest.raises(MlflowException, match=r"401|Unauthorized|credentials"):
        anonymous.create_registered_model("other")
    with pytest.raises(MlflowException, match=r"401|Unauthorized|credentials"):
        anonymous.set_model_version_tag("fraud", version.version, "gate.decision", "passed")
    wrong = _client(url, monkeypatch, WRITER, "not-the-password")
    with pytest.raises(MlflowException, match=r"401|Unauthorized|credentials"):
        wrong.set_tag(run.info.run_id, "gate.decision", "passed")

    reader = _client(url, monkeypatch, READER, passwords[READER])
    assert reader.get_model_version("fraud", version.version).tags["gate.decision"] == "passed"  # it reads
    for attempt in (
        lambda: reader.set_model_version_tag("fraud", version.version, "gate.decision", "rejected"),
        lambda: reader.set_tag(run.info.run_id, "smoke_test", "passed"),
        lambda: reader.create_model_version("fraud", f"runs:/{run.info.run_id}/model", run.info.run_id),
        lambda: reader.set_registered_model_alias("fraud", "champion", version.version),
    ):
        with pytest.raises(MlflowException, match=r"403|PERMISSION_DENIED|Permission denied"):
            attempt()
    assert writer.get_model_version("fraud", version.version).tags["gate.decision"] == "passed"


def test_the_accounts_need_real_passwords():
    from pipeline.core.mlflow_auth import provision

    with pytest.raises(ValueError, match="a real password is required"):
        provision("http://127.0.0.1:9", "admin", {"shopml-trainer": "CHANGE-ME"})
