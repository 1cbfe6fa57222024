"""Demand forecasts and price elasticities: UCI Online Retail (or any file in its layout) and the
generated shop, every model beside the floors, on the same rows.

Protocol (the issue's): weekly demand (purchases minus returns, UCI's cancelled invoices) of the
500 best-selling StockCodes of the period before the first backtest origin; 6 rolling origins, a
4-week horizon, 2 weeks apart, the last one leaving 4 whole weeks before the data's last whole
week ends. At each origin the forecaster is trained on every row whose target lies before it; the
floors (naive, seasonal naive, ETS or Croston) forecast the same rows. The objective and the
number of boosting rounds are chosen once, at a validation origin 4 weeks before the first
backtest origin, on what lies before it: no setting is chosen on a backtest origin.

Elasticities: double ML per item (``pipeline.families.price.elasticity``) on the periods before
the last origin, beside a naive per-item log-log regression of the same rows.

The generated shop: 60 items in 4 categories, 240 days, 30,000 events a day, repeat sessions off
(they make yesterday's price matter today, which no single elasticity describes), daily periods,
a 7-day horizon; the true elasticities are known (``truth/elasticity.csv``), so the benchmark
prints both estimators' mean absolute error.

    python -m benchmarks.bench_price [--data FILE] [--json OUT] [--skip-generated]

``--json OUT`` writes, per model name (``naive``, ``seasonal_naive``, ``ets``, ``lightgbm``),
``wape`` and ``rmsse``, and ``elasticity_median`` (with its interval), for the file's backtest.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from benchmarks.data import sample

UCI = sample("uci_online_retail", "online_retail_by_day_concat.csv")  # $SHOPML_DATA_DIR, default ../shared/data


def forecast_benchmark(
    events, catalog, period: str, items: int, origins: int, horizon: int, step: int, history: int, season: int
):
    """The backtest and elasticities of one data set; a dict of figures."""
    import polars as pl

    from pipeline.data.dataset import split_by_time
    from pipeline.families.price import demand, elasticity
    from pipeline.families.price import forecast as fc
    from pipeline.families.price.features import whole_periods

    start = time.perf_counter()
    panel = whole_periods(demand.demand_panel(events, catalog, period), split_by_time(events, 0, 0).end, period)
    end = panel["period"].max() + demand.PERIODS[period]
    cut = demand.backtest_origins(end, period, origins, horizon, step)
    best = demand.top_items(panel, items, before=cut[0])
    panel = panel.filter(pl.col("item_id").is_in(best))
    p = demand.PERIODS[period]
    first = panel["period"].min() + p * min(4, history)
    config = fc.ForecastConfig(period, horizon, history, season)
    config = fc.choose_settings(panel.filter(pl.col("period") < cut[0]), config, first, cut[0] - p * horizon)
    classes = demand.item_classes(panel, cut[0])
    bt, _, rows = fc.backtest(panel, config, cut, first, classes)
    el_start = time.perf_counter()
    dml = elasticity.dml_rows(panel, config, first, cut[-1])
    fit = elasticity.estimate(dml, config)
    naive = elasticity.naive_loglog(dml)
    seconds_el = time.perf_counter() - el_start
    median, low, high = fit.median()
    return {
        "items": len(best),
        "origins": [o.date().isoformat() for o in cut],
        "rows": rows.height,
        "objective": config.objective,
        "rounds": config.rounds,
        "models": bt.metrics,
        "per_origin": bt.per_origin,
        "seasonal_naive_fallbacks": bt.fallbacks,
        "elasticity_median": median,
        "elasticity_median_interval": [low, high],
        "elasticity_items_estimated": int((fit.table["source"] == "item").sum()),
        "elasticity_overall": fit.overall,
        "naive_loglog_median": float(pl.Series(list(naive.values())).median()) if naive else float("nan"),
        "fit": fit,
        "naive": naive,
        "seconds_total": time.perf_counter() - start,
        "seconds_backtest": bt.seconds,
        "seconds_elasticity": seconds_el,
    }


def print_figures(name: str, figures: dict) -> None:
    from pipeline.families.price.forecast import improvement

    print(
        f"\n== {name}: {figures['items']} items, origins {', '.join(figures['origins'])}, {figures['rows']:,} rows; "
        f"objective {figures['objective']}, {figures['rounds']} rounds (chosen at the validation origin)"
    )
    print(f"{'model':>16} {'WAPE':>7} {'RMSSE':>7}   WAPE fast / slow / intermittent")
    for model, m in figures["models"].items():
        classes = " / ".join(f"{m.get(f'wape.{c}', float('nan')):.3f}" for c in ("fast", "slow", "intermittent"))
        print(f"{model:>16} {m['wape']:>7.4f} {m['rmsse']:>7.4f}   {classes}")
    floor, gain = improvement(figures["models"])
    print(f"lightgbm's WAPE is {gain:.1%} below the best floor ({floor})")
    if figures["seasonal_naive_fallbacks"]:
        print(
            f"seasonal naive: {figures['seasonal_naive_fallbacks']:,} of {figures['rows']:,} rows had no period one "
            "season back in their history and used the last period (naive)"
        )
    low, high = figures["elasticity_median_interval"]
    print(
        f"elasticity (double ML, shrunk): median {figures['elasticity_median']:.2f} (medians of the items' 95% "
        f"intervals {low:.2f} to {high:.2f}); {figures['elasticity_items_estimated']} items estimated on their own; "
        f"naive log-log median {figures['naive_loglog_median']:.2f}"
    )
    print(
        f"time: {figures['seconds_total']:.0f} s in all, backtest {figures['seconds_backtest']:.0f} s, "
        f"elasticities {figures['seconds_elasticity']:.0f} s"
    )


def uci_events(path: Path, home: Path):
    import polars as pl

    from pipeline.core.settings import get_state_paths
    from pipeline.data.dataset import catalog_history, load_events
    from pipeline.data.ingest import Interval, allow_source_folder, ingest_events

    paths = get_state_paths()
    head = pl.read_csv(path, n_rows=0)
    required = {"InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"}
    missing = sorted(required - set(head.columns) - {"Invoice", "Price", "Customer ID"})
    if missing and not {"Invoice", "Price", "Customer ID"} <= set(head.columns):
        raise SystemExit(f"{path}: not in the UCI Online Retail layout; missing columns {', '.join(missing)}")
    dates = pl.read_csv(path, columns=["InvoiceDate"], infer_schema=False)["InvoiceDate"].str.slice(0, 10)
    first, last = min(dates.drop_nulls()), max(dates.drop_nulls())
    interval = Interval(
        datetime.fromisoformat(first).replace(tzinfo=timezone.utc),
        datetime.fromisoformat(last).replace(tzinfo=timezone.utc) + timedelta(days=2),
    )
    allow_source_folder(path)  # the file this command names
    result = ingest_events(interval, str(path), paths, adapter_name="uci_online_retail")
    print(
        f"ingested {result.rows_accepted:,} of {result.rows_read:,} rows of {path.name} "
        f"(purchases and returns; quarantined: {dict(result.quarantine_reasons)})"
    )
    return load_events(paths.staging), catalog_history(paths.staging)


def generated_shop(home: Path):
    """The elasticity shop: its events, catalog history and true elasticities."""
    import polars as pl

    from pipeline.core.params import GenerateParams
    from pipeline.data.generate import TRUTH_FILE, generate_shop_data

    landing = home / "landing"
    params = GenerateParams(
        seed=1,
        days=240,
        events_per_day=30_000,
        initial_users=6_000,
        initial_items=60,
        categories=4,
        new_items_per_day=0.0,
        repeat_sessions=0.0,
        fraud_rate=0.0,  # fraud buys whatever the price: the truth holds for genuine demand
        format="parquet",
    )
    generate_shop_data(params, landing)
    events = pl.concat([pl.read_parquet(f) for f in sorted((landing / "events").glob("*.parquet"))])
    frames = []
    for f in sorted((landing / "catalog").glob("*.parquet")):
        day = datetime.fromisoformat(f.stem.removeprefix("catalog-")).replace(tzinfo=timezone.utc)
        frames.append(
            pl.read_parquet(f).with_columns(
                pl.lit(day + timedelta(days=1)).cast(pl.Datetime("us", "UTC")).alias("known_from")
            )
        )
    return events, pl.concat(frames), pl.read_csv(landing / TRUTH_FILE)


def elasticity_errors(figures: dict, truth) -> dict:
    """Mean absolute error of the shrunk double-ML and the naive estimates against the truth."""
    import polars as pl

    table = figures["fit"].table.join(truth.select("item_id", pl.col("elasticity").alias("true")), on="item_id")
    dml = (table["elasticity"] - table["true"]).abs().mean()
    inside = ((table["low"] <= table["true"]) & (table["true"] <= table["high"])).mean()
    naive = table.with_columns(
        pl.col("item_id").replace_strict(figures["naive"], default=None, return_dtype=pl.Float64).alias("naive")
    )
    naive_mae = (naive["naive"] - naive["true"]).abs().mean()
    return {"items": table.height, "dml_mae": float(dml), "naive_mae": float(naive_mae), "coverage_95": float(inside)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=UCI, help="a file in the UCI Online Retail layout")
    parser.add_argument("--json", type=Path, help="write the file's figures here")
    parser.add_argument("--skip-generated", action="store_true", help="only the file")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"{args.data}: no such file (set SHOPML_DATA_DIR, or run make data)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="shopml-bench-price-") as home:
        os.environ["SHOPML_HOME"] = home
        events, catalog = uci_events(args.data, Path(home))
        uci = forecast_benchmark(events, catalog, "week", 500, 6, 4, 2, 52, 52)
        print_figures(f"{args.data.name} (weekly)", uci)
        print(
            "  note: a cancelled invoice is a return and lowers that week's demand; the price is the mean price "
            "paid, which falls as the order grows (wholesale tiers): on this data the price follows the "
            "quantity, not the reverse, so neither elasticity is a price response a shop could act on"
        )
        if args.json:
            out = {m: {"wape": v["wape"], "rmsse": v["rmsse"]} for m, v in uci["models"].items()}
            out["elasticity_median"] = uci["elasticity_median"]
            out["elasticity_median_interval"] = uci["elasticity_median_interval"]
            out["naive_loglog_median"] = uci["naive_loglog_median"]
            out["promoted"] = "lightgbm"
            args.json.write_text(json.dumps(out, indent=2))
            print(f"wrote {args.json}")
        if not args.skip_generated:
            events, catalog, truth = generated_shop(Path(home) / "generated")
            shop = forecast_benchmark(events, catalog, "day", 60, 6, 7, 7, 28, 7)
            print_figures("generated shop (daily, 60 items)", shop)
            errors = elasticity_errors(shop, truth)
            print(
                f"elasticity against the truth over {errors['items']} items: double ML (shrunk) mean absolute error "
                f"{errors['dml_mae']:.3f}, 95% intervals hold the truth for {errors['coverage_95']:.0%}; "
                f"naive log-log {errors['naive_mae']:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
