"""A fraud scorer as an MLflow pyfunc: order feature rows in, a score and a band out.

One class serves all three scorers (the DCN-v2 network, LightGBM, the rules), so the strongest floor
serves through the same interface when no learned model beats it (``pipeline.lifecycle.floors``).
Its ``scorer`` artifact is a JSON file: ``{"kind": "network" | "lightgbm" | "rules", "bands": {...},
...}`` with the kind's own state (the booster's text, the rules' threshold); the network's weights are
a second artifact, ``weights``.

Input columns: ``orders.DENSE``. Output: ``score`` (higher is riskier; a calibrated probability for
the network and LightGBM, points for the rules) and ``band`` (approve, review, block, from the
thresholds chosen on validation). ``reasons`` gives each row's top feature contributions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import torch
from mlflow.pyfunc import PythonModel
from scipy.special import expit

KINDS = ("network", "lightgbm", "rules")
# What a scorer file without a ``features`` list was trained on: ``orders.DENSE`` before the
# chargeback counts were appended to it.
LEGACY_FEATURES = 40


class FraudPyfunc(PythonModel):
    currency: str = "EUR"  # the shop's currency, in which the amounts were learnt
    # Where the bands were chosen: the validation orders' figures under them, and the cost policy.
    figures: dict | None = None
    # The features it was trained on, in its input order: ``orders.DENSE`` when it was trained.
    features: tuple[str, ...] = ()

    @classmethod
    def from_parts(cls, kind: str, scorer, bands, currency: str = "EUR", figures: dict | None = None) -> FraudPyfunc:
        from pipeline.families.fraud.orders import DENSE

        wrapper = cls()
        wrapper.kind, wrapper.scorer, wrapper.bands, wrapper.currency = kind, scorer, bands, currency
        wrapper.figures, wrapper.features = figures, DENSE
        wrapper._setup()
        return wrapper

    @classmethod
    def from_file(cls, scorer: str | Path, weights: str | Path | None = None) -> FraudPyfunc:
        """A scorer from its artifacts (``scorer_file``'s JSON, the network's weights)."""
        wrapper = cls()
        wrapper._load(Path(scorer), weights)
        return wrapper

    def load_context(self, context) -> None:
        self._load(Path(context.artifacts["scorer"]), context.artifacts.get("weights"))

    def _load(self, scorer: Path, weights) -> None:
        from pipeline.families.fraud.decisions import Bands
        from pipeline.families.fraud.orders import DENSE
        from pipeline.families.fraud.scoring import LightGBMScorer, RulesScorer

        saved = json.loads(scorer.read_text())
        self.kind, self.bands = saved["kind"], Bands(**saved["bands"])
        self.features = tuple(saved.get("features", DENSE[:LEGACY_FEATURES]))
        unknown = [f for f in self.features if f not in DENSE]
        if unknown:
            raise ValueError(f"{scorer}: features {unknown} are not computed by this version; it computes {DENSE}")
        self.currency, self.figures = saved.get("currency", "EUR"), saved.get("figures")
        if self.kind == "network":
            if weights is None:
                raise ValueError(f"{scorer}: a network scorer needs its weights artifact")
            self.scorer = load_network(weights)
        elif self.kind == "lightgbm":
            # The setting chosen on validation is kept with the figures (``scorer_file``).
            self.scorer = LightGBMScorer(saved["booster"], (self.figures or {}).get("settings"))
        elif self.kind == "rules":
            self.scorer = RulesScorer(**saved["rules"])
        else:
            raise ValueError(f"{scorer}: unknown scorer kind {self.kind!r}; kinds: {KINDS}")
        self._setup()

    def _setup(self) -> None:
        from pipeline.families.fraud.orders import DENSE

        # The columns of a ``DENSE`` matrix this scorer reads, in its own order.
        self._columns = [DENSE.index(f) for f in self.features]
        self._all = self._columns == list(range(len(DENSE)))
        self._booster, self._sigmoid = None, None
        if self.kind == "lightgbm":
            import lightgbm as lgb

            self._booster = lgb.Booster(model_str=self.scorer.booster_text)  # parsed once, not per call
            self._sigmoid = binary_sigmoid(self.scorer.booster_text)

    def scores(self, rows: pl.DataFrame | pd.DataFrame) -> np.ndarray:
        """The score of each feature row (``orders.DENSE`` columns)."""
        from pipeline.families.fraud.orders import DENSE

        frame = rows if isinstance(rows, pl.DataFrame) else pl.from_pandas(rows)
        return self.matrix_scores(frame.select(DENSE).to_numpy().astype(np.float64))

    def matrix_scores(self, x: np.ndarray) -> np.ndarray:
        """The score of each row of a ``[rows, len(DENSE)]`` feature matrix. The learned scorers read
        their own features' columns as float32, as they were trained; the rules compare the exact
        values."""
        if self.kind == "rules":
            return self.scorer.score(_frame(x))
        x = self._own(x)
        if self.kind == "network":
            with torch.no_grad():
                dense = torch.from_numpy(x)
                ids = torch.zeros(x.shape[0], 0, dtype=torch.long)
                return self.scorer.predict_proba(ids, dense).numpy().astype(float)
        assert self._booster is not None  # kind lightgbm
        return np.asarray(self._booster.predict(x, **_threads(x)), dtype=float)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        scores = self.scores(model_input)
        return pd.DataFrame({"score": scores, "band": self.bands.decide(scores)})

    def score_matrix(self, x: np.ndarray, k: int = 3) -> tuple[np.ndarray, list[list[dict]]]:
        """Scores and reasons of a feature matrix (what ``/score`` answers). LightGBM's come from one
        booster call: its TreeSHAP contributions and their base value add up to the raw score, so
        the probability is the objective's sigmoid of their sum (``make bench-fraud-serve``: one
        traversal of the trees a request instead of two)."""
        if self._booster is not None and self._sigmoid is not None:
            own = self._own(x)
            contributions = self._tree_shap(own)
            scores = expit(self._sigmoid * contributions.sum(axis=1))
            return scores, self._top(contributions[:, : len(self.features)], own, k)
        return self.matrix_scores(x), self.matrix_reasons(x, k)

    def matrix_reasons(self, x: np.ndarray, k: int = 3) -> list[list[dict]]:
        """Each row's ``k`` features (or rules) that raised its score most: ``{"feature", "value",
        "contribution"}``, contribution in the scorer's own units (the logit for the network and
        LightGBM, points for the rules); features that lowered the score are not reasons."""
        if self.kind == "rules":
            hits = self.scorer.hits(_frame(x)).to_numpy()
            points, names = self.scorer.points, self.scorer.rules
            # Its hits, most points first (ties in the rules' order).
            return [
                [
                    {"feature": names[j], "value": 1.0, "contribution": float(points[j])}
                    for j in sorted(np.flatnonzero(h), key=lambda j: -points[j])[:k]
                ]
                for h in hits
            ]
        x = self._own(x)
        if self._booster is not None:
            contributions = self._tree_shap(x)[:, : len(self.features)]
        else:
            contributions = network_contributions(self.scorer, x)
        return self._top(contributions, x, k)

    def _tree_shap(self, own: np.ndarray) -> np.ndarray:
        """LightGBM's TreeSHAP contributions of this scorer's own columns (``_own``), one column per
        feature and a last one for the base value."""
        assert self._booster is not None  # kind lightgbm
        return np.asarray(self._booster.predict(own, pred_contrib=True, **_threads(own)))

    def _top(self, contributions: np.ndarray, x: np.ndarray, k: int) -> list[list[dict]]:
        """Each row's ``k`` largest positive contributions, with the feature's name and value."""
        out = []
        for row, values in zip(contributions, x, strict=True):
            top = [j for j in np.argsort(-row, kind="stable")[:k] if row[j] > 0]  # ties in feature order
            out.append(
                [{"feature": self.features[j], "value": float(values[j]), "contribution": float(row[j])} for j in top]
            )
        return out

    def _own(self, x: np.ndarray) -> np.ndarray:
        """This scorer's columns of a ``DENSE`` matrix, as the float32 it was trained on."""
        from pipeline.families.fraud.scoring import as_model_input

        if not self._all:
            x = x[:, self._columns]
        return as_model_input(x)


