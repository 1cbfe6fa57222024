"""Training on the versioned dataset, tracked in MLflow; the logged model loads and predicts."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from conftest import published_shop
from pipeline.cli import main as cli
from pipeline.params import GenerateParams, TrainPropensityParams, TrainRecommenderParams
from pipeline.tracking import tracking_uri
from pipeline.train import finished_run, train_propensity, train_recommender

SMALL = TrainRecommenderParams(valid_days=2, test_days=2, max_len=20, dim=32, layers=1, epochs=4,
                               batch_size=128, patience=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with published_shop(tmp_path_factory.mktemp("train"), GenerateParams(
            seed=21, start_date="2026-10-01", days=10, events_per_day=3000, initial_users=1200,
            initial_items=800)) as paths:
        outcome = train_recommender(paths, SMALL, tags={"airflow.dag_run_id": "manual__1"})
        propensity = train_propensity(paths, TrainPropensityParams(epochs=4, patience=2))
        yield paths, outcome, propensity


def test_run_records_data_code_split_and_baselines(trained):
    import mlflow

    paths, outcome, _ = trained
    mlflow.set_tracking_uri(tracking_uri(paths))
    run = mlflow.get_run(outcome.run_id)
    current = json.loads((paths.dataset_repo / "versions" / "current.json").read_text())
    assert run.data.tags["dataset_version"] == current["version"] == outcome.dataset_version
    assert len(run.data.tags["git_commit"].removesuffix("-dirty")) == 40
    assert "env.torch" in run.data.tags
    assert mlflow.get_experiment(run.info.experiment_id).name == "shopml-next_item"
    assert run.info.artifact_uri.startswith(paths.home.as_uri())  # inside the state folder, never ./mlruns
    assert run.data.params["split.train_end"] < run.data.params["split.valid_end"] < run.data.params["split.end"]
    for name in ("test_recall_at_20", "test_ndcg_at_10", "baseline_popularity_recall_at_20",
                 "baseline_recent_popularity_recall_at_20", "baseline_cooccurrence_ndcg_at_20"):
        assert name in run.data.metrics
    history = mlflow.tracking.MlflowClient().get_metric_history(outcome.run_id, "train_loss")
    assert len(history) >= 2 and history[1].value < history[0].value


def test_logged_model_loads_in_a_fresh_process_and_predicts(trained):
    paths, outcome, _ = trained
    script = f"""
