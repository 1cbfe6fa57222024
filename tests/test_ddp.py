"""Multi-process training with torchrun (DDP on CPU with gloo): the same code path as multi-GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


@pytest.mark.slow
def test_torchrun_two_processes_share_the_data_and_stay_in_sync(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(REPO / "tests" / "ddp_worker.py"),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    # Each rank trained on its own half of every epoch (301 rows: 150 each, one left out).
    assert ranks[0]["rows_seen"] == ranks[1]["rows_seen"] == 150 * ranks[0]["epochs_run"]
    # All ranks took the same early-stopping decision and ended with identical weights.
    assert ranks[0]["epochs_run"] == ranks[1]["epochs_run"]
    assert ranks[0]["stopped_early"] == ranks[1]["stopped_early"]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=0, abs=1e-9)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.slow
def test_pipeline_train_under_torchrun_resumes_a_killed_run_on_every_rank_and_tracks_it_from_rank_zero(tmp_path):
    """`torchrun -m pipeline train` killed mid-training (the whole process group, as a lost node or
    a SIGKILLed task), then run again: every rank resumes from the same epoch, rank 0 alone tracks
    the one MLflow run, which finishes; a retried task then reuses the finished run."""
    import signal
    import time

    import mlflow
    import torch
    import yaml

    from conftest import published_shop
    from pipeline.core.params import GenerateParams
    from pipeline.core.tracking import tracking_uri
    from pipeline.families.training import train_distributed

    epochs = 4  # with 2 ranks on 2 cores, about a second each: time to kill it mid-training
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train_recommender"].update(epochs=epochs, patience=epochs, max_len=30, dim=64, layers=2, batch_size=16)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    mp = pytest.MonkeyPatch()
    mp.setenv("SHOPML_PARAMS", str(tmp_path / "params.yaml"))
    mp.setenv("OMP_NUM_THREADS", "1")
    try:
        with published_shop(
            tmp_path / "home",
            GenerateParams(
                seed=5, start_date="2026-10-01", days=8, events_per_day=2000, initial_users=800, initial_items=500
            ),
        ) as paths:
            tags = {"airflow.dag_run_id": "ddp__1"}
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=2",
                "-m",
                "pipeline",
                "train",
                "--model",
                "next_item",
                "--tag",
                "airflow.dag_run_id=ddp__1",
            ]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            with (tmp_path / "killed.log").open("w") as log:
                victim = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
                checkpoints = paths.home / "checkpoints" / "next_item"
                deadline = time.monotonic() + 600
                while not list(checkpoints.glob("*/checkpoints/last.pt")) and time.monotonic() < deadline:
                    assert victim.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                    time.sleep(0.05)
                ranks = [int(pid) for pid in Path(f"/proc/{victim.pid}/task/{victim.pid}/children").read_text().split()]
                # SIGKILL to torchrun's agent alone, as a worker killing a task does: its ranks live in
                # sessions of their own and must not train on as orphans.
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=30)
            assert victim.returncode == -signal.SIGKILL and len(ranks) == 2
            deadline = time.monotonic() + 30
            while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in ranks):
                assert time.monotonic() < deadline, f"ranks {ranks} outlived their agent"
                time.sleep(0.1)
            [last] = list(checkpoints.glob("*/checkpoints/last.pt"))
            assert torch.load(last, weights_only=True)["epoch"] < epochs - 1  # stopped before the end
            mlflow.set_tracking_uri(tracking_uri(paths))
            [left] = mlflow.search_runs(search_all_experiments=True, output_format="list")
            assert left.info.status == "RUNNING"

            resumed = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
            output = resumed.stdout + resumed.stderr
            assert resumed.returncode == 0, output[-4000:]
            found = re.findall(r"rank (\d) resumes from epoch (\d+)", output)
            starts = {int(rank): int(epoch) for rank, epoch in found}
            assert set(starts) == {0, 1} and len(set(starts.values())) == 1, output[-4000:]

            runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
            assert [r.info.run_id for r in runs] == [left.info.run_id]  # rank 1 logged nothing
            run = runs[0]
            assert run.info.status == "FINISHED"
            assert run.data.tags["train.world_size"] == "2" and run.data.tags["airflow.dag_run_id"] == "ddp__1"
            assert int(run.data.tags["train.resumed_from_epoch"]) == starts[0]
            assert run.data.params["train.epochs"] == str(epochs)
            steps = [m.step for m in mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "train_loss")]
            assert sorted(set(steps)) == list(range(epochs))
            # A retried task reuses the finished run of its DAG run: no second training.
            outcome = train_distributed(paths, "next_item", 2, tags=tags, timeout=900)
            assert outcome.run_id == run.info.run_id and outcome.model_uri.startswith("models:/")
            assert "test_recall_at_20" in outcome.metrics
            assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == 1
    finally:
        mp.undo()
