"""How the LightGBM floor's choice of setting holds up, on validation orders only.

The floor's setting is the point of ``scoring.LIGHTGBM_GRID`` with the best validation AUC-PR, and
its bands the cheapest on the same orders. This splits ``make bench-fraud``'s validation period in
time: its first ``--choose-days`` (A) early-stop every grid point, rank them and choose each one's
bands, as training does; its last days (B) check them. The test period is left unread, so what
this shows can inform the floor's recipe without choosing anything on the test set.

Per grid point, ranked by A's AUC-PR: B's AUC-PR and cost per 1,000 orders under the bands chosen
on A, both also against the generator's truth (the frauds whose chargeback had not arrived when B
was labelled count as fraud there). Then the same for the average of the top 3 and of all grid
points (each member's raw scores standardised on A), the alternative to choosing one.

    python -m benchmarks.bench_fraud_floor [--shop-seed N] [--first-party R] [--choose-days 10]
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import timedelta

import numpy as np


def floor_choice(seed: int, first_party: float, choose_days: int) -> list[tuple[str, dict]]:
    import polars as pl

    from benchmarks.bench_fraud import bench_policy, bench_shop_periods
    from pipeline.families.fraud import decisions
    from pipeline.families.fraud.scoring import dense_matrix, lightgbm_grid_fits

    # make bench-fraud's split; its test period is left unread.
    split, periods, truth = bench_shop_periods(seed, first_party, "shopml-bench-floor-")
    train, valid = periods["train"], periods["valid"]
    cut = split.valid_start + timedelta(days=choose_days)
    a, b = valid.filter(pl.col("order_time") < cut), valid.filter(pl.col("order_time") >= cut)
    policy = bench_policy()
    y, y_a, y_b = train["label"].to_numpy(), a["label"].to_numpy(), b["label"].to_numpy()
    true_b = b["session_id"].is_in(truth["session_id"].implode()).to_numpy().astype(float)
    x_a, x_b = dense_matrix(a), dense_matrix(b)
    b_days = (split.valid_end - cut).total_seconds() / 86_400
    print(
        f"seed {seed}{f', first-party {first_party:.0%}' if first_party else ''}: train {train.height:,} orders "
        f"({int(y.sum())} fraud), A {a.height:,} ({int(y_a.sum())}), B {b.height:,} ({int(y_b.sum())}, "
        f"{int(true_b.sum())} by the truth)",
        flush=True,
    )

    def judged(raw_a: np.ndarray, raw_b: np.ndarray) -> dict:
        bands, _ = decisions.choose_bands(raw_a, y_a, a["amount"].to_numpy(), choose_days, policy)
        decided = bands.decide(raw_b)
        amounts = b["amount"].to_numpy()
        return {
            "auc_pr": decisions.average_precision(y_b, raw_b),
            "auc_pr_truth": decisions.average_precision(true_b, raw_b),
            "cost_per_1000": float(decisions.order_costs(decided, y_b, amounts, policy).mean() * 1000),
            "cost_per_1000_truth": float(decisions.order_costs(decided, true_b, amounts, policy).mean() * 1000),
            "reviews_per_day": float((decided == decisions.REVIEW).sum() / b_days),
        }

    fits = []
    # The floor's own grid fits (scoring.lightgbm_grid_fits), early-stopped and ranked on A.
    for setting, booster, ap in lightgbm_grid_fits(train, a):
        rounds = booster.best_iteration
        raw_a = booster.predict(x_a, num_iteration=rounds, raw_score=True)
        raw_b = booster.predict(x_b, num_iteration=rounds, raw_score=True)
        name = f"{setting['num_leaves']}/{setting['min_data_in_leaf']}/{setting['weighting']}, {rounds} rounds"
        fits.append((ap, name, raw_a, raw_b))
    fits.sort(key=lambda f: -f[0])
    rows = [
        (f"{i + 1:>2}. {name} (A {ap:.4f})", judged(raw_a, raw_b)) for i, (ap, name, raw_a, raw_b) in enumerate(fits)
    ]
    for k in (3, len(fits)):
        top = fits[:k]
        raw_a = np.mean([(f[2] - f[2].mean()) / f[2].std() for f in top], axis=0)
        raw_b = np.mean([(f[3] - f[2].mean()) / f[2].std() for f in top], axis=0)
        rows.append((f"average of the top {k}", judged(raw_a, raw_b)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shop-seed", type=int, default=2)
    parser.add_argument("--first-party", type=float, default=0.0)
    parser.add_argument("--choose-days", type=int, default=10, help="validation days that choose (A); the rest check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = floor_choice(args.shop_seed, args.first_party, args.choose_days)
    print(
        f"  {'setting (leaves/min leaf/weighting), ranked on A':52} {'B AUC-PR':>8} {'truth':>6} {'B cost/1000':>11} "
        f"{'truth':>7} {'reviews/day':>11}"
    )
    for name, m in rows:
        print(
            f"  {name:52} {m['auc_pr']:8.3f} {m['auc_pr_truth']:6.3f} {m['cost_per_1000']:11.1f} "
            f"{m['cost_per_1000_truth']:7.1f} {m['reviews_per_day']:11.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
