"""Fraud scores: the DCN-v2 network beside the rules a risk team writes and LightGBM, on the same
orders, on the generated shop and on any file in the public e-commerce fraud layout.

Protocol (``pipeline.families.fraud``): orders and their point-in-time features; the split
train | gap | validation | gap | test | gap, each gap the label maturity window, each period
labelled as known at the moment it is used (unknown labels left out, never taken as genuine). All
three scorers are fitted on the training orders; early stopping and the decision bands (approve /
review / block, the cheapest within the daily review budget of ``policy.yaml`` ``fraud_costs``)
are chosen on validation; the figures are the test orders'. Settings are never chosen on the test
period. Per scorer: AUC-PR (average precision), recall at the daily budget (the share of frauds
among each day's top-scored orders), the expected cost per 1,000 orders under the validation's
bands, and for the network minus each floor the 95% bootstrap interval of the difference
(resampling orders, 500 times, the same resamples for every scorer).

The generated shop: 200 days, 20,000 events a day, 2% of orders fraudulent (four scenarios, a share
of each disguised as genuine behaviour, beside customers who travel, share devices and change them;
``--first-party R`` adds customers disputing their own orders, R of the genuine ones),
a 20-day maturity window (chargebacks arrive 3 to 60 days late), 21-day validation and test: about
300 frauds in each. Its generator also writes which orders were fraud (``truth/fraud.csv``), so
on this shop alone the figures are given a second time against that truth: a tenth of the test
frauds have no chargeback yet when the test period is labelled (it arrives after the window), and
count as genuine in the first figures, whichever scorer ranks them high. The truth figures show
how much of a difference between scorers is ranking and how much is where those late frauds fell,
and how close the better floor comes to a perfect ranking (the "headroom" line); then, per scenario
of the truth, how many of its frauds each scorer's bands stop, and each scorer's AUC-PR without
that scenario (where the distance from a perfect ranking lies). A file
in the public layout (``user_id, signup_time, purchase_time, purchase_value, device_id, source,
browser, sex, age, ip_address, class``) is ingested with the ``fraud_orders`` adapter; its labels
are all known (the layout does not say when), so its maturity window is 0: validation and test
are its last ``--valid-days`` and ``--test-days`` before the end, without gaps.

    python -m benchmarks.bench_fraud [--data FILE] [--json OUT] [--skip-generated] [--shop-seed N]

``--json OUT`` writes, for the file (or the generated shop without one), per scorer name
(``rules``, ``lightgbm``, ``dcn_v2``): ``auc_pr``, ``recall_at_budget``, ``cost_per_1000``; and
``promoted``: the scorer the family's gate would serve on these figures (from the labels, as the
gate sees them). For the generated shop, also ``auc_pr_truth`` and ``cost_per_1000_truth``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

NETWORK = "dcn_v2"
BUDGET = 50  # reviews a day (policy.yaml's): the generated shop has about 14 orders of fraud a day
SHOP_DAYS, SHOP_EVENTS_PER_DAY, SHOP_PERIOD_DAYS = 200, 20_000, 21
SHOP_MATURITY_DAYS = 20  # the generated shop's label maturity window (chargebacks arrive 3 to 60 days late)
TRUTH_KEYS = ("auc_pr_truth", "cost_per_1000_truth")  # the generated shop's only


def generated_shop(home: Path, seed: int = 2, first_party: float = 0.0):
    """The generated shop's events (read from the landing files directly), and the sessions of its
    fraudulent orders with their scenarios (``session_id``, ``scenario``: the generator's truth
    file, which the pipeline never reads)."""
    import polars as pl

    from pipeline.core.params import GenerateParams
    from pipeline.data.generate import generate_shop_data
    from pipeline.data.generate_risk import FRAUD_TRUTH_FILE

    params = GenerateParams(
        seed=seed,
        start_date="2026-03-01",
        days=SHOP_DAYS,
        events_per_day=SHOP_EVENTS_PER_DAY,
        initial_users=SHOP_EVENTS_PER_DAY * 2 // 3,
        initial_items=1_500,
        fraud_rate=0.02,
        first_party_rate=first_party,
        format="parquet",
    )
    days = generate_shop_data(params, home / "landing")
    events = pl.concat([pl.read_parquet(d.events_path) for d in days]).sort("event_time")
    truth = pl.read_csv(home / "landing" / FRAUD_TRUTH_FILE, columns=["session_id", "scenario"])
    return events, truth


def bench_policy(budget: int = BUDGET):
    """``policy.yaml``'s ``fraud_costs`` with the bench's daily review budget."""
    from pipeline.families.fraud import decisions

    policy = decisions.load_cost_policy()
    return type(policy)(**{**policy.to_dict(), "review_budget_per_day": budget})


def bench_shop_periods(seed: int, first_party: float = 0.0, prefix: str = "shopml-bench-fraud-"):
    """The generated shop of ``seed`` split as ``make bench-fraud`` splits it, generated in a
    temporary home: its split, each period's labelled orders with their features, and the
    generator's truth (``generated_shop``)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as home:
        os.environ["SHOPML_HOME"] = home
        events, truth = generated_shop(Path(home), seed, first_party)
        split, periods, _ = labelled_periods_of(events, SHOP_PERIOD_DAYS, SHOP_PERIOD_DAYS, SHOP_MATURITY_DAYS)
    return split, periods, truth


