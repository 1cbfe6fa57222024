"""Distribution statistics for monitoring: drift (PSI, Jensen-Shannon) and skew.

PSI and Jensen-Shannon are computed here (scipy's ``jensenshannon``, a few lines of numpy for PSI)
rather than with Evidently: it would add a second, heavier dependency tree (its own pins of pandas,
numpy and pydantic) for two formulas, and its HTML reports are not needed in the task log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` over the reference's
    quantile bins (ties merged), with both shares floored at 1e-4."""
    reference, current = np.asarray(reference, float), np.asarray(current, float)
    reference, current = reference[np.isfinite(reference)], current[np.isfinite(current)]
    if reference.size == 0 or current.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=edges.size + 1) / reference.size
    cur = np.bincount(np.searchsorted(edges, current, side="right"), minlength=edges.size + 1) / current.size
    ref, cur = np.maximum(ref, 1e-4), np.maximum(cur, 1e-4)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def js_divergence(reference: pl.Series, current: pl.Series) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two categorical distributions."""
    from scipy.spatial.distance import jensenshannon

    ref = reference.value_counts().rename({"count": "ref"})
    cur = current.value_counts().rename({"count": "cur"})
    name = reference.name
    both = ref.join(cur, on=name, how="full", coalesce=True).fill_null(0)
    if both.height == 0 or both["ref"].sum() == 0 or both["cur"].sum() == 0:
        return float("nan")
    return float(jensenshannon(both["ref"].to_numpy().astype(float), both["cur"].to_numpy().astype(float), base=2) ** 2)


@dataclass
class FeatureDrift:
    feature: str
    kind: str  # numeric (PSI) or categorical (JS)
    statistic: str
    value: float
    threshold: float
    reference: str  # a short summary of each side, for the report
    current: str

    @property
    def drifted(self) -> bool:
        return bool(math.isfinite(self.value) and self.value > self.threshold)


def numeric_drift(name: str, ref: np.ndarray, cur: np.ndarray, threshold: float) -> FeatureDrift:
    def summary(x):
        x = np.asarray(x, float)
        return (
            "empty"
            if x.size == 0
            else "p10 {:.3g}, p50 {:.3g}, p90 {:.3g} (n {})".format(*np.quantile(x, [0.1, 0.5, 0.9]), x.size)
        )

    return FeatureDrift(name, "numeric", "PSI", psi(ref, cur), threshold, summary(ref), summary(cur))


def categorical_drift(name: str, ref: pl.Series, cur: pl.Series, threshold: float) -> FeatureDrift:
    def summary(s: pl.Series) -> str:
        top = s.value_counts(sort=True).head(3)
        n = max(s.len(), 1)
        return ", ".join(f"{v} {c / n:.0%}" for v, c in top.iter_rows()) + f" (n {s.len()}, {s.n_unique()} values)"

    return FeatureDrift(
        name,
        "categorical",
        "JS",
        js_divergence(ref.rename(name), cur.rename(name)),
        threshold,
        summary(ref),
        summary(cur),
    )


@dataclass
class FeatureSkew:
    feature: str
    users: int
    skewed_users: int
    example: str = ""

    @property
    def share(self) -> float:
        return self.skewed_users / self.users if self.users else 0.0
