"""A model family is one spec object: a toy third family, defined here and nowhere else, goes through
features, train, evaluate, gate, register, package (a real Bento, served and parity-checked) and
promote, with the same lifecycle functions the DAGs and the CLI call."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from conftest import published_shop
from pipeline import families
from pipeline.core.params import GenerateParams, load_params
from pipeline.families import ModelSpec, ParityOutcome, base
from pipeline.families.base import ModelScores, auc, auc_gate_statistic, per_slice, predict_batches, slices
from pipeline.families.training import TrainOutcome

NAME = "repeat_buyer"


@dataclass(frozen=True)
class ToyParams:
    valid_days: int = 2
    test_days: int = 2
    smoothing: float = 1.0


def _user_rates(events: pl.DataFrame) -> pl.DataFrame:
    return (
        events.group_by("user_id")
        .agg(
            pl.len().cast(pl.Float64).alias("events"),
            (pl.col("event_type") == "purchase").sum().cast(pl.Float64).alias("purchases"),
        )
        .sort("user_id")
    )


def write_features(out: Path, dataset, params: ToyParams):
    from pipeline.data.dataset import split_by_time

    events = dataset.events()
    split = split_by_time(events, params.valid_days, params.test_days)
    _user_rates(events.filter(pl.col("event_time") < split.train_end)).write_parquet(out / "train.parquet")
    return {"users": events["user_id"].n_unique()}, split


def _pyfunc(smoothing: float):
    """The served model: the more a user did, the likelier a purchase soon. Defined in a function,
    so that cloudpickle stores the class by value and the Bento needs no module of this test."""
    import mlflow.pyfunc

    class RepeatBuyer(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            activity = model_input["events"] + model_input["purchases"]
            return pd.DataFrame({"score": (activity / (activity + 10 * smoothing)).astype(float)})

    return RepeatBuyer()


def train(paths, params: ToyParams, tags=None, features=None, dataset_version=None) -> TrainOutcome:
    import mlflow

    from pipeline.core.tracking import use_experiment
    from pipeline.families.featureset import features_for

    fs = features_for(paths, NAME, params, features, dataset_version)
    manifest = json.loads((fs.path / "manifest.json").read_text())
    use_experiment(paths, NAME)
    with mlflow.start_run() as run:
        mlflow.set_tags({"model": NAME, "dataset_version": fs.dataset_version, **(tags or {})})
        mlflow.log_params({"smoothing": params.smoothing, **{f"split.{k}": v for k, v in manifest["split"].items()}})
        example = pd.DataFrame({"events": [3.0, 10.0], "purchases": [0.0, 2.0]})
        info = mlflow.pyfunc.log_model(name="model", python_model=_pyfunc(params.smoothing), input_example=example)
    return TrainOutcome(run.info.run_id, info.model_uri, fs.dataset_version, {})


def toy_test_set(dataset, split, run_params) -> base.TestSet:
    events, catalog = dataset.events(), dataset.catalog()
    rates = _user_rates(events.filter(pl.col("event_time") < split.valid_end))
    later = events.filter((pl.col("event_time") >= split.valid_end) & (pl.col("event_type") == "purchase"))
    bought = set(later["user_id"].to_list())
    users = rates["user_id"].to_list()
    last_item = (
        events.filter(pl.col("event_time") < split.valid_end)
        .group_by("user_id")
        .agg(pl.col("item_id").last())
        .sort("user_id")["item_id"]
    )
    return base.TestSet(
        inputs=rates.select("events", "purchases").to_pandas(),
        users=np.array(users, dtype=object),
        slices=slices(users, last_item, events, catalog, split.train_end),
        labels=np.array([float(u in bought) for u in users]),
    )


def _scores(probs: np.ndarray, test: base.TestSet, predictions=None) -> ModelScores:
    labels = test.labels
    return ModelScores(
        {"auc": auc(labels, probs)},
        {"probability": probs},
        per_slice(test, lambda m: {"auc": auc(labels[m], probs[m])}),
        1.0,
        predictions,
    )


def score(model, test: base.TestSet) -> ModelScores:
    predictions = predict_batches(model, test.inputs, 4096)
    return _scores(predictions["score"].to_numpy(dtype=float), test, predictions)


def baselines(client, run_id, test: base.TestSet, tmp) -> dict[str, ModelScores]:
    return {"constant": _scores(np.full(len(test.labels), 0.5), test)}


def parity(post, expected: pd.DataFrame) -> ParityOutcome:
    answer, ms = post("predict", {"rows": expected[["events", "purchases"]].to_dict("records")})
    served = np.array([r["score"] for r in answer["predictions"]])
    diff = np.abs(served - expected["predicted_score"].to_numpy())
    return ParityOutcome(int((diff > 1e-9).sum()), float(diff.max()), [ms], [])


SPEC = ModelSpec(
    name=NAME,
    params=lambda _: ToyParams(),
    feature_params=("valid_days", "test_days"),
    write_features=write_features,
    train=train,
    test_set=toy_test_set,
    score=score,
    baselines=baselines,
    plot_metric="auc",
    service="pipeline.serving.generic:PyfuncService",
    endpoint="predict",
    parity=parity,
    parity_rows=1000,
    gate_statistic=auc_gate_statistic,  # the gate's AUC on the rows' labels, as purchase_propensity's
)


@pytest.fixture
def toy_family():
    families.register(SPEC)
    yield SPEC
    families.unregister(NAME)


@pytest.mark.fast
def test_a_family_unknown_to_the_table_is_a_clear_error():
    with pytest.raises(families.UnknownFamily, match="unknown model 'nope'; models: next_item, purchase_propensity"):
        families.get("nope")


def test_a_toy_family_goes_through_every_step_from_one_spec(toy_family, tmp_path, capsys):
    import httpx

    from pipeline.core.tracking import CHAMPION, alias_version, mlflow_client
    from pipeline.lifecycle import steps
    from pipeline.lifecycle.gate import Policy
    from pipeline.serving.package import served

    policy = Policy(metric="auc", floors=("constant",), bootstrap_samples=200, require_smoke_test=True)
    with published_shop(
        tmp_path / "home",
        GenerateParams(seed=3, start_date="2026-11-01", days=6, events_per_day=2000, initial_users=300),
    ) as paths:
        assert NAME in families.names()
        built = steps.features(paths, load_params(), NAME)
        assert json.loads((Path(built["features"]) / "manifest.json").read_text())["model"] == NAME
        trained = steps.train(paths, load_params(), NAME, built)
        done = steps.after_training(paths, NAME, trained, policy, by="test")
        log = capsys.readouterr().out
        assert done["passed"] and done["champion"] == "1", log
        assert "PASS floor constant" in log and "parity: " in log and "answers identical" in log
        client = mlflow_client(paths)
        mv = alias_version(client, NAME, CHAMPION)
        assert mv.tags["smoke_test"] == "passed" and mv.tags["dataset_version"] == built["dataset_version"]
        with served(paths, mv.tags["bento_tag"]) as url:
            meta = httpx.post(f"{url}/metadata", json={}).json()
            answer = httpx.post(f"{url}/predict", json={"rows": [{"events": 4.0, "purchases": 1.0}]}).json()
        assert meta["model"] == NAME and meta["features_dataset_version"] == built["dataset_version"]
        assert answer == {"predictions": [{"score": pytest.approx(5 / 15)}]}


def test_gc_removes_what_nothing_refers_to_and_what_it_keeps_still_restores_and_serves(toy_family, tmp_path, capsys):
    """Three retrains on three dataset versions and a pinned run on an older one: gc's plan lists
    the versions nothing refers to (the dry run removes nothing); after gc the champion's and the
    challenger's versions restore from the DVC cache and their Bentos serve, the pinned run's
    version restores, and the unreferenced versions, an unreferenced Bento and an old day of the
    prediction log are gone."""
    import shutil
    from datetime import datetime, timedelta, timezone

    import bentoml
    import httpx

    from pipeline.cli import main as cli
    from pipeline.core.tracking import mlflow_client
    from pipeline.data.generate import generate_shop_data
    from pipeline.data.version import UnknownDatasetVersion, current_dataset_version, restore_dataset
    from pipeline.lifecycle import gc, steps
    from pipeline.lifecycle.gate import Policy
    from pipeline.serving.package import build_bento, served

    policy = Policy(metric="auc", floors=("constant",), bootstrap_samples=100, require_smoke_test=True)
    shop = GenerateParams(seed=4, start_date="2026-11-01", days=8, events_per_day=1500, initial_users=300)
    mp = pytest.MonkeyPatch()
    mp.setenv("SHOPML_HOME", str(tmp_path / "home"))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        from pipeline.core.settings import get_state_paths

        paths = get_state_paths()
        generate_shop_data(shop, paths.landing)
        assert cli(["run", "--start", "2026-11-01", "--days", "6"]) == 0
        versions = [current_dataset_version(paths).version]
        pinned_on = None
        outcomes = []
        for day in ("2026-11-07", "2026-11-08", None):
            built = steps.features(paths, load_params(), NAME)
            outcomes.append(steps.after_training(paths, NAME, steps.train(paths, load_params(), NAME, built), policy))
            if day:
                assert cli(["run", "--date", day]) == 0
                versions.append(current_dataset_version(paths).version)
        all_versions = sorted(p.stem for p in (paths.dataset_repo / "versions").glob("*.json") if p.stem != "current")
        assert len(all_versions) == 8  # a version a published day
        # A pinned run (an audit's) on a version no registered model uses.
        published = {v: json.loads((paths.dataset_repo / "versions" / f"{v}.json").read_text()) for v in all_versions}
        pinned_on = next(v for v, m in published.items() if m["published_days"] == ["2026-11-05"])  # days 1-5
        pinned = steps.train(paths, load_params(), NAME, steps.features(paths, load_params(), NAME, pinned_on))
        client = mlflow_client(paths)
        client.set_tag(pinned["run_id"], gc.PIN_TAG, "true")
        # A version deleted in MLflow (its Bento goes), a Bento model nothing packs, an old log day.
        mv1 = client.get_model_version(NAME, "1")
        extra = steps.after_training(
            paths, NAME, steps.train(paths, load_params(), NAME, steps.features(paths, load_params(), NAME)), policy
        )
        packaged = build_bento(paths, NAME, extra["version"])  # packaged whatever its gate said
        stray = packaged.bento_tag
        client.delete_model_version(NAME, extra["version"])
        with bentoml.models.create("shopml-stray:v1") as model:
            (Path(model.path) / "x").write_text("x")
        old_day = paths.home / "predictions" / NAME / "date=2026-01-01" / "hour=00"
        old_day.mkdir(parents=True)
        (old_day / "x.parquet").write_bytes(b"")

        assert cli(["gc", "--dry-run"]) == 0
        dry = capsys.readouterr().out
        assert f"would remove prediction log {old_day.parent}" in dry and f"keep Bento {mv1.tags['bento_tag']}" in dry
        assert old_day.exists()  # a dry run removes nothing

        later = datetime.now(timezone.utc) + timedelta(days=90)  # every file made today is old by then
        todo = gc.plan(paths, keep_days=30, now=later)
        referenced = {client.get_model_version(NAME, str(v)).tags["dataset_version"] for v in (1, 2, 3)}
        assert extra["version"] == "4"
        assert set(todo.keep_versions) == referenced | {pinned_on, versions[-1]}
        assert "pinned run" in todo.keep_versions[pinned_on]
        assert sorted(todo.remove_versions) == sorted(set(all_versions) - set(todo.keep_versions))
        registered = [client.get_model_version(NAME, str(v)) for v in (1, 2, 3)]
        assert stray in todo.remove_bentos and "shopml-stray:v1" in todo.remove_models
        assert all(mv.tags["bento_tag"] in todo.keep_bentos for mv in registered if mv.tags.get("bento_tag"))
        unused, total = todo.cache_objects
        assert 0 < unused < total
        gc.collect(paths, todo)

        assert not old_day.exists()
        with pytest.raises(bentoml.exceptions.NotFound):
            bentoml.bentos.get(stray)
        gone = todo.remove_versions[0]
        with pytest.raises(UnknownDatasetVersion):
            restore_dataset(paths, gone)
        for version in todo.keep_versions:
            shutil.rmtree(paths.dataset_repo / "snapshots" / version, ignore_errors=True)  # from the cache again
            assert (restore_dataset(paths, version) / "events").is_dir()
        for mv in registered:
            if not mv.tags.get("bento_tag"):
                continue  # a version its gate rejected was never packaged
            with served(paths, mv.tags["bento_tag"]) as url:
                answer = httpx.post(f"{url}/predict", json={"rows": [{"events": 4.0, "purchases": 1.0}]}, timeout=30)
                meta = httpx.post(f"{url}/metadata", json={}, timeout=30).json()
            assert answer.status_code == 200, answer.text
            # Each Bento serves its own version, though several were built in this process (a
            # service module left from an earlier build declared that build's model).
            assert (meta["version"], meta["run_id"]) == (str(mv.version), mv.run_id), meta
    finally:
        mp.undo()
