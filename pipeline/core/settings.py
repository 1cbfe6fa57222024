"""Where state lives: one folder, moved by one environment variable.

Every stage asks this module for its locations, so the same code runs on the embedded defaults
(SQLite, local folders) or on remote engines once the matching variables are set.

Variables:
    SHOPML_HOME: root of all local state (default: ``.state`` in the current directory).
    SHOPML_DVC_REMOTE: DVC remote URL for dataset versions (default: ``$SHOPML_HOME/dvc-remote``;
        ``s3://bucket/prefix`` in a scaled-out setup).

Process defaults (``PROCESS_DEFAULTS``): the command line, the DAGs and the services set these in
their own environment when it does not set them already; importing ``pipeline`` sets nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Environment defaults of the project's own processes (the command line, the DAGs' tasks, the
# services), each kept where the environment already sets it:
# - MLFLOW_DISABLE_TELEMETRY: MLflow (3.2 on) starts a thread at its first import that sends usage
#   data to MLflow's servers. A shop's deployment often has no way out to them, and the thread sets
#   and removes a variable of os.environ while other threads read it (a KeyError in a test of
#   ours, CI of 724532d). Off unless a shop sets it to "false".
PROCESS_DEFAULTS: dict[str, str] = {"MLFLOW_DISABLE_TELEMETRY": "true"}


def apply_process_defaults(env: os._Environ | dict[str, str] | None = None) -> None:
    """Set each of ``PROCESS_DEFAULTS`` in ``env`` (default: ``os.environ``) that it does not set.
    Call it before anything imports mlflow."""
    env = os.environ if env is None else env
    for name, value in PROCESS_DEFAULTS.items():
        env.setdefault(name, value)


@dataclass(frozen=True)
class StatePaths:
    """Locations of the pipeline's state, all derived from one root folder."""

    home: Path
    dvc_remote_url: str

    @property
    def landing(self) -> Path:
        """Raw files as they arrive from the shop (the generator writes here)."""
        return self.home / "landing"

    @property
    def staging(self) -> Path:
        """Ingested partitions waiting for validation; never read by later stages."""
        return self.home / "staging"

    @property
    def dataset_repo(self) -> Path:
        """A DVC repository (no git) holding the canonical, validated dataset."""
        return self.home / "dataset"

    @property
    def canonical(self) -> Path:
        """The canonical dataset: ``events/`` and ``catalog/`` partitioned by event date."""
        return self.dataset_repo / "canonical"

    @property
    def quarantine(self) -> Path:
        """Rows that could not be ingested, with the reason, one file per interval."""
        return self.home / "quarantine"

    @property
    def reports(self) -> Path:
        """Per-interval ingest and validation reports (JSON)."""
        return self.home / "reports"

    @property
    def gx_root(self) -> Path:
        """Great Expectations file context: validation results and data docs."""
        return self.home / "gx"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"


def get_state_paths(env: Mapping[str, str] | None = None) -> StatePaths:
    """Resolve the state locations from the environment.

    Args:
        env: the environment to read; ``os.environ`` when omitted.

    Returns:
        The resolved, absolute locations. Nothing is created on disk.
    """
    env = os.environ if env is None else env
    home = Path(env.get("SHOPML_HOME") or Path.cwd() / ".state").expanduser().resolve()
    remote = env.get("SHOPML_DVC_REMOTE") or str(home / "dvc-remote")
    return StatePaths(home=home, dvc_remote_url=remote)


def airflow_env(paths: StatePaths, dags_folder: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for running Airflow against this project's DAGs and state.

    ``SHOPML_HOME`` is always the one of ``paths``, so tasks see the same state folder as the caller.
    Airflow settings already set in ``env`` win, so a production deployment (PostgreSQL, Celery)
    keeps its own; locally Airflow gets SQLite under ``$SHOPML_HOME/airflow`` and no example DAGs.
    """
    env = dict(os.environ if env is None else env)
    env["SHOPML_HOME"] = str(paths.home)
    defaults = {
        "AIRFLOW_HOME": str(paths.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{paths.airflow_home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "60",
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env