def file_events(path: Path, home: Path):
    """A file in the public fraud layout, through the ``fraud_orders`` adapter."""
    import polars as pl

    from pipeline.core.settings import get_state_paths
    from pipeline.data.adapters import FRAUD_ORDERS_TIME_FORMATS, parse_timestamp
    from pipeline.data.dataset import load_events
    from pipeline.data.ingest import Interval, allow_source_folder, ingest_events

    head = pl.read_csv(path, n_rows=0).columns
    required = {"user_id", "signup_time", "purchase_time", "purchase_value", "device_id", "ip_address", "class"}
    if missing := sorted(required - set(head)):
        raise SystemExit(f"{path}: not in the public fraud layout; missing columns {', '.join(missing)}")
    # The file's whole days, its times read in the formats the adapter reads (rows it cannot read
    # are its to quarantine, and named then).
    times = pl.read_csv(path, columns=["signup_time", "purchase_time"], infer_schema=False)
    read = pl.concat([times["signup_time"], times["purchase_time"]]).to_frame("t")
    days = read.select(parse_timestamp(pl.col("t"), FRAUD_ORDERS_TIME_FORMATS).dt.truncate("1d"))["t"].drop_nulls()
    if days.is_empty():
        raise SystemExit(f"{path}: no signup_time or purchase_time in a format the fraud_orders adapter reads")
    first, last = days.min(), days.max()
    interval = Interval(first, last + timedelta(days=1))
    paths = get_state_paths()
    allow_source_folder(path)  # the file this command names
    result = ingest_events(interval, str(path), paths, adapter_name="fraud_orders")
    print(
        f"ingested {result.rows_accepted:,} of {result.rows_read:,} events of {path.name} "
        f"(signups, purchases, chargebacks; quarantined: {dict(result.quarantine_reasons)})"
    )
    return load_events(paths.staging)


def labelled_periods_of(events, valid_days: int, test_days: int, maturity_days: int):
    """The split of ``events``' whole days (train | gap | validation | gap | test | gap), each
    period's labelled orders with their features, and how many orders the events hold."""
    from pipeline.families.fraud.features import labelled_features
    from pipeline.families.fraud.split import fraud_split

    first = events["event_time"].min().replace(hour=0, minute=0, second=0, microsecond=0)
    end = events["event_time"].max().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    split = fraud_split(first, end, valid_days, test_days, maturity_days)
    periods, orders = labelled_features(events, split, maturity_days)
    return split, periods, orders


