"""What the services compute, without HTTP: ranking a batch of recommendation requests, scoring a
batch of propensity requests. The services (``next_item``, ``propensity``) call these from their
batch thread; ``make bench-serve`` calls the same methods for each path's raw ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from pipeline.families.purchase_propensity.features import PROPENSITY_DENSE

INPUT_COLUMNS = ("item_id", "category", "brand", *PROPENSITY_DENSE)


@dataclass
class Row:
    """One recommendation request as the batch sees it: a packaged user's state row, or a history
    to encode; the number of items wanted and the items never to return."""

    state_row: int | None
    history: list[str] | None
    k: int
    exclude: list[str]


class NextItemRanker:
    """The recommender pyfunc (``SASRecPyfunc``), the feature snapshot and the packaged user states."""

    def __init__(self, pyfunc, snapshot, states) -> None:
        self.pyfunc, self.snapshot, self.states = pyfunc, snapshot, states

    def rank_rows(self, rows: list[Row]) -> list[tuple[list[str], list[float], str]]:
        """One model call for a batch: packaged users from their states, the others through the
        transformer; (items, scores, source) per row, in the rows' order."""
        from pipeline.families.next_item.pyfunc import UserStates

        known = [i for i, r in enumerate(rows) if r.state_row is not None]
        fresh = [i for i, r in enumerate(rows) if r.state_row is None]
        parts = []
        if known:
            parts.append(self.states.take([rows[i].state_row for i in known]))
        if fresh:
            parts.append(self.pyfunc.user_states(self.pyfunc.encode_many([rows[i].history for i in fresh])))
        order = known + fresh
        items, scores, sources = self.pyfunc.rank_lists(UserStates.cat(parts), [rows[i].k for i in order],
                                                        [rows[i].exclude for i in order])
        answers = [None] * len(rows)
        for position, i in enumerate(order):
            answers[i] = (items[position], scores[position], sources[position])
        return answers


class PropensityScorer:
    """The propensity pyfunc (``PropensityPyfunc``) and the feature snapshot."""

    def __init__(self, pyfunc, snapshot) -> None:
        self.pyfunc, self.snapshot = pyfunc, snapshot
        self.catalog = snapshot.tables["catalog"].select("item_id", "category", "brand")

    def feature_rows(self, candidates: list) -> pl.DataFrame:
        """The pyfunc's input rows (``INPUT_COLUMNS``), one per candidate (``api.Candidate``), in
        order: looked up in the snapshot by user id, or the caller's features with the catalog's
        category and brand where the caller sent none."""
        looked_up = [i for i, c in enumerate(candidates) if c.features is None]
        sent = [i for i, c in enumerate(candidates) if c.features is not None]
        parts = []
        if looked_up:
            frame = self.snapshot.propensity_inputs([candidates[i].user_id for i in looked_up],
                                                    [candidates[i].item_id for i in looked_up])
            parts.append(frame.with_columns(pl.Series("_order", looked_up, dtype=pl.Int64)))
        if sent:
            given = pl.DataFrame({
                "_order": sent, "item_id": [candidates[i].item_id for i in sent],
                "_category": [candidates[i].category for i in sent], "_brand": [candidates[i].brand for i in sent],
                **{f: [float(candidates[i].features[f]) for i in sent] for f in PROPENSITY_DENSE},
            }, schema_overrides={"_order": pl.Int64, "_category": pl.String, "_brand": pl.String,
                                 **dict.fromkeys(PROPENSITY_DENSE, pl.Float64)})
            given = given.join(self.catalog, on="item_id", how="left", maintain_order="left").with_columns(
                pl.coalesce("_category", "category").alias("category"), pl.coalesce("_brand", "brand").alias("brand"))
            parts.append(given)
        frame = pl.concat([p.select("_order", *INPUT_COLUMNS).with_columns(pl.col(f).cast(pl.Float64)
                                                                           for f in PROPENSITY_DENSE)
                           for p in parts])
        return frame.sort("_order").drop("_order")

    def score_requests(self, requests: list[list]) -> list[list[float]]:
        """The candidates of a batch of requests: their feature rows assembled in one step, then one
        forward pass; probabilities per request."""
        frame = self.feature_rows([c for candidates in requests for c in candidates]).to_pandas()
        probabilities = self.pyfunc.predict(None, frame)["probability"].astype(float).tolist()
        out, start = [], 0
        for candidates in requests:
            out.append(probabilities[start:start + len(candidates)])
            start += len(candidates)
        return out
