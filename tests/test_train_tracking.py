"""Training on the versioned dataset, tracked in MLflow; the logged model loads and predicts."""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import published_shop
from pipeline.cli import main as cli
from pipeline.core.params import GenerateParams, TrainPropensityParams, TrainRecommenderParams
from pipeline.core.tracking import REPO_ROOT, tracking_uri
from pipeline.families.next_item.train import train as train_recommender
from pipeline.families.purchase_propensity.train import train as train_propensity
from pipeline.families.training import finished_run

SMALL = TrainRecommenderParams(
    valid_days=2, test_days=2, max_len=20, dim=32, layers=1, epochs=4, batch_size=128, patience=2
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with published_shop(
        tmp_path_factory.mktemp("train"),
        GenerateParams(
            seed=21, start_date="2026-10-01", days=10, events_per_day=3000, initial_users=1200, initial_items=800
        ),
    ) as paths:
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
    for name in (
        "test_recall_at_20",
        "test_ndcg_at_10",
        "baseline_popularity_recall_at_20",
        "baseline_recent_popularity_recall_at_20",
        "baseline_cooccurrence_ndcg_at_20",
    ):
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
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(paths.home)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [len(x) for x in result["items"]] == [5, 3]
    assert all(a >= b for a, b in zip(result["scores"][0], result["scores"][0][1:], strict=False))
    assert result["inputs"] == ["history", "k"]


@pytest.mark.fast
def test_training_needs_a_published_dataset(state):
    with pytest.raises(FileNotFoundError, match="no dataset version"):
        train_recommender(state, dataclasses.replace(SMALL))


@pytest.mark.fast
def test_cli_train_without_data_is_a_clear_error(state, capsys):
    assert cli(["train", "--model", "next_item"]) == 3  # not found: no dataset version
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

    from pipeline.families.purchase_propensity.features import PROPENSITY_DENSE

    paths, _, outcome = trained
    mlflow.set_tracking_uri(tracking_uri(paths))
    model = mlflow.pyfunc.load_model(outcome.model_uri)
    rows = pd.DataFrame(
        [{"item_id": "no-such-item", "category": None, "brand": "new-brand", **dict.fromkeys(PROPENSITY_DENSE, 1.0)}]
        * 2
    )
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

    from pipeline.families.featureset import FeatureSetError, build_features, features_for, read_manifest
    from pipeline.families.next_item.features import load_features as load_recommender_features

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
    assert (loaded.test.targets >= 2).all()  # unknown targets are left out, not ranked
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
        prop.data.params["data.test_rows"]
    )


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
        assert (
            cli(
                [
                    "train",
                    "--model",
                    "next_item",
                    "--features",
                    report["path"],
                    "--tag",
                    "airflow.dag_run_id=manual__1",
                    "--reuse-finished",
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
        assert json.loads(out.read_text())["run_id"] == outcome.run_id
        assert "already carries" in capsys.readouterr().out
        assert cli(["train", "--model", "next_item", "--tag", "no-equals-sign", "--reuse-finished"]) == 2
        assert "expected KEY=VALUE" in capsys.readouterr().err
    finally:
        mp.undo()


# --- The GPU path, checked on a CPU: a simulated accelerator (tests/fake_accelerator.py) ---------


@pytest.mark.fast
def test_the_simulated_accelerator_catches_a_batch_left_on_the_cpu(monkeypatch):
    """The harness itself: a mismatch fails as on CUDA, and moved tensors compute the CPU's values."""
    import torch

    import models.train
    from fake_accelerator import accelerator
    from models.sasrec import SASRec, SASRecConfig
    from models.train import model_device

    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=50, max_len=6, dim=8, layers=1)).eval()
    batch = torch.randint(2, 50, (3, 6))
    expected = model(batch)
    with accelerator(monkeypatch) as device:
        assert models.train.select_device("auto") == device  # what the training loop picks
        model.to(device)
        assert model_device(model) == device and device.type != "cpu"
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            model(batch)
        scores = model(batch.to(device))
        assert scores.device == device
        assert torch.allclose(scores.cpu(), expected)
        with pytest.raises((RuntimeError, TypeError)):
            scores.numpy()
        # Restoring weights (best epoch, resume) copies real values onto the device.
        saved = {k: v + 1 for k, v in model.state_dict().items()}
        saved = {k: v.cpu() for k, v in saved.items()}
        model.load_state_dict(saved)
        assert model_device(model) == device
        assert torch.equal(model.item_emb.weight.cpu(), saved["item_emb.weight"])


def test_both_models_train_validate_test_and_evaluate_on_an_accelerator(trained, monkeypatch):
    """What a GPU worker runs: the pipeline's training (per-epoch validation, test metrics,
    baselines, calibration, the pyfunc) and the evaluation stage, with the model on a device that
    is not the CPU. The logged models then load and predict on a CPU-only host."""
    import math

    import mlflow
    import pandas as pd
    import torch

    from fake_accelerator import DEVICE, accelerator
    from pipeline.families.purchase_propensity.features import PROPENSITY_DENSE
    from pipeline.lifecycle.evaluate import evaluate_candidate

    paths, _, _ = trained
    tags = {"test.case": "accelerator"}
    with accelerator(monkeypatch):
        recommender = train_recommender(paths, dataclasses.replace(SMALL, epochs=2), tags=tags)
        propensity = train_propensity(paths, TrainPropensityParams(epochs=2, patience=2), tags=tags)
        evaluation = evaluate_candidate(paths, "next_item", recommender.run_id)
    mlflow.set_tracking_uri(tracking_uri(paths))
    for outcome in (recommender, propensity):
        run = mlflow.get_run(outcome.run_id)
        assert run.data.tags["train.device"] == str(DEVICE) and run.data.tags["train.precision"] == "fp32"
        assert run.info.status == "FINISHED"
        assert all(math.isfinite(v) for v in outcome.metrics.values())
    assert recommender.metrics["test_recall_at_20"] > 0 and 0.5 < propensity.metrics["test_auc"] <= 1
    assert evaluation.candidate.metrics["recall_at_20"] > 0
    # Trained on the accelerator, loaded on a CPU: the weights in the artifacts are CPU tensors.
    local = Path(mlflow.artifacts.download_artifacts(recommender.model_uri))
    [checkpoint] = list(local.rglob("best.pt"))
    weights = torch.load(checkpoint, weights_only=True)["model"]
    assert weights and {v.device.type for v in weights.values()} == {"cpu"}
    answer = mlflow.pyfunc.load_model(recommender.model_uri).predict(
        pd.DataFrame({"history": [["i1", "i2"]], "k": [5]})
    )
    assert len(answer["items"][0]) == 5
    rows = pd.DataFrame([{"item_id": "i1", "category": None, "brand": None, **dict.fromkeys(PROPENSITY_DENSE, 1.0)}])
    probability = mlflow.pyfunc.load_model(propensity.model_uri).predict(rows)["probability"][0]
    assert 0 < probability < 1


def test_pyfuncs_predict_with_their_model_on_an_accelerator(trained, monkeypatch):
    """A pyfunc whose model sits on a GPU (a GPU serving host) moves each request to it."""
    import mlflow
    import pandas as pd

    from fake_accelerator import accelerator
    from models.train import model_device

    paths, outcome, _ = trained
    mlflow.set_tracking_uri(tracking_uri(paths))
    pyfunc = mlflow.pyfunc.load_model(outcome.model_uri)
    wrapper = pyfunc.unwrap_python_model()
    request = pd.DataFrame({"history": [["i1", "i2", "i3"], []], "k": [5, 3]})
    on_cpu = wrapper.predict(None, request)
    with accelerator(monkeypatch) as device:
        wrapper.model.to(device)
        assert model_device(wrapper.model) == device
        on_device = wrapper.predict(None, request)
    assert on_device["items"].tolist() == on_cpu["items"].tolist()


@pytest.mark.fast
def test_precision_and_compile_follow_the_device_and_params_name_a_bad_value(tmp_path):
    import torch
    import yaml

    from models.train import TrainConfig, resolve_compile, resolve_precision
    from pipeline.core.params import ParamsError, load_params

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_precision("auto", cpu) is None and resolve_compile("auto", cpu) is False
    assert resolve_compile("auto", cuda) is True and resolve_compile(False, cuda) is False
    assert resolve_precision("fp32", cuda) is None and resolve_precision("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="precision='fp16'"):
        TrainConfig(precision="fp16")
    params = yaml.safe_load((Path(__file__).parent.parent / "params.yaml").read_text())
    assert load_params().train_recommender.precision == "auto"
    params["train_propensity"]["precision"] = "fp16"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"train_propensity\.precision: must be 'auto', 'bf16' or 'fp32', got 'fp16'"):
        load_params(tmp_path / "p.yaml")


@pytest.mark.fast
def test_bf16_autocast_trains_with_float32_weights():
    """The autocast path CUDA takes, on the CPU: the loss falls and the weights stay float32."""
    import torch

    from models.sasrec import SASRec, SASRecConfig
    from models.train import TrainConfig, train

    torch.manual_seed(0)
    data = torch.randint(2, 40, (256, 9))
    data[:, 1::2] = data[:, 0::2][:, :4] + 1  # a learnable next-item rule
    model = SASRec(SASRecConfig(n_items=42, max_len=8, dim=16, layers=1, dropout=0.0))
    result = train(
        model,
        data,
        lambda m, b: m(b[:, :-1], b[:, 1:], n_negatives=16),
        lambda m: 0.0,
        TrainConfig(epochs=3, batch_size=32, lr=5e-3, patience=10, precision="bf16", progress=False),
    )
    assert result.precision == "bf16"
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# --- Resumable training runs ------------------------------------------------------------------


def test_a_second_process_on_the_same_run_is_refused_and_a_dead_attempts_run_is_failed(trained):
    import mlflow
    from filelock import FileLock

    from pipeline.core.tracking import use_experiment
    from pipeline.families.featureset import features_for
    from pipeline.families.resume import RESUME_TAG, TrainingInProgress, checkpoint_folder, resume_key

    paths, _, _ = trained
    params = dataclasses.replace(SMALL, epochs=1)
    tags = {"test.case": "locked"}
    fs = features_for(paths, "next_item", params, None)
    folder = checkpoint_folder(paths, "next_item", resume_key("next_item", tags, fs.path, fs.dataset_version, params))
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".lock"), pytest.raises(TrainingInProgress, match="another process is training next_item"):
        train_recommender(paths, params, tags=tags)
    # An attempt of the same DAG run with other parameters died (SIGKILL) and left its run RUNNING.
    experiment_id = use_experiment(paths, "next_item")
    dead = mlflow.tracking.MlflowClient().create_run(
        experiment_id, tags={"model": "next_item", "test.case": "locked", RESUME_TAG: "an-older-key"}
    )
    outcome = train_recommender(paths, params, tags=tags)
    client = mlflow.tracking.MlflowClient()
    assert client.get_run(dead.info.run_id).info.status == "FAILED"
    assert "superseded" in client.get_run(dead.info.run_id).data.tags["shopml.abandoned"]
    assert client.get_run(outcome.run_id).info.status == "FINISHED"
    assert not (folder / "checkpoints").exists()  # a finished run keeps its model in MLflow, not here


