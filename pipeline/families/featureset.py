"""The features stage: a family's training, validation and test inputs, built once per dataset version.

Training reads a feature set instead of the raw events, so the step that needs a GPU (a Celery
worker on the ``gpu`` queue, a Kubernetes pod) only loads arrays and tables, and the rows the model
is trained and tested on are files that can be inspected after the fact.

A feature set is a folder ``$SHOPML_HOME/features/<model>/<key>/``: ``manifest.json`` (the model,
the dataset version it was built from, the split's cut points, the parameters that shaped it, row
counts) and the family's own files (``ModelSpec.write_features``).

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
from pathlib import Path

from pipeline.core.errors import BadInput
from pipeline.core.settings import StatePaths
from pipeline.data.version import open_dataset, resolve_dataset_version
from pipeline.families import get as get_family

# Bump when the files' layout or the feature code's output changes, so old sets are not reused.
FORMAT = 5  # 5: events at the same instant ordered by item id (user_steps)


class FeatureSetError(BadInput):
    """A feature set folder is missing, incomplete, or was built for another model."""


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


def feature_params(model: str, params) -> dict:
    """The training parameters of ``model`` that shape its features."""
    return {name: getattr(params, name) for name in get_family(model).feature_params}


def feature_key(model: str, dataset_version: str, params) -> str:
    blob = json.dumps(
        {"model": model, "dataset": dataset_version, "params": feature_params(model, params), "format": FORMAT},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_features(paths: StatePaths, model: str, params, dataset_version: str | None = None) -> FeatureSet:
    """Build (or find) the feature set of ``model`` on dataset version ``dataset_version`` (default:
    the current one).

    Raises:
        FileNotFoundError: no dataset version has been published yet.
        UnknownDatasetVersion: ``dataset_version`` is not published here, or cannot be restored.
        ValueError: the data spans too few days for the split, or a period has no usable rows.
    """
    spec = get_family(model)
    ref = resolve_dataset_version(paths, dataset_version)
    folder = paths.home / "features" / model / feature_key(model, ref.version, params)
    if (folder / "manifest.json").exists():
        return FeatureSet(model, folder, ref.version, ref.path, reused=True)

    dataset = open_dataset(paths, ref.version)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        counts, split = spec.write_features(tmp, dataset, params)
        manifest = {
            "model": model,
            "format": FORMAT,
            "dataset_version": ref.version,
            "dataset_path": ref.path,
            "split": split.to_dict(),
            "params": feature_params(model, params),
            "counts": counts,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "manifest.json").exists():  # not a concurrent builder that won
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FeatureSet(model, folder, ref.version, ref.path, reused=False)


def read_manifest(folder: Path, model: str) -> dict:
    manifest_file = Path(folder) / "manifest.json"
    if not manifest_file.exists():
        raise FeatureSetError(f"{folder} is not a feature set (no manifest.json); run the features stage first")
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("model") != model:
        raise FeatureSetError(f"{folder} holds features of {manifest.get('model')!r}, not {model!r}")
    if manifest.get("format") != FORMAT:
        raise FeatureSetError(
            f"{folder} has feature format {manifest.get('format')}, this code reads {FORMAT}; build the features again"
        )
    return manifest


def features_for(
    paths: StatePaths, model: str, params, folder: Path | None = None, dataset_version: str | None = None
) -> FeatureSet:
    """The feature set to train on: ``folder`` (built by the features stage, e.g. an earlier Airflow
    task) after checking it matches ``params``, or else the feature set of ``dataset_version``
    (default: the current one), built now if no earlier stage built it.

    Raises:
        FeatureSetError: ``folder`` is not a feature set of this model, was built with other
            feature parameters than ``params``, or from another dataset version than the one asked.
    """
    if folder is None:
        return build_features(paths, model, params, dataset_version)
    manifest = read_manifest(folder, model)
    wanted = feature_params(model, params)
    if manifest["params"] != wanted:
        built = manifest["params"]
        differ = sorted(k for k in wanted if built.get(k) != wanted[k])
        raise FeatureSetError(
            f"{folder} was built with {', '.join(f'{k}={built.get(k)}' for k in differ)}"
            f"; training asks for {', '.join(f'{k}={wanted[k]}' for k in differ)}"
        )
    if dataset_version and not manifest["dataset_version"].startswith(dataset_version):
        raise FeatureSetError(
            f"{folder} was built from dataset version {manifest['dataset_version']}, not {dataset_version}"
        )
    return FeatureSet(model, Path(folder), manifest["dataset_version"], manifest["dataset_path"], reused=True)
