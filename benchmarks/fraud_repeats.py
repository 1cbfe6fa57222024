"""How far one training run's fraud figures move: the same shop, the same split, the learners fitted
again and again, each time with another seed or with a few training orders left out.

``make bench-fraud`` fits each scorer once and gives, for the network minus each floor, a 95%
bootstrap interval over the test orders. That interval says how much the figures would move on
other test orders; it says nothing of how much they would move with another training run. On the
generated shop of seed 2, moving the times of 6 view events of 4.19 million (one training order's
``session_seconds``, ``f68febd``) took LightGBM's test cost from 91.2 to 75.2 per 1,000 orders and
the network's from 123.6 to 76.5. This refits the pipeline's own training step
(``pipeline.families.fraud.train.fit_scorers``: LightGBM over its grid, the network over its grid,
each scorer's bands on validation) ``--repeats`` times in each of two ways:

* ``seed``: the same training orders, the learners' seed 0, 1, 2, ... (the network's initial
  weights and batch order, LightGBM's bagging and feature sampling; seed 0 is ``make
  bench-fraud``'s run);
* ``drop``: seed 0, with a random ``--drop`` share of the training orders left out each time (a
  training set that differs as a shop's next month differs a little from this one).

Per run it prints each learned scorer's test cost per 1,000 orders and AUC-PR (against the labels
and against the generator's truth) and the network minus LightGBM; then, per way, each figure's
range and standard deviation over the runs, and in how many runs the network's cost was below
LightGBM's. Settings are never chosen on the test orders.

    python -m benchmarks.fraud_repeats [--shop-seed N ...] [--repeats R] [--drop SHARE]
    make bench-fraud-repeats
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import polars as pl

from benchmarks.bench_fraud import NETWORK, SHOP_PERIOD_DAYS, bench_policy, bench_shop_periods

LEARNED = ("lightgbm", NETWORK)
FIGURES = ("cost_per_1000", "auc_pr", "cost_per_1000_truth", "auc_pr_truth")


def training_orders(train: pl.DataFrame, drop: float, repeat: int) -> pl.DataFrame:
    """The training orders less a random ``drop`` share of them (none for ``drop`` 0), drawn
    afresh for each ``repeat``; in their time order."""
    if drop <= 0:
        return train
    keep = np.random.default_rng([repeat, 41]).random(train.height) >= drop
    return train.filter(pl.Series(keep))


def run_figures(train, valid, test, truth: np.ndarray, period_days: int, policy, seed: int) -> dict:
    """Each learned scorer's test figures after one fit of the pipeline's training step: its cost
    per 1,000 orders under its bands and its AUC-PR, against the labels and against ``truth``. The
    test orders are scored once per scorer."""
    from pipeline.families.fraud import decisions
    from pipeline.families.fraud.train import fit_scorers

    scorers, _ = fit_scorers(train, valid, period_days, policy, epochs=30, seed=seed)
    labels, amounts = test["label"].to_numpy(), test["amount"].to_numpy()
    out = {}
    for name in LEARNED:
        pyfunc = scorers[name]
        scores = pyfunc.scores(test)
        decided = pyfunc.bands.decide(scores)
        out[name] = {}
        for suffix, against in (("", labels), ("_truth", truth)):
            costs = decisions.order_costs(decided, against, amounts, policy)
            out[name][f"cost_per_1000{suffix}"] = float(costs.mean() * 1000)
            out[name][f"auc_pr{suffix}"] = decisions.average_precision(against, scores)
    return out


def spread(runs: list[dict]) -> dict:
    """Per learned scorer and figure, and for the network minus LightGBM: the runs' min, max and
    standard deviation (ddof 1); and ``network_cheaper``, in how many runs the network's cost per
    1,000 orders (labelled) was below LightGBM's."""
    out: dict = {}
    for name in (*LEARNED, "difference"):
        out[name] = {}
        for key in FIGURES:
            if name == "difference":
                values = np.array([r[NETWORK][key] - r["lightgbm"][key] for r in runs])
            else:
                values = np.array([r[name][key] for r in runs])
            out[name][key] = {
                "min": float(values.min()),
                "max": float(values.max()),
                "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            }
    out["network_cheaper"] = sum(r[NETWORK]["cost_per_1000"] < r["lightgbm"]["cost_per_1000"] for r in runs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop-seed", type=int, nargs="+", default=[2], help="the generated shops' seeds")
    parser.add_argument("--repeats", type=int, default=5, help="fits per way (default 5)")
    parser.add_argument("--drop", type=float, default=0.01, help="share of training orders left out per drop run")
    args = parser.parse_args(argv)
    if args.repeats < 2 or not 0 < args.drop < 1:
        parser.error("--repeats must be 2 or more and --drop between 0 and 1")
    logging.basicConfig(level=logging.WARNING)
    policy = bench_policy()
    for shop in args.shop_seed:
        _, periods, truth_frame = bench_shop_periods(shop, prefix="shopml-fraud-repeats-")
        train, valid, test = periods["train"], periods["valid"], periods["test"]
        truth = test["session_id"].is_in(truth_frame["session_id"].implode()).to_numpy().astype(float)
        print(f"generated shop, seed {shop}: train {train.height:,}, validation {valid.height:,}, test {test.height:,}")
        print(
            "  way   run  lightgbm cost  network cost  difference  | truth: lightgbm  network  "
            "| AUC-PR truth: lightgbm  network"
        )
        for way in ("seed", "drop"):
            runs = []
            for r in range(args.repeats):
                rows = training_orders(train, args.drop if way == "drop" else 0.0, r)
                fig = run_figures(rows, valid, test, truth, SHOP_PERIOD_DAYS, policy, r if way == "seed" else 0)
                runs.append(fig)
                lg, nw = fig["lightgbm"], fig[NETWORK]
                print(
                    f"  {way:<5} {r:>3}  {lg['cost_per_1000']:>13.1f}  {nw['cost_per_1000']:>12.1f}  "
                    f"{nw['cost_per_1000'] - lg['cost_per_1000']:>+10.1f}  | {lg['cost_per_1000_truth']:>15.1f}  "
                    f"{nw['cost_per_1000_truth']:>7.1f}  | {lg['auc_pr_truth']:>21.4f}  {nw['auc_pr_truth']:>7.4f}",
                    flush=True,
                )
            s = spread(runs)
            for name in (*LEARNED, "difference"):
                c, t = s[name]["cost_per_1000"], s[name]["auc_pr_truth"]
                print(
                    f"  {way} {name}: cost per 1,000 {c['min']:.1f} to {c['max']:.1f} (sd {c['std']:.1f}); "
                    f"AUC-PR truth {t['min']:.4f} to {t['max']:.4f} (sd {t['std']:.4f})"
                )
            print(f"  {way}: the network cost less than LightGBM in {s['network_cheaper']} of {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
