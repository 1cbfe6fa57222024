"""What the ``purchase_propensity`` service computes, without HTTP: its request schemas, the snapshot
tables it reads (the aggregates the features are computed from), and the scoring of a batch of
requests. The service (``service.PropensityService``) calls these from its batch thread; ``make
bench-serve`` calls the same methods for the raw ceiling.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl
from pydantic import BaseModel, Field, model_validator

from pipeline.data.dataset import catalog_as_of
from pipeline.families.purchase_propensity.features import PROPENSITY_DENSE, assemble_propensity, propensity_tables
from pipeline.serving.api import Id, Strict

MAX_CANDIDATES = 1000
INPUT_COLUMNS = ("item_id", "category", "brand", *PROPENSITY_DENSE)
# The key each snapshot table is looked up by, for one candidate batch.
TABLE_KEYS = {
    "user_item": ["user_id", "item_id"],
    "recency": ["user_id", "item_id"],
    "user": ["user_id"],
    "item": ["item_id"],
    "catalog": ["item_id"],
    "affinity": ["user_id"],
}


class Candidate(Strict):
    """A (user, item) pair; features are looked up by user id unless the caller sends its own."""

    user_id: Id | None = None
    item_id: Id
    category: str | None = None
    brand: str | None = None
    features: dict[str, float] | None = Field(None, description=f"all of: {', '.join(PROPENSITY_DENSE)}")

    @model_validator(mode="after")
    def _features_complete(self) -> Candidate:
        if self.features is None:
            if self.user_id is None:
                raise ValueError("a candidate needs a user_id or its features")
            return self
        missing = [f for f in PROPENSITY_DENSE if f not in self.features]
        unknown = sorted(set(self.features) - set(PROPENSITY_DENSE))
        if missing or unknown:
            raise ValueError(
                f"features: missing {missing}, unknown {unknown}" if unknown else f"features: missing {missing}"
            )
        return self


class PropensityRequest(Strict):
    candidates: list[Candidate] = Field(min_length=1, max_length=MAX_CANDIDATES)


class Probabilities(BaseModel):
    probabilities: list[float]
    model_version: str


def snapshot_tables(events: pl.DataFrame, catalog: pl.DataFrame, cutoff: datetime) -> dict:
    """Every aggregate ``propensity_tables`` computes, over everyone, as of ``cutoff``."""
    tables = propensity_tables(events, catalog_as_of(catalog, cutoff), cutoff)  # the catalog as known then
    return {name: (table, TABLE_KEYS[name]) for name, table in tables.items()}


def propensity_inputs(snapshot, user_ids: list[str], item_ids: list[str]) -> pl.DataFrame:
    """The propensity pyfunc's input rows for these (user, item) pairs, in order, from the snapshot."""
    candidates = pl.DataFrame(
        {"user_id": user_ids, "item_id": item_ids}, schema={"user_id": pl.String, "item_id": pl.String}
    )
    # Only the rows of these users and items take part in the joins, not whole tables.
    tables = {name: snapshot.rows(name, candidates) for name in TABLE_KEYS}
    return assemble_propensity(candidates, tables).select(*INPUT_COLUMNS)


class PropensityScorer:
    """The propensity pyfunc (``PropensityPyfunc``) and the feature snapshot."""

    def __init__(self, pyfunc, snapshot) -> None:
        self.pyfunc, self.snapshot = pyfunc, snapshot
        self.catalog = snapshot.tables["catalog"].select("item_id", "category", "brand")

    def feature_rows(self, candidates: list) -> pl.DataFrame:
        """The pyfunc's input rows (``INPUT_COLUMNS``), one per candidate (``Candidate``), in
        order: looked up in the snapshot by user id, or the caller's features with the catalog's
        category and brand where the caller sent none."""
        looked_up = [i for i, c in enumerate(candidates) if c.features is None]
        sent = [i for i, c in enumerate(candidates) if c.features is not None]
        parts = []
        if looked_up:
            frame = propensity_inputs(
                self.snapshot, [candidates[i].user_id for i in looked_up], [candidates[i].item_id for i in looked_up]
            )
            parts.append(frame.with_columns(pl.Series("_order", looked_up, dtype=pl.Int64)))
        if sent:
            given = pl.DataFrame(
                {
                    "_order": sent,
                    "item_id": [candidates[i].item_id for i in sent],
                    "_category": [candidates[i].category for i in sent],
                    "_brand": [candidates[i].brand for i in sent],
                    **{f: [float(candidates[i].features[f]) for i in sent] for f in PROPENSITY_DENSE},
                },
                schema_overrides={
                    "_order": pl.Int64,
                    "_category": pl.String,
                    "_brand": pl.String,
                    **dict.fromkeys(PROPENSITY_DENSE, pl.Float64),
                },
            )
            given = given.join(self.catalog, on="item_id", how="left", maintain_order="left").with_columns(
                pl.coalesce("_category", "category").alias("category"), pl.coalesce("_brand", "brand").alias("brand")
            )
            parts.append(given)
        frame = pl.concat(
            [
                p.select("_order", *INPUT_COLUMNS).with_columns(pl.col(f).cast(pl.Float64) for f in PROPENSITY_DENSE)
                for p in parts
            ]
        )
        return frame.sort("_order").drop("_order")

    def score_requests(self, requests: list[list]) -> list[list[float]]:
        """The candidates of a batch of requests: their feature rows assembled in one step, then one
        forward pass; probabilities per request."""
        frame = self.feature_rows([c for candidates in requests for c in candidates]).to_pandas()
        probabilities = self.pyfunc.predict(None, frame)["probability"].astype(float).tolist()
        out, start = [], 0
        for candidates in requests:
            out.append(probabilities[start : start + len(candidates)])
            start += len(candidates)
        return out