# Below this many rows LightGBM scores on one thread. Its OpenMP team keeps its other threads
# spinning for a while after each call: on the 2-core machine, the fraud service scoring one order
# a request with the default team used 5.3 ms of server CPU a request at 8 clients, against 2.0
# with one thread (2026-12-04, /tmp profiling of make bench-fraud-serve's shop), for no gain on a
# handful of rows.
SMALL_BATCH = 1024


def binary_sigmoid(booster_text: str) -> float | None:
    """The sigmoid parameter of a binary-objective booster (its model text's ``objective=binary
    sigmoid:S`` line): its probability is ``expit(S * raw score)``. None for another objective."""
    match = re.search(r"^objective=binary sigmoid:(\S+)$", booster_text, re.MULTILINE)
    return float(match.group(1)) if match else None


def _threads(x: np.ndarray) -> dict:
    return {"num_threads": 1} if x.shape[0] < SMALL_BATCH else {}


def _frame(x: np.ndarray) -> pl.DataFrame:
    from pipeline.families.fraud.orders import DENSE

    return pl.DataFrame(x.astype(np.float64), schema=list(DENSE), orient="row")


def network_contributions(model, x: np.ndarray) -> np.ndarray:
    """Gradient x input of the logit, in the network's standardised input space, against the
    training mean (zero there): a first-order share of each feature in how far the order's logit
    lies from the average order's. Exact for the wide (linear) part, approximate for the rest."""
    dense = torch.from_numpy(x)
    z = ((model.transform(dense) - model.dense_mean) / model.dense_std).detach().requires_grad_(True)
    # The forward pass from the standardised inputs (DCNv2.forward standardises first): undo it.
    raw = torch.sign(z * model.dense_std + model.dense_mean) * torch.expm1(
        (z * model.dense_std + model.dense_mean).abs()
    )
    logits = model(torch.zeros(x.shape[0], 0, dtype=torch.long), raw)
    (grad,) = torch.autograd.grad(logits.sum(), z)
    return (grad * z).detach().numpy()


