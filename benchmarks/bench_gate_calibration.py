"""How often the gate finds a difference between two equally good models (``make bench-gate-calibration``).

The gate promotes a candidate over the champion when the ``confidence`` bootstrap interval of the
difference, resampling whole users (orders, items), lies above zero. With two models that are
equally good, the interval should leave out zero on the side of either one ``(1 - confidence) / 2``
of the time: 2.5% at 95%. Whether it does depends on the interval being right for the rows at hand;
a percentile bootstrap on a few hundred users, or on a cost that a handful of frauds dominate, can
be too narrow (more promotions than it says) or too wide (fewer, and less power).

This benchmark measures it on real evaluations: the latest one of each family in ``.state/`` (``make
demo``'s, or ``$SHOPML_HOME``'s), compared with a champion where there was one. From two sides of
it (the candidate and the champion, else the candidate and the policy's first floor) it makes two
models that are equally good on those rows: complementary mixtures, each user's rows from one side
or the other, the most even of 200 random patterns, and what is left of the difference taken off
one side, the same on every row, where the statistic moves with it (a mean cost, a WAPE; not an
AUC, whose gap is printed). It treats the rows as the population and draws test sets from it as a
shop's weeks draw users (whole users, with replacement; ``--scale`` times as many as there are, for
a larger shop), and gates each with the family's own policy and statistic through the gate's
``decide`` (floors, latency and size left out). It counts the test sets where the gate finds either
model significantly better (where the policy's ``min_positives`` lets it), with a Wilson interval,
and what the rate means over a year of weekly and of daily retrains.
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


def balanced_sides(model: str, rows, policy, rng: np.random.Generator, tries: int = 200):
    """Two models equally good on ``rows``: mixtures of the candidate and another side (the champion,
    else the first floor of the policy), each user's rows from one or the other, complementary, the
    pattern the most even of ``tries`` random ones, and what is left of the difference taken off one
    side where the statistic allows. Returns (other side, a, b, the metric's gap left)."""
    from pipeline.lifecycle.gate import gate_rows

    column, statistic = gate_rows(model, policy.metric, rows)
    candidate = rows[f"candidate.{column}"].to_numpy(dtype=float)
    # The champion, else the first floor that is not the candidate itself (a floor that serves).
    present = [
        side
        for side in ("champion", *policy.floors)
        if f"{side}.{column}" in rows and not np.array_equal(rows[f"{side}.{column}"].to_numpy(dtype=float), candidate)
    ]
    if not present:
        raise ValueError(f"{model}: no side of the evaluation differs from the candidate on {column}")
    other = present[0]
    second = rows[f"{other}.{column}"].to_numpy(dtype=float)
    _, group_of = np.unique(rows["user_id"].to_numpy(), return_inverse=True)
    everything = np.arange(len(rows))
    best = (math.inf, candidate, second)
    for _ in range(tries):
        swap = (rng.random(group_of.max() + 1) < 0.5)[group_of]
        a, b = np.where(swap, second, candidate), np.where(swap, candidate, second)
        gap = abs(statistic(a, everything) - statistic(b, everything))
        if gap < best[0]:
            best = (gap, a, b)
    gap, a, b = best
    # What no pattern evens out (a few large rows: a missed fraud's cost) comes off one side, the same
    # amount on every row, where the statistic moves with it (a mean, a sum over fixed units); a rank
    # statistic (AUC) does not move, and keeps the gap it has.
    delta = 1e-6 * (float(np.abs(b).mean()) + 1.0)
    slope = (statistic(b + delta, everything) - statistic(b, everything)) / delta
    if abs(slope) > 1e-9:
        b = b + (statistic(a, everything) - statistic(b, everything)) / slope
        gap = abs(statistic(a, everything) - statistic(b, everything))
    return other, a, b, gap


def null_promotions(model: str, rows, policy, replicates: int, seed: int, scale: float = 1.0) -> dict:
    """How often the gate's interval favours one of two equally good models, on ``replicates`` test
    sets drawn from ``rows`` as from a population (whole users, with replacement; a user drawn
    twice is two users), each gated with the family's policy and statistic."""
    from pipeline import families
    from pipeline.lifecycle.gate import Rows, decide, gate_rows, group_resampler, positive_labels

    rng = np.random.default_rng(seed)
    column = gate_rows(model, policy.metric, rows)[0]
    other, a, b, gap = balanced_sides(model, rows, policy, rng)
    population = rows.assign(**{f"candidate.{column}": a, f"champion.{column}": b})
    users = population["user_id"].nunique()
    draw = group_resampler(population["user_id"].to_numpy(), rng, round(scale * users))
    labels = positive_labels(rows)
    bare = dataclasses.replace(
        policy, floors=(), max_latency_ms=math.inf, max_model_mb=math.inf, guard_metrics=(), online_protocol=False
    )
    favoured, positives = 0, 0
    started = time.perf_counter()
    for _ in range(replicates):
        picked, lengths = draw()
        sample = population.iloc[picked].reset_index(drop=True)
        groups = np.repeat(np.arange(lengths.size), lengths)  # a user drawn twice is two users
        labelled = positive_labels(sample)
        positives += labelled or 0
        statistic = gate_rows(model, policy.metric, sample)[1]
        x = sample[f"candidate.{column}"].to_numpy(dtype=float)
        y = sample[f"champion.{column}"].to_numpy(dtype=float)
        everything = np.arange(len(sample))
        decision = decide(
            bare,
            {policy.metric: statistic(x, everything)},
            {},
            champion={policy.metric: statistic(y, everything)},
            champion_version="null",
            rows=Rows(groups, x, statistic, champion=y, clusters=families.get(model).clusters),
            positives=labelled,
        )
        low, high = decision.interval
        # Either side "significantly better", where the policy's evidence rule lets it count.
        evident = all(c.passed for c in decision.checks if c.name == "evidence")
        favoured += evident * (int(low > 0) + int(high < 0))
    tails = 2 * replicates
    low, high = wilson(favoured, tails)
    rate = favoured / tails
    return {
        "model": model,
        "sides": f"candidate, {other}",
        "gap": gap,
        "clusters": int(users),
        "rows": len(rows),
        "metric": policy.metric,
        "min_positives": policy.min_positives,
        "confidence": policy.confidence,
        "bootstrap_samples": policy.bootstrap_samples,
        "replicates": replicates,
        "favoured": favoured,
        "rate": rate,
        "rate_low": low,
        "rate_high": high,
        "expected": (1 - policy.confidence) / 2,
        "weekly_year": 1 - (1 - rate) ** 52,
        "daily_year": 1 - (1 - rate) ** 365,
        "seconds": time.perf_counter() - started,
        "labels": labels,
        "scale": scale,
        "test_rows": round(scale * len(rows)),
        "test_labels": positives / replicates if labels is not None else None,
    }


def latest_evaluations(models: list[str]) -> dict:
    """The per-row values (``evaluation/rows.parquet``) of each model's latest evaluated run in the state's MLflow
    that was compared with a champion, else its latest evaluated run."""
    import pandas as pd

    from pipeline.core.settings import get_state_paths
    from pipeline.core.tracking import experiment_name, mlflow_client
    from pipeline.lifecycle.floors import FLOOR_TAG

    paths = get_state_paths()
    client = mlflow_client(paths)
    out = {}
    for model in models:
        experiment = client.get_experiment_by_name(experiment_name(model))
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
        # A learned candidate's evaluation: a floor's own run (``lifecycle.floors``) has the floor on
        # both sides.
        runs = [r for r in runs if FLOOR_TAG not in r.data.tags]
        if not runs:
            print(f"{model}: only floors' runs in {paths.home}; skipped", file=sys.stderr)
            continue
        compared = [r for r in runs if r.data.tags.get("eval.champion_version", "none") not in ("", "none")]
        run_id = (compared or runs)[0].info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            out[model] = pd.read_parquet(client.download_artifacts(run_id, "evaluation/rows.parquet", tmp))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="next_item,price,fraud,purchase_propensity")
    parser.add_argument("--replicates", type=int, default=1000, help="test sets drawn per model")
    parser.add_argument(
        "--replicates-auc", type=int, default=100, help="for a model gated on AUC (a bootstrap of AUCs is slow)"
    )
    parser.add_argument("--confidence", type=float, help="instead of each policy's own")
    parser.add_argument("--min-positives", type=int, help="instead of each policy's own (0: no such rule)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="test sets of this many times the evaluation's users (more labels)"
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
        if args.confidence:
            policy = dataclasses.replace(policy, confidence=args.confidence)
        if args.min_positives is not None:
            policy = dataclasses.replace(policy, min_positives=args.min_positives)
        replicates = args.replicates_auc if policy.metric == "auc" else args.replicates
        results.append(null_promotions(model, rows, policy, replicates, args.seed, args.scale))
        r = results[-1]
        print(f"{model}: {r['favoured']} of {2 * r['replicates']} tails in {r['seconds']:.0f} s", file=sys.stderr)

    print("How often the gate finds one of two equally good models significantly better (either side, per test set)")
    print(
        f"{'model':<21}{'against':<21}{'min +':>6} {'conf.':>6} {'metric':<15}"
        f"{'clusters':>9}{'rows':>7}{'labels':>7}{'reps':>6}"
        f"{'favoured':>10}{'95% interval':>16}{'expected':>9}{'weekly, 1 yr':>14}{'daily, 1 yr':>13}"
    )
    for r in results:
        labels = "" if r["test_labels"] is None else f"{r['test_labels']:,.0f}"
        interval = f"{r['rate_low']:.1%}-{r['rate_high']:.1%}"
        against = r["sides"].split(", ")[1]
        print(
            f"{r['model']:<21}{against:<21}{r['min_positives']:>6} {r['confidence']:>6.0%} {r['metric']:<15}"
            f"{round(r['scale'] * r['clusters']):>9,}{r['test_rows']:>7,}{labels:>7}{r['replicates']:>6}"
            f"{r['rate']:>10.1%}{interval:>16}{r['expected']:>9.1%}{r['weekly_year']:>14.0%}{r['daily_year']:>13.0%}"
        )
    print(
        "weekly / daily, 1 yr: the chance of at least one promotion of an equal model in 52 / 365 retrains at that rate"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