def test_train_killed_mid_epoch_resumes_in_its_run_to_the_weights_of_an_uninterrupted_one(trained, tmp_path):
    """`python -m pipeline train` SIGKILLed mid-epoch, then the same command again: one MLflow run,
    FINISHED, with every epoch once and the weights of a run that was never interrupted."""
    import os
    import signal
    import time

    import mlflow
    import torch
    import yaml

    paths, _, _ = trained
    epochs = 4
    params = yaml.safe_load((Path(__file__).parent.parent / "params.yaml").read_text())
    params["train_recommender"].update(epochs=epochs, patience=epochs, max_len=30, dim=48, layers=2, batch_size=64)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **os.environ,
        "SHOPML_HOME": str(paths.home),
        "SHOPML_PARAMS": str(tmp_path / "params.yaml"),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)

    def command(case: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pipeline",
            "train",
            "--model",
            "next_item",
            "--tag",
            f"test.case={case}",
            "--output",
            str(tmp_path / f"{case}.json"),
        ]

    straight = subprocess.run(command("straight"), env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    log = (tmp_path / "victim.log").open("w")
    victim = subprocess.Popen(command("killed"), env=env, stdout=log, stderr=subprocess.STDOUT)
    checkpoints = paths.home / "checkpoints" / "next_item"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/checkpoints/last.pt")) and time.monotonic() < deadline:
        assert victim.poll() is None, (tmp_path / "victim.log").read_text()[-3000:]
        time.sleep(0.05)
    time.sleep(0.5)  # into the next epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    [last] = list(checkpoints.glob("*/checkpoints/last.pt"))
    killed_after = torch.load(last, weights_only=True)["epoch"]
    assert killed_after < epochs - 1  # it really stopped before the end

    mlflow.set_tracking_uri(tracking_uri(paths))
    client = mlflow.tracking.MlflowClient()

    def runs(case: str) -> list:
        return mlflow.search_runs(
            search_all_experiments=True, output_format="list", filter_string=f"tags.`test.case` = '{case}'"
        )

    [left] = runs("killed")
    assert left.info.status == "RUNNING"  # what a SIGKILL leaves; the retry must pick it up
    resumed = subprocess.run(command("killed"), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [run] = runs("killed")
    assert run.info.run_id == left.info.run_id and run.info.status == "FINISHED"
    assert int(run.data.tags["train.resumed_from_epoch"]) == killed_after + 1
    [reference] = runs("straight")
    for metric in ("train_loss", "valid_ndcg_at_10"):
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric)}
        want = {m.step: m.value for m in client.get_metric_history(reference.info.run_id, metric)}
        assert got == want and sorted(got) == list(range(epochs)), metric

    def weights(case: str) -> dict:
        uri = json.loads((tmp_path / f"{case}.json").read_text())["model_uri"]
        [best] = list(Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / case))).rglob("best.pt"))
        return torch.load(best, weights_only=True)["model"]

    a, b = weights("straight"), weights("killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(checkpoints.glob("*/checkpoints/last.pt"))  # cleaned up once finished


def test_the_gpu_check_runs_on_the_pipelines_feature_sets(trained, tmp_path):
    """benchmarks/gpu_check.py is what a GPU host runs (docs/benchmarks/gpu.md); here on the CPU,
    so that CI keeps its export and its checks working between GPU sessions."""
    import mlflow

    paths, outcome, propensity = trained
    mlflow.set_tracking_uri(tracking_uri(paths))
    data, out = tmp_path / "check.npz", tmp_path / "out"
    features = [mlflow.get_run(r).data.tags["features_path"] for r in (outcome.run_id, propensity.run_id)]
    run = functools.partial(subprocess.run, capture_output=True, text=True, cwd=REPO_ROOT)
    done = run(
        [
            sys.executable,
            "-m",
            "benchmarks.gpu_check",
            "export",
            "--next-item",
            features[0],
            "--propensity",
            features[1],
            "--out",
            str(data),
        ]
    )
    assert done.returncode == 0, done.stderr
    done = run(
        [
            sys.executable,
            "-m",
            "benchmarks.gpu_check",
            "run",
            "--data",
            str(data),
            "--out-dir",
            str(out),
            "--device",
            "cpu",
            "--max-epochs",
            "3",
        ]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4/4 checks passed" in done.stdout and "resumed from epoch 3 to 3" in done.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    assert set(report["checks"]) == {"sasrec quality", "resume", "gpu checkpoint on a cpu host", "dcn-v2 quality"}
    done = run([sys.executable, "-m", "benchmarks.gpu_check", "verify", "--data", str(data), "--out-dir", str(out)])
    assert done.returncode == 0 and "100.00% of items shared" in done.stdout, done.stdout + done.stderr
