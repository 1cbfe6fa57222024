"""Price recommendations: the price that maximises expected revenue (or margin, given a cost),
searched only inside the prices an item has actually had, within a maximum change per step.

Expected demand at a price p is the forecaster's demand at the current price times
(p / current) ** elasticity (the item's shrunk double-ML estimate, ``elasticity``). Observational
data cannot prove that a price change lifts revenue: each answer names the range of prices the
elasticity was learned from and says that the recommendation extrapolates nothing beyond it; a
real uplift needs an experiment (a price test on part of the traffic).

The rules come from the ``pricing`` section of ``policy.yaml`` (``PricingPolicy``).
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import polars as pl
from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from pipeline.core.config import STRICT, section

POLICY_SECTION = "pricing"


@pydantic_dataclass(frozen=True, config=STRICT)
class PricingPolicy:
    max_change: float = Field(default=0.1, gt=0, lt=1)  # the most a price moves in one step, as a share
    min_distinct_prices: int = Field(default=2, ge=2)  # fewer observed prices: no recommendation
    grid_points: int = Field(default=201, ge=3)  # candidate prices searched inside the allowed range

    def to_dict(self) -> dict:
        return asdict(self)


def load_pricing_policy(path=None) -> PricingPolicy:
    """The ``pricing`` section of the policy file (defaults when it has none)."""
    from pipeline.core.policyfile import PolicyError, read_policy_file

    file, data = read_policy_file(path)
    return section(PricingPolicy, data.get(POLICY_SECTION) or {}, f"{file}: {POLICY_SECTION}", PolicyError)


def price_ranges(panel: pl.DataFrame) -> pl.DataFrame:
    """Per item: the lowest and highest price it sold at, how many distinct prices (to the cent)."""
    sold = panel.filter(pl.col("sold") & pl.col("price").is_not_null())
    return sold.group_by("item_id").agg(
        pl.col("price").min().alias("min_price"),
        pl.col("price").max().alias("max_price"),
        pl.col("price").round(2).n_unique().alias("distinct_prices"),
        pl.len().alias("periods_sold"),
    )


def recommend(
    item: str,
    current: float,
    demand: float,
    elasticity: dict | None,
    observed: dict | None,
    policy: PricingPolicy,
    cost: float | None = None,
) -> dict:
    """One item's answer: the recommended price with its expected demand and revenue or margin, or
    no price and the reason. ``demand`` is the forecast at the current price (per period);
    ``elasticity`` the item's row of the elasticity table; ``observed`` its ``price_ranges`` row."""
    out: dict = {"item_id": item, "current_price": round(float(current), 4), "demand_at_current": float(demand)}
    if observed is None:
        return {
            **out,
            "price": None,
            "reason": "the item never sold in the model's training periods: no observed price",
        }
    if elasticity is None or not np.isfinite(float(elasticity.get("elasticity", float("nan")))):
        return {
            **out,
            "price": None,
            "reason": "no elasticity estimate for this item (its prices never moved in training)",
        }
    seen = int(observed["distinct_prices"])
    lo, hi = float(observed["min_price"]), float(observed["max_price"])
    out["observed_range"] = [lo, hi]
    out["elasticity"] = {k: elasticity[k] for k in ("elasticity", "low", "high", "source")}
    if seen < policy.min_distinct_prices:
        return {
            **out,
            "price": None,
            "reason": (
                f"only {seen} price observed ({lo:g}): no evidence of how demand answers another price; "
                "a price test would give one"
            ),
        }
    if float(elasticity["high"]) >= 0:
        return {
            **out,
            "price": None,
            "reason": (
                f"the elasticity's interval [{elasticity['low']:.2f}, {elasticity['high']:.2f}] does not show demand "
                "falling as the price rises: no price follows from it"
            ),
        }
    low, high = max(lo, current * (1 - policy.max_change)), min(hi, current * (1 + policy.max_change))
    if low > high:  # the current price lies outside what was seen by more than one step
        low, high = (
            (lo, min(hi, lo * (1 + policy.max_change))) if current < lo else (max(lo, hi * (1 - policy.max_change)), hi)
        )
    # Prices are in cents: the range's ends rounded inward, so no candidate leaves it.
    low, high = math.ceil(low * 100 - 1e-9) / 100, math.floor(high * 100 + 1e-9) / 100
    if low > high:
        low = high = round(current, 2)
    grid = np.unique(np.round(np.linspace(low, high, policy.grid_points), 2))
    e = float(elasticity["elasticity"])
    expected = demand * (grid / current) ** e
    value = expected * (grid - cost) if cost is not None else expected * grid
    best = int(np.argmax(value))
    objective = "margin" if cost is not None else "revenue"
    now = demand * ((current - cost) if cost is not None else current)
    return {
        **out,
        "price": float(grid[best]),
        "objective": objective,
        "expected_demand": float(expected[best]),
        f"expected_{objective}": float(value[best]),
        f"{objective}_at_current": float(now),
        "searched": [low, high],
        "reason": (
            f"searched {low:.2f}-{high:.2f}: inside the prices this item sold at ({lo:g}-{hi:g}) and at most "
            f"{policy.max_change:.0%} from the current price; an estimate from observed prices, not a "
            "measured uplift (an experiment would measure one)"
        ),
    }