def fraud_benchmark(
    events, valid_days: int, test_days: int, maturity_days: int, budget: int, samples: int = 500, truth=None
):
    """The three scorers' figures on the test orders, with the network-minus-floor intervals. With
    ``truth`` (the sessions of every fraudulent order, known for a generated shop only: a frame of
    ``session_id``, with its ``scenario`` where known), the same figures again
    against it: the test frauds whose chargeback had not arrived when the period was labelled count
    as fraud there, not as genuine. With scenarios, also how many of each scenario's frauds each
    scorer's bands stop, and its AUC-PR without them (``by_scenario``)."""
    from pipeline.families.fraud import decisions
    from pipeline.families.fraud.train import figures as fraud_figures
    from pipeline.families.fraud.train import fit_scorers

    started = time.perf_counter()
    split, periods, orders = labelled_periods_of(events, valid_days, test_days, maturity_days)
    seconds_features = time.perf_counter() - started
    for name, rows in periods.items():
        if rows.height == 0 or rows["label"].sum() == 0:
            raise SystemExit(
                f"the {name} period ({split.to_dict()}) holds {rows.height} labelled orders and no fraud: "
                "thresholds and AUC-PR are undefined; give it more days (--valid-days, --test-days)"
            )
    train, valid, test = periods["train"], periods["valid"], periods["test"]
    policy = bench_policy(budget)
    fit_start = time.perf_counter()
    # The pipeline's own training step: each scorer with its bands chosen on validation.
    scorers, epochs = fit_scorers(train, valid, valid_days, policy, epochs=30, seed=0)
    seconds_fit = time.perf_counter() - fit_start
    y_test, amounts_test = test["label"].to_numpy(), test["amount"].to_numpy()
    figures, scores, decided, by_scenario = {}, {}, {}, {}
    for name, pyfunc in scorers.items():
        scores[name] = pyfunc.scores(test)
        decided[name] = pyfunc.bands.decide(scores[name])
        figures[name] = {**fraud_figures(pyfunc, test, test_days, policy), "bands": pyfunc.bands.to_dict()}
    _differences(figures, scores, decided, y_test, amounts_test, policy, samples, "")
    rows = {name: (rows.height, int(rows["label"].sum())) for name, rows in periods.items()}
    if truth is not None:
        true = test["session_id"].is_in(truth["session_id"].implode()).to_numpy().astype(float)
        rows["test_late"] = (int(((true == 1) & (y_test == 0)).sum()), int(true.sum()))
        for name in scorers:
            figures[name]["auc_pr_truth"] = decisions.average_precision(true, scores[name])
            costs = decisions.order_costs(decided[name], true, amounts_test, policy)
            figures[name]["cost_per_1000_truth"] = float(costs.mean() * 1000)
        _differences(figures, scores, decided, true, amounts_test, policy, samples, "_truth")
        if "scenario" in truth.columns:
            of_test = test.select("session_id").join(truth, on="session_id", how="left", maintain_order="left")
            scenario = of_test["scenario"].to_numpy()
            by_scenario = scenario_figures(true, scenario, scores, decided)
    return {
        "orders": orders,
        "rows": rows,
        "split": split.to_dict(),
        "models": figures,
        "epochs": epochs,
        "seconds_features": seconds_features,
        "seconds_fit": seconds_fit,
        "budget": budget,
        "policy": policy.to_dict(),
        "by_scenario": by_scenario,
    }


def scenario_figures(
    true: np.ndarray, scenario: np.ndarray, scores: dict[str, np.ndarray], decided: dict[str, np.ndarray]
) -> dict[str, dict]:
    """Each scenario's true frauds, per scorer: ``stopped``, how many of them its bands send to review
    or block; and ``auc_pr_truth_without``, the AUC-PR against the truth with that scenario's orders
    left out: how much of the scorer's distance from a perfect ranking the scenario holds.
    ``scenario`` is None on genuine orders."""
    from pipeline.families.fraud import decisions

    fraud = true == 1
    out: dict[str, dict] = {}
    for name in sorted({str(s) for s in scenario[fraud]}):
        mine = fraud & (scenario == name)
        row: dict = {"frauds": int(mine.sum())}
        for scorer, s in scores.items():
            row[scorer] = {
                "stopped": int((decided[scorer][mine] != decisions.APPROVE).sum()),
                "auc_pr_truth_without": decisions.average_precision(true[~mine], s[~mine]),
            }
        out[name] = row
    return out