def save_network(model, path: Path) -> None:
    torch.save({"model": model.state_dict(), "model_args": model.config.to_dict()}, path)


def load_network(path: str | Path):
    from models.propensity import DCNConfig, DCNv2

    # Our own checkpoint: tensors and a dict of plain values, so the safe loader suffices.
    saved = torch.load(path, map_location="cpu", weights_only=True)
    args = dict(saved["model_args"])
    args["id_cardinalities"] = tuple(args["id_cardinalities"])
    args["hidden"] = tuple(args["hidden"])
    model = DCNv2(DCNConfig(**args))
    model.load_state_dict(saved["model"])
    model.eval()
    return model


def scorer_file(pyfunc: FraudPyfunc, path: Path) -> Path:
    """The ``scorer`` artifact of this pyfunc (its network's weights go beside, ``save_network``)."""
    kind, scorer = pyfunc.kind, pyfunc.scorer
    state: dict = {
        "kind": kind,
        "bands": pyfunc.bands.to_dict(),
        "currency": pyfunc.currency,
        "figures": pyfunc.figures,
        "features": list(pyfunc.features),
    }
    if kind == "lightgbm":
        state["booster"] = scorer.booster_text
        if scorer.settings is not None:  # the setting chosen on validation, once: with the figures
            state["figures"] = {**(pyfunc.figures or {}), "settings": scorer.settings}
    elif kind == "rules":
        state["rules"] = scorer.to_dict()
    path.write_text(json.dumps(state))
    return path
