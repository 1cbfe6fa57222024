"""The features stage: a model's training, validation and test inputs, built once per dataset version.

Training reads a feature set instead of the raw events, so the step that needs a GPU (a Celery
worker on the ``gpu`` queue, a Kubernetes pod) only loads arrays and tables, and the rows the model
is trained and tested on are files that can be inspected after the fact.

A feature set is a folder ``$SHOPML_HOME/features/<model>/<key>/``:

- ``manifest.json``: the model, the dataset version it was built from, the split's cut points, the
  parameters that shaped it and row counts;
- next_item: ``vocab.json`` (item ids, index 2 onwards), ``arrays.npz`` (training windows, the
  validation and test histories and targets, the interactions the baselines count);
- purchase_propensity: ``train.parquet``, ``valid.parquet``, ``test.parquet`` and ``vocabs.json``.

``key`` hashes the dataset version, the feature parameters and ``FORMAT``: the same data and
parameters always give the same folder, which a rerun of the stage reuses instead of rebuilding.
A set is written to a temporary sibling folder and renamed into place, so a killed build leaves no
half-written set behind, and two builders of the same set cannot mix their files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.features import (
    ItemVocab,
    NextItemExamples,
    TimeSplit,
    Vocab,
    latest_catalog,
    load_events,
    next_item_examples,
    propensity_rows,
    split_by_time,
    training_windows,
    user_sequences,
)
from pipeline.params import TrainPropensityParams, TrainRecommenderParams
from pipeline.settings import StatePaths
from pipeline.version import current_dataset_version

# Bump when the files' layout or the feature code's output changes, so old sets are not reused.
FORMAT = 1
# The parameters that shape each model's features (the others only shape the model or the loop).
FEATURE_PARAMS = {
    "next_item": ("valid_days", "test_days", "max_len", "recent_days"),
    "purchase_propensity": ("valid_days", "test_days", "horizon_days", "lookback_days", "cutoff_stride_days"),
}


class FeatureSetError(ValueError):
    """A feature set folder is missing, incomplete, or was built for another model."""


@dataclass
class RecommenderFeatures:
    """SASRec's inputs and what the baselines are built from."""

    split: TimeSplit
    vocab: ItemVocab
    windows: np.ndarray              # [n, max_len + 1] training windows
    valid: NextItemExamples
    test: NextItemExamples
    train_items: np.ndarray          # every training-period interaction (popularity, cold start)
    recent_items: np.ndarray         # the last ``recent_days`` of training (recent popularity)
    test_sequences: list[np.ndarray]  # each user's history up to the test period (co-occurrence)
    counts: dict[str, int]


@dataclass
class PropensityFeatures:
    """The propensity rows of each period and the vocabularies their ids are encoded with."""

    split: TimeSplit
    train_rows: pl.DataFrame
    valid_rows: pl.DataFrame
    test_rows: pl.DataFrame
    vocabs: dict[str, Vocab]
    counts: dict[str, int]


@dataclass(frozen=True)
class FeatureSet:
    """A built feature set: where it is and what it was built from."""

    model: str
    path: Path
    dataset_version: str
    dataset_path: str
    reused: bool

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def feature_params(model: str, params: TrainRecommenderParams | TrainPropensityParams) -> dict:
    if model not in FEATURE_PARAMS:
        raise FeatureSetError(f"unknown model {model!r}; expected one of {sorted(FEATURE_PARAMS)}")
    return {name: getattr(params, name) for name in FEATURE_PARAMS[model]}