import json, mlflow, pandas as pd
mlflow.set_tracking_uri({tracking_uri(paths)!r})
model = mlflow.pyfunc.load_model({outcome.model_uri!r})
out = model.predict(pd.DataFrame({{"history": [["i1", "i2", "no-such-item"], []], "k": [5, 3]}}))
print(json.dumps({{"items": out["items"].tolist(), "scores": out["scores"].tolist(),
                  "inputs": [c.name for c in model.metadata.get_input_schema().inputs]}}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd="/", capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(paths.home)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [len(x) for x in result["items"]] == [5, 3]
    assert all(a >= b for a, b in zip(result["scores"][0], result["scores"][0][1:], strict=False))
    assert result["inputs"] == ["history", "k"]


def test_training_needs_a_published_dataset(state):
    with pytest.raises(FileNotFoundError, match="no dataset version"):
        train_recommender(state, dataclasses.replace(SMALL))


def test_cli_train_without_data_is_a_clear_error(state, capsys):
    assert cli(["train"]) == 2
    assert "no dataset version" in capsys.readouterr().err


def test_propensity_run_reports_the_model_beside_logistic_regression(trained):
    import mlflow

    paths, recommender, outcome = trained
    mlflow.set_tracking_uri(tracking_uri(paths))
    run = mlflow.get_run(outcome.run_id)
    assert run.data.tags["dataset_version"] == recommender.dataset_version
    for name in ("test_auc", "test_log_loss", "baseline_logreg_auc", "baseline_logreg_log_loss"):
        assert name in run.data.metrics
    assert 0.5 < run.data.metrics["test_auc"] <= 1.0
    assert int(run.data.params["data.train_rows"]) > int(run.data.params["data.test_rows"]) > 0


def test_logged_propensity_model_scores_feature_rows_with_unknown_ids(trained):
    import mlflow
    import pandas as pd

    from pipeline.features import PROPENSITY_DENSE

    paths, _, outcome = trained
    mlflow.set_tracking_uri(tracking_uri(paths))
    model = mlflow.pyfunc.load_model(outcome.model_uri)
    rows = pd.DataFrame([{"item_id": "no-such-item", "category": None, "brand": "new-brand",
                          **dict.fromkeys(PROPENSITY_DENSE, 1.0)}] * 2)
    rows.loc[1, "ui_purchases"] = 3.0
    probs = model.predict(rows)["probability"]
    assert ((probs > 0) & (probs < 1)).all()


def test_a_rerun_of_the_same_dag_run_finds_the_run_it_made(trained):
    paths, outcome, _ = trained
    found = finished_run(paths, "next_item", {"airflow.dag_run_id": "manual__1"})
    assert found is not None and found.run_id == outcome.run_id and found.model_uri == outcome.model_uri
    assert found.dataset_version == outcome.dataset_version
    assert finished_run(paths, "next_item", {"airflow.dag_run_id": "manual__2"}) is None
    assert finished_run(paths, "purchase_propensity", {"airflow.dag_run_id": "manual__1"}) is None


def test_training_reads_a_feature_set_built_once_per_dataset_version(trained):
    import mlflow

    from pipeline.featureset import FeatureSetError, build_features, load_recommender_features, read_manifest
    from pipeline.train import features_for

    paths, outcome, propensity = trained
    mlflow.set_tracking_uri(tracking_uri(paths))
    run = mlflow.get_run(outcome.run_id)
    again = build_features(paths, "next_item", SMALL)
    # Training built the set; the features stage finds it instead of building it twice.
    assert again.reused and str(again.path) == run.data.tags["features_path"]
    manifest = read_manifest(again.path, "next_item")
    assert manifest["dataset_version"] == outcome.dataset_version
    assert manifest["split"]["train_end"] == run.data.params["split.train_end"]
    assert manifest["counts"]["train_windows"] == int(run.data.params["data.train_windows"])
    loaded = load_recommender_features(again.path)
    assert loaded.windows.shape[1] == SMALL.max_len + 1 and len(loaded.test.targets) == len(loaded.test.users) > 0
    assert (loaded.test.targets >= 2).all()            # unknown targets are left out, not ranked
    # Only the parameters that shape the features change the set.
    assert build_features(paths, "next_item", dataclasses.replace(SMALL, epochs=9)).path == again.path
    other = build_features(paths, "next_item", dataclasses.replace(SMALL, max_len=12))
    assert other.path != again.path and not other.reused
    assert load_recommender_features(other.path).windows.shape[1] == 13
    # A set built with other feature parameters, or for the other model, is refused with the reason.
    with pytest.raises(FeatureSetError, match="max_len=12; training asks for max_len=20"):
        features_for(paths, "next_item", SMALL, other.path)
    with pytest.raises(FeatureSetError, match="holds features of 'next_item', not 'purchase_propensity'"):
        features_for(paths, "purchase_propensity", TrainPropensityParams(), again.path)
    with pytest.raises(FeatureSetError, match="not a feature set"):
        features_for(paths, "next_item", SMALL, paths.home)
    prop = mlflow.get_run(propensity.run_id)
    assert read_manifest(prop.data.tags["features_path"], "purchase_propensity")["counts"]["test_rows"] == int(
        prop.data.params["data.test_rows"])


def test_cli_features_then_a_retried_train_returns_the_run_it_made(trained, tmp_path, capsys):
    paths, outcome, _ = trained
    mp = pytest.MonkeyPatch()
    mp.setenv("SHOPML_HOME", str(paths.home))
    try:
        assert cli(["features", "--model", "next_item"]) == 0
        report = json.loads((paths.reports / "features" / "next_item.json").read_text())
        assert report["dataset_version"] == outcome.dataset_version
        # What the Kubernetes pod runs: a retried pod finds the finished run of its DAG run.
        out = tmp_path / "xcom" / "return.json"
        assert cli(["train", "--model", "next_item", "--features", report["path"], "--tag",
                    "airflow.dag_run_id=manual__1", "--reuse-finished", "--output", str(out)]) == 0
        assert json.loads(out.read_text())["run_id"] == outcome.run_id
        assert "already carries" in capsys.readouterr().out
        assert cli(["train", "--tag", "no-equals-sign", "--reuse-finished"]) == 2
        assert "expected KEY=VALUE" in capsys.readouterr().err
    finally:
        mp.undo()
