"""Decisions in bands: approve, review, block; their costs; the thresholds that minimise the cost
under the review team's daily budget; recall at that budget.

Costs per order (``policy.yaml`` ``fraud_costs``), in the shop's currency:

* a **fraud approved** costs its amount plus ``chargeback_fee``;
* a **review** costs ``review`` (an analyst's time); the analyst catches the fraud, and lets a
  genuine order through;
* a **genuine order blocked** costs ``blocked_genuine_share`` of its amount (the margin and the
  customer's goodwill lost);
* a fraud blocked and a genuine order approved cost nothing.

The team reviews at most ``review_budget_per_day`` orders a day. Thresholds (``review_at`` <=
``block_at`` on the score) are searched on validation rows: every pair of score quantiles on a grid,
keeping the pairs whose reviews per day stay within the budget, the cheapest of them chosen. The
grid (``candidate_cuts``) is dense where the decisions are: frauds are a percent or two of orders,
so its quantiles step geometrically towards the top score (the top half, quarter, eighth, ... down
to a single order), not evenly over the upper half, whose step of 1/120 of the rows could not put a
threshold inside the riskiest 1%.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import polars as pl
from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from pipeline.core.config import STRICT, section

POLICY_SECTION = "fraud_costs"
APPROVE, REVIEW, BLOCK = "approve", "review", "block"


@pydantic_dataclass(frozen=True, config=STRICT)
class CostPolicy:
    chargeback_fee: float = Field(default=15.0, ge=0)  # the payment provider's fee on a chargeback
    review: float = Field(default=3.0, ge=0)  # one manual review
    blocked_genuine_share: float = Field(default=0.3, ge=0, le=1)  # of a genuine order's amount, when blocked
    review_budget_per_day: int = Field(default=50, ge=0)  # orders the review team can handle a day
    grid: int = Field(default=200, ge=5)  # score quantiles searched per threshold (``candidate_cuts``)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")  # the shop's, of every amount (ISO 4217)

    def to_dict(self) -> dict:
        return asdict(self)


def load_cost_policy(path=None) -> CostPolicy:
    from pipeline.core.policyfile import PolicyError, read_policy_file

    file, data = read_policy_file(path)
    return section(CostPolicy, data.get(POLICY_SECTION) or {}, f"{file}: {POLICY_SECTION}", PolicyError)


@pydantic_dataclass(frozen=True, config=STRICT)
class Bands:
    """Scores below ``review_at`` are approved, from ``review_at`` reviewed, from ``block_at`` blocked."""

    review_at: float
    block_at: float

    def to_dict(self) -> dict:
        return asdict(self)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return np.where(scores >= self.block_at, BLOCK, np.where(scores >= self.review_at, REVIEW, APPROVE))


def order_costs(decisions: np.ndarray, labels: np.ndarray, amounts: np.ndarray, policy: CostPolicy) -> np.ndarray:
    """What each decided order costs (``labels``: 1 fraud, 0 genuine)."""
    fraud = labels == 1
    return np.select(
        [decisions == REVIEW, (decisions == APPROVE) & fraud, (decisions == BLOCK) & ~fraud],
        [np.full(labels.shape, policy.review), amounts + policy.chargeback_fee, amounts * policy.blocked_genuine_share],
        0.0,
    )


def candidate_cuts(scores: np.ndarray, grid: int) -> np.ndarray:
    """The thresholds ``choose_bands`` searches: ``grid`` score quantiles from the median to the top
    score, the share of rows above each shrinking geometrically (1/2 ... 1/n), and inf (nothing
    reviewed or blocked)."""
    above = np.geomspace(0.5, 1.0 / max(scores.size, 2), grid)
    return np.concatenate([np.unique(np.quantile(scores, 1.0 - above)), [np.inf]])


def choose_bands(
    scores: np.ndarray, labels: np.ndarray, amounts: np.ndarray, days: float, policy: CostPolicy
) -> tuple[Bands, dict]:
    """The cheapest bands whose reviews per day (over ``days`` of rows) stay within the budget;
    with them, the figures they reach on these rows."""
    if scores.size == 0:
        raise ValueError("no rows to choose thresholds on")
    cuts = candidate_cuts(scores, policy.grid)
    order = np.argsort(scores)
    s, y, a = scores[order], labels[order], amounts[order]
    # Prefix sums over the sorted scores: the cost of every pair is O(1).
    fraud = y == 1
    approved_fraud = np.concatenate([[0.0], np.cumsum(np.where(fraud, a + policy.chargeback_fee, 0.0))])
    blocked_genuine = np.concatenate([[0.0], np.cumsum(np.where(~fraud, a * policy.blocked_genuine_share, 0.0))])
    best: tuple[float, float, float] | None = None
    n = s.size
    for i, r in enumerate(cuts):
        lo = int(np.searchsorted(s, r, side="left"))
        for b in cuts[i:]:
            hi = int(np.searchsorted(s, b, side="left"))
            reviews = hi - lo
            if reviews > policy.review_budget_per_day * days:
                continue
            cost = approved_fraud[lo] + reviews * policy.review + (blocked_genuine[n] - blocked_genuine[hi])
            if best is None or cost < best[0]:
                best = (cost, float(r), float(b))
    assert best is not None  # (inf, inf) reviews nothing: always within the budget
    bands = Bands(review_at=best[1], block_at=best[2])
    return bands, decision_figures(scores, labels, amounts, bands, days, policy)


def decision_figures(
    scores: np.ndarray, labels: np.ndarray, amounts: np.ndarray, bands: Bands, days: float, policy: CostPolicy
) -> dict:
    decisions = bands.decide(scores)
    costs = order_costs(decisions, labels, amounts, policy)
    frauds = max(int((labels == 1).sum()), 1)
    caught = int(((decisions != APPROVE) & (labels == 1)).sum())
    return {
        "cost_per_1000": float(costs.sum() / max(scores.size, 1) * 1000),
        "reviews_per_day": float((decisions == REVIEW).sum() / max(days, 1e-9)),
        "blocked_per_day": float((decisions == BLOCK).sum() / max(days, 1e-9)),
        "caught_share": caught / frauds,
    }


def recall_at_budget(scores: np.ndarray, labels: np.ndarray, days: pl.Series | np.ndarray, budget: int) -> float:
    """The share of frauds among each day's ``budget`` highest-scored orders (what the review team
    would see if it reviewed the top of every day)."""
    frame = pl.DataFrame({"score": scores, "label": labels, "day": days})
    top = frame.with_columns(pl.col("score").rank("ordinal", descending=True).over("day").alias("_rank")).filter(
        pl.col("_rank") <= budget
    )
    frauds = float(frame["label"].sum())
    return float(top["label"].sum()) / frauds if frauds else float("nan")


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision)."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(labels, scores)) if 0 < labels.sum() < labels.size else float("nan")