def _differences(figures, scores, decided, labels, amounts, policy, samples: int, suffix: str) -> None:
    """The network minus each floor, AUC-PR and cost per 1,000 orders against ``labels``: 95%
    bootstrap intervals (resampling orders, the same resamples for every scorer), under
    ``auc_pr{suffix}_minus_<floor>`` and ``cost_per_1000{suffix}_minus_<floor>``."""
    from pipeline.families.fraud import decisions
    from pipeline.lifecycle.gate import bootstrap_sides

    costs = {name: decisions.order_costs(d, labels, amounts, policy) for name, d in decided.items()}
    groups = np.arange(labels.size)
    ap = bootstrap_sides(groups, scores, lambda v, at: decisions.average_precision(labels[at], v), samples, 0)
    cost = bootstrap_sides(groups, costs, lambda v, at: float(v.mean() * 1000), samples, 0)
    for floor in ("rules", "lightgbm"):
        for key, draws in (("auc_pr", ap), ("cost_per_1000", cost)):
            # A resample without a fraud has no AUC-PR (nan): the interval is over the others.
            diff = draws[NETWORK] - draws[floor]
            figures[NETWORK][f"{key}{suffix}_minus_{floor}"] = [
                float(np.nanquantile(diff, 0.025)),
                float(np.nanquantile(diff, 0.975)),
            ]


def print_figures(title: str, fig: dict) -> None:
    rows = fig["rows"]
    print(
        f"\n{title}: {fig['orders']:,} orders; train {rows['train'][0]:,} ({rows['train'][1]} fraud), "
        f"validation {rows['valid'][0]:,} ({rows['valid'][1]}), test {rows['test'][0]:,} ({rows['test'][1]})"
    )
    print(
        f"  review budget {fig['budget']} a day; features {fig['seconds_features']:.1f} s, "
        f"fit {fig['seconds_fit']:.1f} s"
    )
    print(
        f"  {'model':10} {'AUC-PR':>8} {'recall@budget':>14} {'cost/1000':>10} {'reviews/day':>12} {'blocked/day':>12}"
    )
    for name, m in fig["models"].items():
        print(
            f"  {name:10} {m['auc_pr']:8.3f} {m['recall_at_budget']:14.3f} {m['cost_per_1000']:10.1f} "
            f"{m['reviews_per_day']:12.1f} {m['blocked_per_day']:12.1f}"
        )
    net = fig["models"][NETWORK]
    _print_differences(net, "")
    if "test_late" in rows:
        late, true = rows["test_late"]
        print(
            f"  against the generator's truth: {true} test frauds, {late} of them labelled genuine above "
            "(no chargeback yet when the period was labelled)"
        )
        print(f"  {'model':10} {'AUC-PR':>8} {'cost/1000':>10}")
        for name, m in fig["models"].items():
            print(f"  {name:10} {m['auc_pr_truth']:8.3f} {m['cost_per_1000_truth']:10.1f}")
        _print_differences(net, "_truth")
        best = max(fig["models"][floor]["auc_pr_truth"] for floor in ("rules", "lightgbm"))
        print(
            f"  headroom: the better floor ranks the true frauds at AUC-PR {best:.3f}; no scorer can lead it "
            f"by more than {1 - best:.3f} there"
        )
    if fig.get("by_scenario"):
        names = list(fig["models"])
        print(
            "  per scenario of the truth: its test frauds; per scorer, how many of them its bands stop "
            "(review or block), and its AUC-PR, truth, without the scenario"
        )
        print(f"  {'scenario':18} {'frauds':>6} " + " ".join(f"{n:>16}" for n in names))
        for scenario, row in fig["by_scenario"].items():
            cells = " ".join(f"{row[n]['stopped']:>7} {row[n]['auc_pr_truth_without']:8.4f}" for n in names)
            print(f"  {scenario:18} {row['frauds']:>6} {cells}")


