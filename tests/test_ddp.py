"""Multi-process training with torchrun (DDP on CPU with gloo): the same code path as multi-GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_torchrun_two_processes_share_the_data_and_stay_in_sync(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "tests" / "ddp_worker.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
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


@pytest.mark.slow
def test_pipeline_train_under_torchrun_tracks_one_run_from_rank_zero(tmp_path):
    import mlflow
    import yaml

    from conftest import published_shop
    from pipeline.params import GenerateParams
    from pipeline.tracking import tracking_uri
    from pipeline.train import train_distributed

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train_recommender"].update(epochs=2, max_len=20, dim=32, layers=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    mp = pytest.MonkeyPatch()
    mp.setenv("SHOPML_PARAMS", str(tmp_path / "params.yaml"))
    mp.setenv("OMP_NUM_THREADS", "1")
    try:
        with published_shop(tmp_path / "home", GenerateParams(
                seed=5, start_date="2026-10-01", days=8, events_per_day=2000, initial_users=800,
                initial_items=500)) as paths:
            tags = {"airflow.dag_run_id": "ddp__1"}
            outcome = train_distributed(paths, "next_item", 2, tags=tags, timeout=900)
            mlflow.set_tracking_uri(tracking_uri(paths))
            runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
            assert [r.info.run_id for r in runs] == [outcome.run_id]     # rank 1 logged nothing
            run = runs[0]
            assert run.data.tags["train.world_size"] == "2" and run.data.tags["airflow.dag_run_id"] == "ddp__1"
            assert run.data.params["train.epochs"] == "2"
            assert "test_recall_at_20" in outcome.metrics and outcome.model_uri.startswith("models:/")
            # A retried task reuses the finished run of its DAG run: no second training.
            assert train_distributed(paths, "next_item", 2, tags=tags, timeout=900).run_id == outcome.run_id
            assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == 1
    finally:
        mp.undo()
