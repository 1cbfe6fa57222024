"""What every family's training shares: the outcome, the run's tags and params, reruns, torchrun.

One MLflow run per training: parameters, per-epoch loss and validation metric, the dataset version
(DVC hash), the git commit, the split's cut points (``split.json``), the environment, test metrics
of the model and of every baseline side by side, and the model itself as a pyfunc with a signature
and an input example. The families' trainers (``pipeline.families.<family>.train``) call these.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from models.train import TrainConfig, TrainResult
from pipeline.core.settings import StatePaths
from pipeline.core.tracking import REPO_ROOT, environment_tags, git_commit, use_experiment
from pipeline.data.dataset import TimeSplit
from pipeline.families.featureset import FeatureSet
from pipeline.families.resume import RUNTIME_PARAMS

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    run_id: str
    model_uri: str
    dataset_version: str
    metrics: dict[str, float] = field(default_factory=dict)


def loop_config(params) -> TrainConfig:
    """The training loop's settings from a model's training parameters."""
    return TrainConfig(
        epochs=params.epochs,
        batch_size=params.batch_size,
        lr=params.lr,
        weight_decay=getattr(params, "weight_decay", 0.0),
        patience=params.patience,
        seed=params.seed,
        device=params.device,
        precision=params.precision,
        compile=params.compile,
    )


def tag_result(result: TrainResult) -> None:
    """Where and how the run trained; tags, not params, because a resumed run may train elsewhere."""
    import mlflow

    mlflow.set_tags(
        {
            "train.device": result.device,
            "train.precision": result.precision,
            "train.compiled": str(result.compiled),
            "train.resumed_from_epoch": str(result.resumed_from_epoch),
        }
    )


def exit_with_parent(sig: int) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (``PR_SET_PDEATHSIG``).

    torchrun starts its ranks in sessions of their own, so when its agent is SIGKILLed (a worker
    killing a timed-out task, a lost pod) the ranks would train on as orphans. They would also hold
    the run's lock, and the retry could not resume. A no-op where prctl does not exist.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the call: nobody would send the signal
        os.kill(os.getpid(), sig)


def rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def tag_run(model_name: str, features: FeatureSet, tags: dict[str, str] | None = None) -> None:
    """Tags every training run carries: what was trained, on which data and features, from which code, where;
    plus the caller's ``tags`` (e.g. the Airflow DAG run that asked for it)."""
    import mlflow

    mlflow.set_tags(
        {
            "model": model_name,
            "dataset_version": features.dataset_version,
            "dataset_path": features.dataset_path,
            "features_path": str(features.path),
            "train.world_size": os.environ.get("WORLD_SIZE", "1"),
            "git_commit": git_commit(),
            **environment_tags(),
            **(tags or {}),
        }
    )


def finished_run(paths: StatePaths, model_name: str, tags: dict[str, str]) -> TrainOutcome | None:
    """The newest finished training run of ``model_name`` carrying all of ``tags``, with its model.

    The DAG's training task tags its run with the DAG run's id and asks this first, so a cleared and
    rerun task returns the run it already made instead of training (and later registering) a second
    model for the same DAG run.
    """
    import mlflow

    experiment_id = use_experiment(paths, model_name)
    conditions = [f"tags.`{k}` = '{v}'" for k, v in tags.items()] + [
        f"tags.model = '{model_name}'",
        "attributes.status = 'FINISHED'",
    ]
    runs = mlflow.search_runs(
        [experiment_id],
        filter_string=" and ".join(conditions),
        max_results=1,
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    if not runs:
        return None
    run = runs[0]
    models = mlflow.search_logged_models(
        experiment_ids=[experiment_id], output_format="list", filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    if not models:
        return None
    return TrainOutcome(
        run.info.run_id, models[0].model_uri, run.data.tags.get("dataset_version", ""), dict(run.data.metrics)
    )


def log_setup(model_config, loop: TrainConfig, split: TimeSplit, data: dict) -> None:
    """Params every training run records: the model, the loop, the split's cut points, the data."""
    import mlflow

    # Device, precision and compile are tags (tag_result): a resumed run may train on other hardware.
    mlflow.log_params(
        {
            **{f"model.{k}": v for k, v in model_config.to_dict().items()},
            **{f"train.{k}": v for k, v in loop.to_dict().items() if k not in (*RUNTIME_PARAMS, "progress")},
            **{f"split.{k}": v for k, v in split.to_dict().items()},
            **data,
        }
    )
    mlflow.log_dict(split.to_dict(), "split.json")


def train_distributed(
    paths: StatePaths,
    model_name: str,
    nproc: int,
    features: Path | None = None,
    tags: dict[str, str] | None = None,
    timeout: float | None = None,
) -> TrainOutcome:
    """Train with ``torchrun`` on ``nproc`` processes of this machine (one per GPU; gloo on CPU).

    Runs ``python -m pipeline train`` under ``torch.distributed.run --standalone``: every rank trains
    its share of each epoch with DDP, rank 0 alone tracks the run and logs the model. The parameters
    are the deployment's (``params.yaml`` or ``SHOPML_PARAMS``), as for any CLI stage.

    Raises:
        RuntimeError: the distributed training failed; the message ends with its output's tail.
    """
    import signal
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="shopml-torchrun-") as tmp:
        output = Path(tmp) / "outcome.json"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "pipeline",
            "train",
            "--model",
            model_name,
            "--output",
            str(output),
            "--reuse-finished",
            *(["--features", str(features)] if features else []),
            *[arg for k, v in (tags or {}).items() for arg in ("--tag", f"{k}={v}")],
        ]
        env = {**os.environ, "SHOPML_HOME": str(paths.home)}
        # If this task process dies, torchrun gets SIGTERM and stops its ranks (the ranks themselves
        # die with torchrun: see exit_with_parent), so a retry finds the run's lock free.
        done = subprocess.run(
            command,
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=lambda: exit_with_parent(signal.SIGTERM),
        )
        if done.returncode != 0 or not output.exists():
            tail = (done.stdout[-2000:] + done.stderr[-4000:]).strip()
            raise RuntimeError(f"torchrun with {nproc} processes failed (exit code {done.returncode}):\n{tail}")
        data = json.loads(output.read_text())
    return TrainOutcome(**data)