def _print_differences(net: dict, suffix: str) -> None:
    for floor in ("rules", "lightgbm"):
        a, c = net[f"auc_pr{suffix}_minus_{floor}"], net[f"cost_per_1000{suffix}_minus_{floor}"]
        print(
            f"  {NETWORK} - {floor}: AUC-PR 95% interval [{a[0]:+.3f}, {a[1]:+.3f}], "
            f"cost/1000 [{c[0]:+.1f}, {c[1]:+.1f}]"
        )


def promoted(fig: dict) -> str:
    """What the family's gate (policy.yaml fraud: cost per 1,000 orders over both floors) would serve
    on these figures with no champion: the network if its cost interval lies below zero against
    every floor, else the cheapest floor."""
    net = fig["models"][NETWORK]
    if all(net[f"cost_per_1000_minus_{floor}"][1] < 0 for floor in ("rules", "lightgbm")):
        return NETWORK
    return min(("rules", "lightgbm"), key=lambda floor: fig["models"][floor]["cost_per_1000"])


def _json_figures(fig: dict) -> dict:
    return {
        **{
            name: {k: m[k] for k in ("auc_pr", "recall_at_budget", "cost_per_1000", *TRUTH_KEYS) if k in m}
            for name, m in fig["models"].items()
        },
        "promoted": promoted(fig),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a file in the public e-commerce fraud layout")
    parser.add_argument("--json", type=Path, help="write the figures here (the file's, else the generated shop's)")
    parser.add_argument("--skip-generated", action="store_true", help="only the file")
    parser.add_argument("--valid-days", type=int, help=f"default: {SHOP_PERIOD_DAYS} (generated shop), 14 (file)")
    parser.add_argument("--test-days", type=int, help=f"default: {SHOP_PERIOD_DAYS} (generated shop), 14 (file)")
    parser.add_argument("--budget", type=int, default=BUDGET, help="reviews a day")
    parser.add_argument("--shop-seed", type=int, default=2, help="the generated shop's seed (same recipe)")
    parser.add_argument(
        "--first-party",
        type=float,
        default=0.0,
        help="genuine orders disputed by their own customers, per order (first-party fraud; default 0)",
    )
    args = parser.parse_args(argv)
    if args.data is not None and not args.data.is_file():
        print(f"{args.data}: no such file", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    out = None
    with tempfile.TemporaryDirectory(prefix="shopml-bench-fraud-") as home:
        os.environ["SHOPML_HOME"] = home
        if not args.skip_generated:
            valid, test = args.valid_days or SHOP_PERIOD_DAYS, args.test_days or SHOP_PERIOD_DAYS
            events, truth = generated_shop(Path(home), args.shop_seed, args.first_party)
            fig = fraud_benchmark(events, valid, test, SHOP_MATURITY_DAYS, args.budget, truth=truth)
            print_figures(
                f"generated shop (seed {args.shop_seed}, {SHOP_DAYS} days, {SHOP_EVENTS_PER_DAY:,} events a day, "
                f"2% fraud{f', {args.first_party:.0%} first-party' if args.first_party else ''})",
                fig,
            )
            out = _json_figures(fig)
        if args.data is not None:
            valid, test = args.valid_days or 14, args.test_days or 14
            fig = fraud_benchmark(file_events(args.data, Path(home)), valid, test, 0, args.budget)
            print_figures(f"{args.data.name} (labels all known: maturity 0)", fig)
            out = _json_figures(fig)
    if args.json and out is not None:
        args.json.write_text(json.dumps(out, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