def feature_key(model: str, dataset_version: str, params) -> str:
    blob = json.dumps({"model": model, "dataset": dataset_version, "params": feature_params(model, params),
                       "format": FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_features(paths: StatePaths, model: str, params) -> FeatureSet:
    """Build (or find) the feature set of ``model`` on the current dataset version.

    Raises:
        FileNotFoundError: no dataset version has been published yet.
        ValueError: the data spans too few days for the split, or a period has no usable rows.
    """
    version = current_dataset_version(paths)
    if version is None:
        raise FileNotFoundError(f"no dataset version under {paths.dataset_repo}; run the ingest DAG first")
    folder = paths.home / "features" / model / feature_key(model, version.version, params)
    if (folder / "manifest.json").exists():
        return FeatureSet(model, folder, version.version, version.path, reused=True)

    events = load_events(paths.canonical)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        if model == "next_item":
            counts, split = _write_recommender(tmp, events, params)
        else:
            counts, split = _write_propensity(tmp, events, latest_catalog(paths.canonical), params)
        manifest = {"model": model, "format": FORMAT, "dataset_version": version.version,
                    "dataset_path": version.path, "split": split.to_dict(),
                    "params": feature_params(model, params), "counts": counts}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "manifest.json").exists():   # not a concurrent builder that won
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FeatureSet(model, folder, version.version, version.path, reused=False)


def read_manifest(folder: Path, model: str) -> dict:
    manifest_file = Path(folder) / "manifest.json"
    if not manifest_file.exists():
        raise FeatureSetError(f"{folder} is not a feature set (no manifest.json); run the features stage first")
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("model") != model:
        raise FeatureSetError(f"{folder} holds features of {manifest.get('model')!r}, not {model!r}")
    if manifest.get("format") != FORMAT:
        raise FeatureSetError(f"{folder} has feature format {manifest.get('format')}, this code reads {FORMAT}; "
                              "build the features again")
    return manifest


def _write_recommender(out: Path, events: pl.DataFrame, params: TrainRecommenderParams):
    split = split_by_time(events, params.valid_days, params.test_days)
    vocab = ItemVocab.from_events(events.filter(pl.col("event_time") < split.train_end))
    sequences = user_sequences(events, vocab, split.train_end)
    # The test history includes validation-period interactions, as it will when serving.
    test_sequences = user_sequences(events, vocab, split.valid_end)
    windows = training_windows(sequences, params.max_len)
    valid, valid_unknown = next_item_examples(events, vocab, sequences, split.train_end, split.valid_end,
                                              params.max_len)
    test, test_unknown = next_item_examples(events, vocab, test_sequences, split.valid_end, split.end,
                                            params.max_len)
    if windows.shape[0] == 0 or len(valid.targets) == 0:
        raise ValueError("no training sequences or no validation examples in the split")
    recent = events.filter((pl.col("event_time") >= split.train_end - timedelta(days=params.recent_days))
                           & (pl.col("event_time") < split.train_end))
    test_seqs = list(test_sequences.values())
    (out / "vocab.json").write_text(json.dumps(list(vocab.ids)))
    np.savez(
        out / "arrays.npz", windows=windows,
        valid_histories=valid.histories, valid_targets=valid.targets, valid_users=np.asarray(valid.users, dtype=str),
        test_histories=test.histories, test_targets=test.targets, test_users=np.asarray(test.users, dtype=str),
        train_items=np.concatenate(list(sequences.values())), recent_items=vocab.encode(recent["item_id"]),
        test_sequences=np.concatenate(test_seqs) if test_seqs else np.zeros(0, dtype=np.int64),
        test_sequence_ends=np.cumsum([len(s) for s in test_seqs], dtype=np.int64),
    )
    counts = {"train_windows": int(windows.shape[0]), "valid_examples": len(valid.targets),
              "test_examples": len(test.targets), "items": vocab.size - 2,
              "valid_unknown_targets": valid_unknown, "test_unknown_targets": test_unknown}
    return counts, split


def load_recommender_features(folder: Path) -> RecommenderFeatures:
    manifest = read_manifest(folder, "next_item")
    vocab = ItemVocab(tuple(json.loads((Path(folder) / "vocab.json").read_text())))
    with np.load(Path(folder) / "arrays.npz") as a:
        arrays = {k: a[k] for k in a.files}
    ends = arrays["test_sequence_ends"]
    test_sequences = np.split(arrays["test_sequences"], ends[:-1]) if ends.size else []
    return RecommenderFeatures(
        split=TimeSplit.from_dict(manifest["split"]), vocab=vocab, windows=arrays["windows"],
        valid=NextItemExamples(arrays["valid_users"].tolist(), arrays["valid_histories"], arrays["valid_targets"]),
        test=NextItemExamples(arrays["test_users"].tolist(), arrays["test_histories"], arrays["test_targets"]),
        train_items=arrays["train_items"], recent_items=arrays["recent_items"], test_sequences=test_sequences,
        counts=manifest["counts"])


def propensity_cutoffs(split: TimeSplit, params: TrainPropensityParams) -> list:
    """Training cutoffs: every ``cutoff_stride_days`` from ``lookback_days`` into the data."""
    cutoffs, cutoff = [], split.start + timedelta(days=params.lookback_days)
    while cutoff < split.train_end:
        cutoffs.append(cutoff)
        cutoff += timedelta(days=params.cutoff_stride_days)
    if not cutoffs:
        raise ValueError(f"the training period is shorter than the {params.lookback_days}-day lookback")
    return cutoffs


def propensity_features(events: pl.DataFrame, catalog: pl.DataFrame,
                        params: TrainPropensityParams) -> PropensityFeatures:
    """Training rows from cutoffs every ``cutoff_stride_days`` of the training period (features
    before each cutoff, label within ``horizon_days`` after it, never past ``train_end``);
    validation rows from ``train_end`` (early stopping and calibration); test rows from
    ``valid_end``."""
    split = split_by_time(events, params.valid_days, params.test_days)
    horizon, lookback = timedelta(days=params.horizon_days), timedelta(days=params.lookback_days)
    cutoffs = propensity_cutoffs(split, params)
    train_rows = pl.concat([propensity_rows(events, catalog, c, min(horizon, split.train_end - c), lookback)
                            for c in cutoffs])
    valid_rows = propensity_rows(events, catalog, split.train_end, horizon, lookback)
    test_rows = propensity_rows(events, catalog, split.valid_end, horizon, lookback)
    for name, rows in (("training", train_rows), ("validation", valid_rows), ("test", test_rows)):
        if rows.height == 0 or rows["label"].n_unique() < 2:
            raise ValueError(f"the {name} rows have a single label; AUC is undefined (more days of data needed)")
    past = events.filter(pl.col("event_time") < split.train_end)
    vocabs = {"item_idx": Vocab.of(past["item_id"]), "category_idx": Vocab.of(catalog["category"]),
              "brand_idx": Vocab.of(catalog["brand"])}
    counts = {"cutoffs": len(cutoffs), "train_rows": train_rows.height, "valid_rows": valid_rows.height,
              "test_rows": test_rows.height}
    return PropensityFeatures(split, train_rows, valid_rows, test_rows, vocabs, counts)


def _write_propensity(out: Path, events: pl.DataFrame, catalog: pl.DataFrame, params: TrainPropensityParams):
    f = propensity_features(events, catalog, params)
    for name, rows in (("train", f.train_rows), ("valid", f.valid_rows), ("test", f.test_rows)):
        rows.write_parquet(out / f"{name}.parquet")
    (out / "vocabs.json").write_text(json.dumps({k: list(v.values) for k, v in f.vocabs.items()}))
    return f.counts, f.split


def load_propensity_features(folder: Path) -> PropensityFeatures:
    manifest = read_manifest(folder, "purchase_propensity")
    folder = Path(folder)
    vocabs = {k: Vocab(tuple(v)) for k, v in json.loads((folder / "vocabs.json").read_text()).items()}
    return PropensityFeatures(TimeSplit.from_dict(manifest["split"]), pl.read_parquet(folder / "train.parquet"),
                              pl.read_parquet(folder / "valid.parquet"), pl.read_parquet(folder / "test.parquet"),
                              vocabs, manifest["counts"])
