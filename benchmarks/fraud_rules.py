"""What each rule of the rules floor catches, and what a rule's points do, on training and validation
orders only.

A risk team adds a rule when it flags frauds that the other rules miss at a rate of genuine orders
the review team can bear, and gives it the points that make the floor cheapest. This measures both
on ``make bench-fraud``'s shops, never reading their test period:

* per rule of ``scoring.RULES``, on the training orders: the frauds it flags (labelled, and of
  them the ones no other rule flags), the genuine orders it flags, and both per day;
* the rules floor's cost per 1,000 validation orders and recall at the budget, with its bands
  chosen on those orders as training chooses them, for each rule left out in turn and for
  ``--rule``'s points set to each of ``--points``; and with the rules that training keeps
  (``scoring.select_rules``, chosen on the training orders).

    python -m benchmarks.fraud_rules [--shop-seed N ...] [--first-party R] [--rule NAME] [--points 1 2 3]
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np


def rules_table(train, rules) -> list[tuple[str, int, int, int]]:
    """Per rule: (name, frauds hit, frauds hit by no other rule, genuine orders hit)."""
    hits = rules.hits(train).to_numpy().astype(bool)
    fraud = train["label"].to_numpy() == 1
    alone = hits.sum(axis=1) == 1
    return [
        (
            name,
            int((hits[:, i] & fraud).sum()),
            int((hits[:, i] & fraud & alone).sum()),
            int((hits[:, i] & ~fraud).sum()),
        )
        for i, name in enumerate(rules.rules)
    ]


def floor_cost(rows, rules, points: np.ndarray, days: float, policy) -> tuple[float, float]:
    """The rules floor with these points on ``rows``: cost per 1,000 orders and recall at the
    budget under the bands chosen on the same rows (as training chooses them on validation)."""
    from pipeline.families.fraud import decisions
    from pipeline.families.fraud.scoring import rule_scores

    scores = rule_scores(rules.hits(rows).to_numpy().astype(float), points, rows["amount"].to_numpy())
    labels, amounts = rows["label"].to_numpy(), rows["amount"].to_numpy()
    bands, _ = decisions.choose_bands(scores, labels, amounts, days, policy)
    costs = decisions.order_costs(bands.decide(scores), labels, amounts, policy)
    recall = decisions.recall_at_budget(scores, labels, rows["order_time"].dt.date(), policy.review_budget_per_day)
    return float(costs.mean() * 1000), recall


def main(argv: list[str] | None = None) -> int:
    from pipeline.families.fraud.scoring import RULE_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop-seed", type=int, nargs="+", default=[2, 5, 7], help="the generated shops' seeds")
    parser.add_argument(
        "--first-party", type=float, default=0.0, help="share of genuine orders disputed by their customers"
    )
    parser.add_argument("--rule", default=RULE_NAMES[-1], help="the rule whose points are varied (default: the last)")
    parser.add_argument("--points", type=float, nargs="+", default=[1.0, 2.0, 3.0], help="points tried for --rule")
    args = parser.parse_args(argv)
    if args.rule not in RULE_NAMES:
        parser.error(f"--rule {args.rule!r} is not one of the rules: {', '.join(RULE_NAMES)}")

    from benchmarks.bench_fraud import SHOP_PERIOD_DAYS, bench_policy, bench_shop_periods
    from pipeline.families.fraud.scoring import RulesScorer

    logging.basicConfig(level=logging.WARNING)
    policy = bench_policy()
    for shop in args.shop_seed:
        split, periods, _ = bench_shop_periods(shop, args.first_party, "shopml-fraud-rules-")
        train, valid = periods["train"], periods["valid"]
        train_days = (split.train_end - split.start).total_seconds() / 86_400
        rules = RulesScorer.fit(train)
        frauds = int(train["label"].sum())
        print(
            f"generated shop, seed {shop}{f', first-party {args.first_party:.0%}' if args.first_party else ''}: "
            f"training orders {train.height:,} ({frauds} frauds, {train_days:.0f} days); "
            f"validation {valid.height:,} ({int(valid['label'].sum())} frauds)"
        )
        print(f"  {'rule (training orders)':<52} {'frauds':>7} {'alone':>6} {'genuine':>8} {'genuine/day':>12}")
        for name, hit, alone, genuine in rules_table(train, rules):
            print(f"  {name:<52} {hit:>7} {alone:>6} {genuine:>8} {genuine / train_days:>12.1f}")
        points = rules.points
        index = rules.rules.index(args.rule)
        print(f"  {'rules floor on validation orders':<52} {'cost/1,000':>11} {'recall@budget':>14}")
        cost, recall = floor_cost(valid, rules, points, SHOP_PERIOD_DAYS, policy)
        print(f"  {'all rules, as they are':<52} {cost:>11.1f} {recall:>14.3f}")
        for i, name in enumerate(rules.rules):
            cost, recall = floor_cost(
                valid, rules, np.where(np.arange(points.size) == i, 0.0, points), SHOP_PERIOD_DAYS, policy
            )
            print(f"  {'without ' + repr(name):<52} {cost:>11.1f} {recall:>14.3f}")
        chosen = RulesScorer.fit(train, policy)
        mask = np.array([name in chosen.rules for name in rules.rules])
        cost, recall = floor_cost(valid, rules, np.where(mask, points, 0.0), SHOP_PERIOD_DAYS, policy)
        print(f"  {'the rules chosen on the training orders (select_rules)':<52} {cost:>11.1f} {recall:>14.3f}")
        print(f"    left out: {', '.join(repr(n) for n in rules.rules if n not in chosen.rules) or 'none'}")
        for p in args.points:
            cost, recall = floor_cost(
                valid, rules, np.where(np.arange(points.size) == index, p, points), SHOP_PERIOD_DAYS, policy
            )
            print(f"  {f'{args.rule!r} at {p:g} points':<52} {cost:>11.1f} {recall:>14.3f}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
