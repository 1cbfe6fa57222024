"""MLflow tracking configuration: SQLite and a local artifact folder by default.

Variables:
    MLFLOW_TRACKING_URI: a tracking server (``http://mlflow:5000``) or database URI; default
        ``sqlite:///$SHOPML_HOME/mlflow/mlflow.db`` with artifacts in ``$SHOPML_HOME/mlflow/artifacts``.
    SHOPML_EXPERIMENT: experiment name prefix (default ``shopml``).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from pipeline.settings import StatePaths

REPO_ROOT = Path(__file__).resolve().parent.parent


def tracking_uri(paths: StatePaths) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.home / 'mlflow' / 'mlflow.db'}"


def use_experiment(paths: StatePaths, model_name: str) -> str:
    """Point MLflow at this project's tracking store and experiment; returns the experiment id.

    Called by a stage when it starts, never at import.
    """
    import mlflow

    uri = tracking_uri(paths)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    name = f"{os.environ.get('SHOPML_EXPERIMENT', 'shopml')}-{model_name}"
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:///"):
            # Without it MLflow puts artifacts in ./mlruns of whatever directory the process runs in.
            location = (paths.home / "mlflow" / "artifacts").as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    # Runs started after this go to this experiment, not to MLflow's Default one.
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit() -> str:
    """The commit of this checkout, with '-dirty' for uncommitted changes; outside git (a container
    image) the ``SHOPML_GIT_COMMIT`` its build recorded, else 'unknown'."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("SHOPML_GIT_COMMIT") or "unknown"


def environment_tags() -> dict[str, str]:
    import torch

    return {
        "env.python": platform.python_version(),
        "env.platform": platform.platform(),
        "env.torch": torch.__version__,
        "env.cuda": str(torch.cuda.is_available()),
        "env.device_count": str(torch.cuda.device_count()),
    }
