"""The MLflow server's accounts: one that writes (training, the gate, the registry: Airflow's
workers) and one that only reads (dashboards, an auditor), on MLflow's basic-auth app.

The app (``docker/mlflow/basic_auth.ini``) refuses any request without an account (401) and lets
an account read everything and write only what it created or was granted, so only the training
account can register versions, upload artifacts and set the tags the gate and the registry trust
(``gate.decision``, ``smoke_test``, ``bento_tag``, ``model.sha256``). A client authenticates with
MLflow's own variables, ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``.

``provision`` makes the accounts as the admin (idempotent: an account that exists gets its
password set again): ``python -m pipeline.core.mlflow_auth URL`` with ``MLFLOW_AUTH_ADMIN_PASSWORD``,
``SHOPML_MLFLOW_WRITER_PASSWORD`` and ``SHOPML_MLFLOW_READER_PASSWORD`` set.
"""

from __future__ import annotations

import os
import sys

WRITER, READER = "shopml-trainer", "shopml-reader"


def provision(url: str, admin_password: str, passwords: dict[str, str], admin: str = "admin") -> None:
    """Create (or reset the password of) each account in ``passwords`` on the server at ``url``."""
    import httpx

    auth = (admin, admin_password)
    with httpx.Client(base_url=url.rstrip("/"), auth=auth, timeout=30) as http:
        for username, password in passwords.items():
            if not password or "CHANGE-ME" in password:
                raise ValueError(f"MLflow account {username}: a real password is required, not {password!r}")
            made = http.post("/api/2.0/mlflow/users/create", json={"username": username, "password": password})
            if made.status_code == 200:
                continue
            if "already exists" not in made.text and made.status_code not in (400, 409):
                made.raise_for_status()
            http.patch(
                "/api/2.0/mlflow/users/update-password", json={"username": username, "password": password}
            ).raise_for_status()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pipeline.core.mlflow_auth MLFLOW_URL", file=sys.stderr)
        return 2
    provision(
        argv[0],
        os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"],
        {
            WRITER: os.environ["SHOPML_MLFLOW_WRITER_PASSWORD"],
            READER: os.environ["SHOPML_MLFLOW_READER_PASSWORD"],
        },
    )
    print(f"MLflow accounts {WRITER} (writes) and {READER} (reads) are set on {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
