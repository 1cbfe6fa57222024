"""The purchase-propensity model as an MLflow pyfunc: feature rows in, calibrated probabilities out.

Input columns: ``item_id``, ``category``, ``brand`` (ids unknown to the model are allowed) and the
dense features of ``PROPENSITY_DENSE`` (its ``features`` module). Output: a DataFrame with ``probability``.
"""

from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

ID_COLUMNS = {"item_idx": "item_id", "category_idx": "category", "brand_idx": "brand"}


def id_index(vocabs: dict[str, list[str]]) -> dict[str, pd.Index]:
    """Each id vocabulary as a pandas Index (``Vocab``'s encoding: position + 1, 0 for unknown or missing)."""
    return {k: pd.Index(list(values), dtype=object) for k, values in vocabs.items()}


def encode_ids(frame: pd.DataFrame, index: dict[str, pd.Index]) -> np.ndarray:
    """The id columns of raw feature rows as [rows, len(PROPENSITY_IDS)] int64 indices (vectorised:
    one hash lookup per column, not a Python call per value)."""
    from pipeline.families.purchase_propensity.features import PROPENSITY_IDS

    return np.stack(
        [index[k].get_indexer(frame[ID_COLUMNS[k]].astype(object)) + 1 for k in PROPENSITY_IDS], axis=1
    ).astype(np.int64)


class PropensityPyfunc(mlflow.pyfunc.PythonModel):
    @classmethod
    def from_parts(cls, model, vocabs) -> PropensityPyfunc:
        wrapper = cls()
        wrapper.model = model
        wrapper.index = id_index({k: vocab.values for k, vocab in vocabs.items()})
        return wrapper

    def load_context(self, context) -> None:
        from models.propensity import DCNConfig, DCNv2

        saved = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        args = dict(saved["model_args"])
        args["id_cardinalities"] = tuple(args["id_cardinalities"])
        args["hidden"] = tuple(args["hidden"])
        self.model = DCNv2(DCNConfig(**args))
        self.model.load_state_dict(saved["model"])
        self.model.eval()
        with open(context.artifacts["vocabs"]) as fh:
            self.index = id_index(json.load(fh))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from models.train import model_device
        from pipeline.families.purchase_propensity.features import PROPENSITY_DENSE

        ids = encode_ids(model_input, self.index)
        dense = model_input[list(PROPENSITY_DENSE)].to_numpy(dtype=np.float32, copy=True)  # writable, for torch
        device = model_device(self.model)
        with torch.no_grad():
            probs = self.model.predict_proba(torch.from_numpy(ids).to(device), torch.from_numpy(dense).to(device))
        return pd.DataFrame({"probability": probs.cpu().numpy().astype(np.float64)})


def logreg_predict(saved: dict, dense: np.ndarray) -> np.ndarray:
    """The run's logistic-regression floor (``baseline/logreg.joblib``'s dict) on dense feature rows."""
    from pipeline.families.purchase_propensity.train import logreg_features

    return saved["model"].predict_proba(logreg_features(dense, saved["mean"], saved["std"]))[:, 1]


def lightgbm_predict(booster, index: dict[str, pd.Index], frame: pd.DataFrame, dense: np.ndarray) -> np.ndarray:
    """The run's LightGBM floor on raw feature rows (ids encoded with its vocabularies)."""
    from pipeline.families.purchase_propensity.train import lightgbm_features

    return np.clip(booster.predict(lightgbm_features(encode_ids(frame, index), dense)), 0.0, 1.0)


class FloorPyfunc(mlflow.pyfunc.PythonModel):
    """A propensity floor (the logistic regression or LightGBM the run trained beside DCN-v2) as the
    family's pyfunc, same input and output, so the strongest floor serves when no learned model
    beats it (``pipeline.lifecycle.floors``). Its artifacts are the run's own baseline files."""

    def load_context(self, context) -> None:
        if "logreg" in context.artifacts:
            import joblib

            self.logreg = joblib.load(context.artifacts["logreg"])
        else:
            import lightgbm as lgb

            with open(context.artifacts["lightgbm"]) as fh:
                saved = json.load(fh)
            self.logreg, self.booster, self.index = (
                None,
                lgb.Booster(model_str=saved["booster"]),
                id_index(saved["vocabs"]),
            )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from pipeline.families.purchase_propensity.features import PROPENSITY_DENSE

        dense = model_input[list(PROPENSITY_DENSE)].to_numpy(dtype=np.float32)
        probs = (
            logreg_predict(self.logreg, dense)
            if self.logreg is not None
            else lightgbm_predict(self.booster, self.index, model_input, dense)
        )
        return pd.DataFrame({"probability": np.asarray(probs, dtype=np.float64)})
