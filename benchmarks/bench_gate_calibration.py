"""How often the gate promotes a candidate that is no better than its champion (``make bench-gate-calibration``).

The gate promotes a candidate over the champion when the ``confidence`` bootstrap interval of the
difference, resampling whole users (orders, items), lies above zero. With two models that are
equally good, that should happen ``(1 - confidence) / 2`` of the time: 2.5% at 95%. Whether it does
depends on the interval being right for the rows at hand, and a percentile bootstrap on a few
hundred users, or on a cost that a handful of frauds dominate, can be too narrow.

This benchmark measures it on real evaluations: the latest one of each family in ``.state/`` (``make
demo``'s, or ``$SHOPML_HOME``'s). It takes the per-row values of two models of that evaluation (the
candidate and the champion, else the candidate and the policy's first floor) and makes them equal
in truth: in each replicate, each user's rows (an order, an item) are swapped between the two
sides with probability one half, which leaves the two sides exchangeable. Each replicate goes
through the gate's own ``decide`` with the family's policy (its metric, statistic, confidence,
bootstrap samples and seed; floors, latency and size left out), and the benchmark counts the
promotions, with a Wilson interval, and what that rate means over a year of weekly and of daily
retrains. A rate far above 2.5% says the gate's interval is too narrow for that family's data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``k / n``."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def null_promotions(model: str, rows, policy, replicates: int, seed: int) -> dict:
    """The gate's decisions on ``replicates`` exchangeable versions of two sides of ``rows``."""
    from pipeline import families
    from pipeline.lifecycle.gate import Rows, decide, gate_rows

    column, statistic = gate_rows(model, policy.metric, rows)
    other = "champion" if f"champion.{column}" in rows else next(f for f in policy.floors if f"{f}.{column}" in rows)
    a = rows[f"candidate.{column}"].to_numpy(dtype=float)
    b = rows[f"{other}.{column}"].to_numpy(dtype=float)
    groups = rows["user_id"].to_numpy()
    _, group_of = np.unique(groups, return_inverse=True)
    everything = np.arange(len(rows))
    bare = dataclasses.replace(
        policy, floors=(), max_latency_ms=math.inf, max_model_mb=math.inf, guard_metrics=(), online_protocol=False
    )
    rng = np.random.default_rng(seed)
    promoted = 0
    started = time.perf_counter()
    for _ in range(replicates):
        swap = (rng.random(group_of.max() + 1) < 0.5)[group_of]
        cand, champ = np.where(swap, b, a), np.where(swap, a, b)
        decision = decide(
            bare,
            {policy.metric: statistic(cand, everything)},
            {},
            champion={policy.metric: statistic(champ, everything)},
            champion_version="null",
            rows=Rows(groups, cand, statistic, champion=champ, clusters=families.get(model).clusters),
        )
        promoted += int(decision.passed)
    low, high = wilson(promoted, replicates)
    rate = promoted / replicates
    return {
        "model": model,
        "sides": f"candidate, {other}",
        "clusters": int(group_of.max() + 1),
        "rows": len(rows),
        "metric": policy.metric,
        "confidence": policy.confidence,
        "bootstrap_samples": policy.bootstrap_samples,
        "replicates": replicates,
        "promoted": promoted,
        "rate": rate,
        "rate_low": low,
        "rate_high": high,
        "expected": (1 - policy.confidence) / 2,
        "weekly_year": 1 - (1 - rate) ** 52,
        "daily_year": 1 - (1 - rate) ** 365,
        "seconds": time.perf_counter() - started,
        "labels": int(rows["label"].sum()) if "label" in rows else None,
    }


def latest_evaluations(models: list[str]) -> dict:
    """The per-row values (``evaluation/rows.parquet``) of each model's latest evaluated run in the state's MLflow
    that was compared with a champion, else its latest evaluated run."""
    import os

    import pandas as pd

    from pipeline.core.settings import get_state_paths
    from pipeline.core.tracking import mlflow_client

    paths = get_state_paths()
    client = mlflow_client(paths)
    out = {}
    for model in models:
        experiment = client.get_experiment_by_name(f"{os.environ.get('SHOPML_EXPERIMENT', 'shopml')}-{model}")
        runs = (
            client.search_runs(
                [experiment.experiment_id], "metrics.eval_model_mb > 0", order_by=["attributes.start_time DESC"]
            )
            if experiment
            else []
        )
        if not runs:
            print(f"{model}: no evaluated run in {paths.home} (run make demo first); skipped", file=sys.stderr)
            continue
        compared = [r for r in runs if r.data.tags.get("eval.champion_version", "none") not in ("", "none")]
        run_id = (compared or runs)[0].info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            out[model] = pd.read_parquet(client.download_artifacts(run_id, "evaluation/rows.parquet", tmp))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="next_item,purchase_propensity,price,fraud")
    parser.add_argument("--replicates", type=int, default=1000, help="exchangeable replicates per model")
    parser.add_argument(
        "--replicates-auc", type=int, default=200, help="for a model gated on AUC (a bootstrap of AUCs is slow)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)

    from pipeline.lifecycle.gate import load_policy

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    found = latest_evaluations(models)
    if not found:
        return 1
    results = []
    for model, rows in found.items():
        policy = load_policy(model)
        replicates = args.replicates_auc if policy.metric == "auc" else args.replicates
        results.append(null_promotions(model, rows, policy, replicates, args.seed))
        r = results[-1]
        print(f"{model}: {r['promoted']} of {r['replicates']} in {r['seconds']:.0f} s", file=sys.stderr)

    print("Promotions of a candidate no better than its champion (two sides made exchangeable)")
    print(
        f"{'model':<21}{'against':<21}{'metric':<15}{'clusters':>9}{'rows':>7}{'labels':>7}{'reps':>6}"
        f"{'promoted':>10}{'95% interval':>16}{'expected':>9}{'weekly, 1 yr':>14}{'daily, 1 yr':>13}"
    )
    for r in results:
        labels = "" if r["labels"] is None else f"{r['labels']:,}"
        interval = f"{r['rate_low']:.1%}-{r['rate_high']:.1%}"
        against = r["sides"].split(", ")[1]
        print(
            f"{r['model']:<21}{against:<21}{r['metric']:<15}{r['clusters']:>9,}{r['rows']:>7,}{labels:>7}{r['replicates']:>6}"
            f"{r['rate']:>10.1%}{interval:>16}{r['expected']:>9.1%}{r['weekly_year']:>14.0%}{r['daily_year']:>13.0%}"
        )
    print("weekly / daily, 1 yr: the chance of at least one such promotion in 52 / 365 retrains at that rate")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
