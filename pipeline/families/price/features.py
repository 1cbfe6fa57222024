"""The price family's feature set: the demand panel of the best sellers and the split in periods.

Files: ``panel.parquet`` (``demand.demand_panel`` of the ``items`` best sellers of the training
period, every period of the data) and ``items.json``. The split is in whole periods: the data's
last whole period ends it, ``test_days`` before that the test period starts (the gate's origins),
``valid_days`` before that the validation period (the objective and the rounds are chosen there).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from pipeline.core.errors import BadInput
from pipeline.core.params import TrainPriceParams
from pipeline.data.dataset import Dataset, TimeSplit, split_by_time
from pipeline.families.featureset import read_manifest
from pipeline.families.price.demand import PERIODS, demand_panel, first_period, last_period, top_items
from pipeline.families.price.forecast import ForecastConfig


def whole_periods(panel: pl.DataFrame, events_end: datetime, period: str) -> pl.DataFrame:
    """The panel without a last period the data does not cover to its end (a partial week)."""
    last = last_period(panel)
    return panel.filter(pl.col("period") < last) if last + PERIODS[period] > events_end else panel


def price_split(panel: pl.DataFrame, params: TrainPriceParams) -> TimeSplit:
    step = PERIODS[params.period]
    start, end = first_period(panel), last_period(panel) + step
    valid_end = end - timedelta(days=params.test_days)
    train_end = valid_end - timedelta(days=params.valid_days)
    first_origin = start + step * params.min_history
    if train_end <= first_origin:
        raise BadInput(
            f"the data holds {(end - start) // step} {params.period}(s): too few for {params.min_history} of "
            f"history, {params.valid_days} validation and {params.test_days} test day(s) and one to train on"
        )
    return TimeSplit(start, train_end, valid_end, end)


def config_of(params: TrainPriceParams) -> ForecastConfig:
    return ForecastConfig(
        params.period,
        params.horizon,
        params.history,
        params.season,
        rounds=params.rounds,
        learning_rate=params.learning_rate,
        num_leaves=params.num_leaves,
        min_data_in_leaf=params.min_data_in_leaf,
        seed=params.seed,
    )


@dataclass
class PriceFeatures:
    split: TimeSplit
    panel: pl.DataFrame
    items: list[str]
    counts: dict[str, int]


def price_features(events: pl.DataFrame, catalog_history: pl.DataFrame, params: TrainPriceParams) -> PriceFeatures:
    """The panel of the ``items`` best sellers of the training period, and the split."""
    full = demand_panel(events, catalog_history, params.period)
    full = whole_periods(full, split_by_time(events, 0, 0).end, params.period)
    split = price_split(full, params)
    items = top_items(full, params.items, before=split.train_end)
    panel = full.filter(pl.col("item_id").is_in(items))
    counts = {
        "items": len(items),
        "periods": panel["period"].n_unique(),
        "panel_rows": panel.height,
        "units": int(panel["units"].sum()),
        "returned": int(panel["returned"].sum()),
    }
    return PriceFeatures(split, panel, items, counts)


def write_features(out: Path, dataset: Dataset, params: TrainPriceParams):
    f = price_features(dataset.events(), dataset.catalog_history(), params)
    f.panel.write_parquet(out / "panel.parquet")
    (out / "items.json").write_text(json.dumps(f.items))
    return f.counts, f.split


def load_features(folder: Path) -> PriceFeatures:
    manifest = read_manifest(folder, "price")
    folder = Path(folder)
    return PriceFeatures(
        TimeSplit.from_dict(manifest["split"]),
        pl.read_parquet(folder / "panel.parquet"),
        json.loads((folder / "items.json").read_text()),
        manifest["counts"],
    )
