"""Training runs that outlive their process: a killed ``train_*`` task resumes where it stopped.

A training run is identified by what it is: the model, the caller's tags (for Airflow, the DAG run),
the feature set it reads and its training parameters. That identity hashes to a *resume key*. The
key names a checkpoint folder under the state folder and tags the MLflow run. The state folder is
shared by every worker and pod, so a retry on another machine finds the folder too:

    $SHOPML_HOME/checkpoints/<model>/<key>/
        .lock              held while a process trains this run (released by the OS when it dies)
        run.json           the MLflow run these checkpoints belong to
        checkpoints/       last.pt after every epoch, best.pt at the end (``models.train``)

When a process starts a training that has a key, it:

- takes the lock; when another live process holds it, it fails at once and says so;
- looks for an unfinished MLflow run with the key (RUNNING after a SIGKILL, FAILED after an
  exception). It resumes the newest in place: same run id, same metric history, training from
  the last checkpoint. Any older ones are marked FAILED;
- marks FAILED a RUNNING run that carries the same caller tags under another key (the DAG run was
  retried with other parameters) when no process holds that key's lock, so no run is left RUNNING
  by a dead task;
- otherwise starts a new run, and throws away checkpoints that belong to no unfinished run.

When the run finishes, its checkpoints are deleted; the model is in MLflow by then. Runtime
settings (device, precision, compile) are not part of the key: a GPU pod's run may resume on
another node or on a CPU worker, since checkpoints hold CPU tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from pipeline.core.errors import Refused
from pipeline.core.settings import StatePaths

log = logging.getLogger(__name__)

RESUME_TAG = "shopml.resume_key"
# Parameters that say how to train, not what: a run resumed with another of them is the same run.
RUNTIME_PARAMS = ("device", "precision", "compile")


class TrainingInProgress(Refused):
    """Another live process is training the run with this key."""


@dataclass(frozen=True)
class TrainingRun:
    run_id: str
    checkpoints: Path  # the training loop's checkpoint_dir
    resumed: bool  # an unfinished run was picked up again


def resume_key(model_name: str, tags: dict[str, str] | None, features: Path, dataset_version: str, params: Any) -> str:
    """The identity of a training run: model, caller's tags, feature set and training parameters."""
    wanted = {k: v for k, v in dataclasses.asdict(params).items() if k not in RUNTIME_PARAMS}
    blob = json.dumps(
        {
            "model": model_name,
            "tags": dict(sorted((tags or {}).items())),
            "features": Path(features).name,
            "dataset_version": dataset_version,
            "params": wanted,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def checkpoint_folder(paths: StatePaths, model_name: str, key: str) -> Path:
    return paths.home / "checkpoints" / model_name / key


def checkpoint_dir(paths: StatePaths, model_name: str, key: str) -> Path:
    """Where the training loop of this run writes ``last.pt`` and ``best.pt``, on every rank."""
    return checkpoint_folder(paths, model_name, key) / "checkpoints"


def _lock(folder: Path) -> FileLock:
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(folder / ".lock", timeout=0)


def _unfinished(client, experiment_id: str, conditions: list[str]) -> list:
    from mlflow.entities import ViewType

    runs = client.search_runs(
        [experiment_id],
        filter_string=" and ".join(conditions),
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )
    return [r for r in runs if r.info.status != "FINISHED"]


def _mark_failed(client, run_id: str, why: str) -> None:
    """End a run that a dead process left RUNNING, saying why (tag ``shopml.abandoned``)."""
    client.set_tag(run_id, "shopml.abandoned", why)
    client.set_terminated(run_id, "FAILED")


def _fail_abandoned(
    client, paths: StatePaths, experiment_id: str, model_name: str, key: str, tags: dict[str, str]
) -> None:
    """Mark FAILED the RUNNING runs with the caller's tags under another key whose trainer is gone."""
    if not tags:
        return
    conditions = [f"tags.`{k}` = '{v}'" for k, v in tags.items()] + [
        f"tags.model = '{model_name}'",
        "attributes.status = 'RUNNING'",
    ]
    for run in _unfinished(client, experiment_id, conditions):
        other = run.data.tags.get(RESUME_TAG)
        if other == key or other is None:
            continue
        lock = _lock(checkpoint_folder(paths, model_name, other))
        try:
            with lock:
                _mark_failed(client, run.info.run_id, f"superseded by a run with key {key}")
                log.warning(
                    "marked run %s FAILED: its trainer is gone and this DAG run now trains with other parameters",
                    run.info.run_id,
                )
        except Timeout:
            continue


@contextmanager
def tracked_training(
    paths: StatePaths, model_name: str, experiment_id: str, key: str, run_name: str, tags: dict[str, str] | None = None
) -> Iterator[TrainingRun]:
    """Start or resume the MLflow run of ``key`` and hold its checkpoint folder while training.

    Inside, the run is MLflow's active run. On a clean exit the run ends FINISHED and its
    checkpoints are deleted; on an exception it ends FAILED and they stay for the retry.

    Raises:
        TrainingInProgress: another live process holds this run's lock.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.core.integrity import record_model_digest

    folder = checkpoint_folder(paths, model_name, key)
    lock = _lock(folder)
    try:
        lock.acquire()
    except Timeout as exc:
        raise TrainingInProgress(
            f"another process is training {model_name} run {key} (lock {folder / '.lock'}); "
            "wait for it to finish, or stop it and run this again to resume"
        ) from exc
    try:
        client = MlflowClient()
        _fail_abandoned(client, paths, experiment_id, model_name, key, tags or {})
        candidates = _unfinished(client, experiment_id, [f"tags.`{RESUME_TAG}` = '{key}'"])
        for stale in candidates[1:]:
            if stale.info.status == "RUNNING":
                _mark_failed(client, stale.info.run_id, f"superseded by {candidates[0].info.run_id}")
        owner_file = folder / "run.json"
        owner = json.loads(owner_file.read_text()).get("run_id") if owner_file.exists() else None
        resume_id = candidates[0].info.run_id if candidates else None
        if resume_id is None or owner != resume_id:
            # Checkpoints of a finished run, or of none: never resume into another run's weights.
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        if resume_id is not None:
            run = mlflow.start_run(run_id=resume_id)
            log.info(
                "resuming %s run %s (%s)",
                model_name,
                resume_id,
                "from its last checkpoint" if owner == resume_id else "no checkpoint yet",
            )
        else:
            run = mlflow.start_run(run_name=run_name, tags={RESUME_TAG: key})
        with run:
            owner_file.write_text(json.dumps({"run_id": run.info.run_id, "model": model_name}))
            yield TrainingRun(run.info.run_id, folder / "checkpoints", resumed=resume_id is not None)
            # What every later load checks its files against (pipeline.core.integrity).
            record_model_digest(client, run.info.run_id)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        owner_file.unlink(missing_ok=True)
    finally:
        lock.release()
