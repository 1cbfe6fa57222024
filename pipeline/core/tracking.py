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

from pipeline.core.errors import NotFound, Refused
from pipeline.core.settings import StatePaths

REPO_ROOT = Path(__file__).resolve().parents[2]


def tracking_uri(paths: StatePaths) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.home / 'mlflow' / 'mlflow.db'}"


def experiment_name(model_name: str) -> str:
    """The MLflow experiment of ``model_name``'s runs: ``$SHOPML_EXPERIMENT-<model>``."""
    return f"{os.environ.get('SHOPML_EXPERIMENT', 'shopml')}-{model_name}"


def use_experiment(paths: StatePaths, model_name: str) -> str:
    """Point MLflow at this project's tracking store and experiment; returns the experiment id.

    Called by a stage when it starts, never at import.
    """
    import mlflow

    uri = tracking_uri(paths)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    name = experiment_name(model_name)
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
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
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


# The model registry's vocabulary, shared by the lifecycle (which moves aliases) and serving (which
# reads them).
CHALLENGER, CHAMPION = "challenger", "champion"
NO_CHAMPION = "none"
PREDICTIONS = "predictions.parquet"  # under a run's evaluation/ artifacts: what the candidate answered


class RegistryError(Refused):
    """A registry operation that cannot be done as asked (the message says why)."""


class NotRegistered(RegistryError, NotFound):
    """No such model version, alias, run model or Bento in the registry."""


def mlflow_client(paths: StatePaths):
    """An MLflow client on this project's tracking and registry store (MLflow's globals set too)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    # Task logs should show decisions, not a progress bar per downloaded artifact.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(paths)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def alias_version(client, model_name: str, alias: str):
    """The model version behind ``alias``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def model_version(client, model_name: str, version: str | None, default_alias: str):
    """Version ``version`` of ``model_name``, or the one behind ``default_alias`` when None.

    Raises:
        RegistryError: no such version, or nothing behind the alias.
    """
    from mlflow.exceptions import MlflowException

    if version is None:
        mv = alias_version(client, model_name, default_alias)
        if mv is None:
            raise NotRegistered(f"{model_name} has no {default_alias}; name a version")
        return mv
    try:
        return client.get_model_version(model_name, str(version))
    except MlflowException as exc:
        raise NotRegistered(f"{model_name} has no version {version}: {exc.message}") from None


def logged_model_uri(client, run_id: str) -> str:
    """The model logged by a training run (MLflow 3 logged model)."""
    import mlflow

    run = client.get_run(run_id)
    # Without experiment ids MLflow searches only the active experiment, which a fresh worker lacks.
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    if not models:
        raise NotRegistered(f"run {run_id} logged no model")
    return models[0].model_uri
