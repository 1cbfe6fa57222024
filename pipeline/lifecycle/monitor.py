"""Closing the loop: what serving answered, judged against what the shop's users did next.

For one model and one day (UTC), ``monitor`` runs three reports and logs them to MLflow:

1. **online quality**: the day's logged answers (``pipeline.data.predictions``) joined with the
   events that followed them in the ingested dataset. Next item: a request's target is the user's
   next item after the request time (repeats collapsed, as in training), within ``horizon_hours``;
   hit rate and NDCG at ``k`` of the served list, per request, averaged per user then over users
   (the offline evaluation's unit). Propensity: a candidate's label is whether the user bought the
   item within ``horizon_hours``; AUC, log loss and calibration (mean probability against the
   purchase rate; expected calibration error over ten bins) over every served candidate.
   Figures per model version and role (champion, challenger, shadow);
2. **drift**: the model's input features on that day against its training period (population
   stability index for numbers, Jensen-Shannon divergence for categories), and its served scores
   against the same version's earlier days; an HTML report;
3. **skew**: the features the service looked up in its snapshot for that day's users, against the
   same features recomputed offline from the dataset for the same users and cutoff; per feature,
   the share of users whose values differ.

Each day has one MLflow run in the experiment ``monitoring-<model>`` (a rerun of the day replaces
its figures, never adds a run), with the reports as artifacts; the figures are also set as tags
on each served model version (``online.<date>``), and the champion's run is the one the first
printed line names. ``retrain_decision`` then applies ``policy.yaml``'s ``monitoring`` rules:
retrain when drift or online quality crosses a threshold, at most once per cool-down.

PSI and Jensen-Shannon are computed here (scipy's ``jensenshannon``, a few lines of numpy for PSI)
rather than with Evidently: it would add a second, heavier dependency tree (its own pins of pandas,
numpy and pydantic) for two formulas, and its HTML reports are not needed in the task log.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from pipeline.core.settings import StatePaths

log = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "monitoring-"


class MonitoringError(ValueError):
    """Nothing to monitor (no champion, no log for the day), or a bad monitoring rule."""


# ---- Rules ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MonitoringPolicy:
    horizon_hours: float = 24.0        # how long after an answer the user's events count
    k: int = 10                        # ranking metrics at k (next item)
    metric: str = "hit_rate_at_10"     # the online metric of the first line and of the triggers
    min_users: int = 50                # fewer users: not evidence (no trigger, no online gate)
    max_drop: float = 0.5              # retrain when the online metric falls below (1 - this) x the offline one
    psi_threshold: float = 0.25        # a numeric feature drifted
    js_threshold: float = 0.1          # a categorical feature drifted (Jensen-Shannon divergence, base 2)
    drifted_features: int = 1          # retrain when at least this many input features drifted
    cooldown_hours: float = 72.0       # at most one evidence-triggered retrain per this period
    skew_tolerance: float = 0.01       # a share of users with skewed features above this is reported as FAIL
    # The online gate: a challenger (shadow or canary) is promotable only when its online metric over at
    # least online_min_users users is not significantly worse than the champion's over the same period.
    require_online_evidence: bool = False
    online_min_users: int = 200
    confidence: float = 0.95
    bootstrap_samples: int = 1000


def load_monitoring_policy(model: str, path: Path | None = None) -> MonitoringPolicy:
    from pipeline.lifecycle.gate import POLICY_ENV, POLICY_FILE

    path = Path(path or os.environ.get(POLICY_ENV) or POLICY_FILE)
    data = (yaml.safe_load(path.read_text()) or {}).get("monitoring") or {}
    section = dict(data.get(model) or {})
    known = set(MonitoringPolicy.__dataclass_fields__)
    unknown = sorted(set(section) - known)
    if unknown:
        raise MonitoringError(f"{path}: monitoring.{model}.{unknown[0]} is not a monitoring rule "
                              f"(rules: {', '.join(sorted(known))})")
    for key, value in section.items():
        default = MonitoringPolicy.__dataclass_fields__[key].default
        if isinstance(default, bool) != isinstance(value, bool) or (
                isinstance(default, int | float) and not isinstance(value, int | float)):
            raise MonitoringError(f"{path}: monitoring.{model}.{key} must be like {default!r}, got {value!r}")
    return MonitoringPolicy(**section)


# ---- Online quality ---------------------------------------------------------------------------------

def next_item_outcomes(answers: pl.DataFrame, events: pl.DataFrame, k: int, horizon: timedelta) -> pl.DataFrame:
    """One row per answer to a known user: the item the user went to next (null when they did
    nothing within ``horizon``), its rank in the served list (null when absent), hit and NDCG at k."""
    from pipeline.data.dataset import SEQUENCE_EVENT_TYPES
    from pipeline.families.next_item.features import collapse_repeats

    steps = collapse_repeats(events.filter(pl.col("event_type").is_in(SEQUENCE_EVENT_TYPES))
                             .select("user_id", "event_time", "item_id").sort("user_id", "event_time"))
    steps = steps.rename({"event_time": "next_time", "item_id": "next_item"}).sort("next_time")
    asked = answers.filter(pl.col("user_id") != "").sort("ts")
    joined = (asked.join_asof(steps, left_on="ts", right_on="next_time", by="user_id", strategy="forward",
                              tolerance=horizon, allow_exact_matches=False, check_sortedness=False)
              .filter(pl.col("next_item").is_not_null()).with_row_index("_r"))
    # The target's 0-based position in the served top k (null when it is not there).
    positions = (joined.select("_r", "next_item", pl.col("items").list.head(k)).explode("items")
                 .with_columns(pl.int_range(pl.len()).over("_r").alias("rank"))
                 .filter(pl.col("items") == pl.col("next_item")).group_by("_r").agg(pl.col("rank").min()))
    return (joined.join(positions, on="_r", how="left")
            .with_columns(pl.col("rank").is_not_null().cast(pl.Float64).alias("hit"),
                          pl.when(pl.col("rank").is_not_null()).then(1.0 / (pl.col("rank") + 2).log(2))
                          .otherwise(0.0).alias("ndcg"))
            .select("request_id", "ts", "user_id", "model_version", "role", "next_item", "rank", "hit", "ndcg"))


def propensity_outcomes(answers: pl.DataFrame, events: pl.DataFrame, horizon: timedelta) -> pl.DataFrame:
    """One row per served candidate of a known user: its probability and whether the user bought
    the item within ``horizon`` of the answer."""
    served = (answers.filter(pl.col("user_id") != "")
              .explode("items", "scores").rename({"items": "item_id", "scores": "probability"}))
    bought = events.filter(pl.col("event_type") == "purchase").select("user_id", "item_id",
                                                                      pl.col("event_time").alias("bought_at"))
    labelled = (served.join(bought, on=["user_id", "item_id"], how="left")
                .with_columns(((pl.col("bought_at") > pl.col("ts")) & (pl.col("bought_at") <= pl.col("ts") + horizon))
                              .fill_null(False).alias("_in"))
                .group_by("request_id", "item_id", maintain_order=True)
                .agg(pl.col("ts", "user_id", "model_version", "role", "probability").first(),
                     pl.col("_in").any().cast(pl.Float64).alias("label")))
    return labelled.select("request_id", "ts", "user_id", "model_version", "role", "item_id", "probability", "label")


def calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the row-weighted gap between mean probability and purchase rate
    over ten equal-width probability bins."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(p[mask].mean() - y[mask].mean())
    return float(total / max(len(p), 1))


def online_figures(model: str, outcomes: pl.DataFrame, k: int = 10) -> dict[str, float]:
    """The online metrics of one version's outcomes (see the module docstring)."""
    users = outcomes["user_id"].n_unique()
    if model == "next_item":
        per_user = outcomes.group_by("user_id").agg(pl.col("hit").mean(), pl.col("ndcg").mean())
        return {f"hit_rate_at_{k}": float(per_user["hit"].mean() or 0.0),
                f"ndcg_at_{k}": float(per_user["ndcg"].mean() or 0.0),
                "users": float(users), "requests": float(outcomes.height)}
    from pipeline.families.base import auc

    p = outcomes["probability"].to_numpy().astype(float)
    y = outcomes["label"].to_numpy().astype(float)
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    return {"auc": float(auc(y, p)) if 0 < y.sum() < len(y) else float("nan"),
            "log_loss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))) if len(y) else math.nan,
            "calibration_error": calibration_error(p, y), "mean_probability": float(p.mean()) if len(p) else math.nan,
            "purchase_rate": float(y.mean()) if len(y) else math.nan, "users": float(users),
            "candidates": float(len(y))}


# ---- Drift -------------------------------------------------------------------------------------------

def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` over the reference's
    quantile bins (ties merged), with both shares floored at 1e-4."""
    reference, current = np.asarray(reference, float), np.asarray(current, float)
    reference, current = reference[np.isfinite(reference)], current[np.isfinite(current)]
    if reference.size == 0 or current.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=edges.size + 1) / reference.size
    cur = np.bincount(np.searchsorted(edges, current, side="right"), minlength=edges.size + 1) / current.size
    ref, cur = np.maximum(ref, 1e-4), np.maximum(cur, 1e-4)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def js_divergence(reference: pl.Series, current: pl.Series) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two categorical distributions."""
    from scipy.spatial.distance import jensenshannon

    ref = reference.value_counts().rename({"count": "ref"})
    cur = current.value_counts().rename({"count": "cur"})
    name = reference.name
    both = ref.join(cur, on=name, how="full", coalesce=True).fill_null(0)
    if both.height == 0 or both["ref"].sum() == 0 or both["cur"].sum() == 0:
        return float("nan")
    return float(jensenshannon(both["ref"].to_numpy().astype(float), both["cur"].to_numpy().astype(float),
                               base=2) ** 2)


@dataclass
class FeatureDrift:
    feature: str
    kind: str               # numeric (PSI) or categorical (JS)
    statistic: str
    value: float
    threshold: float
    reference: str          # a short summary of each side, for the report
    current: str

    @property
    def drifted(self) -> bool:
        return bool(math.isfinite(self.value) and self.value > self.threshold)


def _numeric(name: str, ref: np.ndarray, cur: np.ndarray, threshold: float) -> FeatureDrift:
    def summary(x):
        x = np.asarray(x, float)
        return "empty" if x.size == 0 else "p10 {:.3g}, p50 {:.3g}, p90 {:.3g} (n {})".format(
            *np.quantile(x, [0.1, 0.5, 0.9]), x.size)

    return FeatureDrift(name, "numeric", "PSI", psi(ref, cur), threshold, summary(ref), summary(cur))


def _categorical(name: str, ref: pl.Series, cur: pl.Series, threshold: float) -> FeatureDrift:
    def summary(s: pl.Series) -> str:
        top = s.value_counts(sort=True).head(3)
        n = max(s.len(), 1)
        return ", ".join(f"{v} {c / n:.0%}" for v, c in top.iter_rows()) + f" (n {s.len()}, {s.n_unique()} values)"

    return FeatureDrift(name, "categorical", "JS", js_divergence(ref.rename(name), cur.rename(name)), threshold,
                        summary(ref), summary(cur))


def next_item_drift(reference: pl.DataFrame, current: pl.DataFrame, catalog: pl.DataFrame,
                    policy: MonitoringPolicy) -> list[FeatureDrift]:
    """The recommender's inputs: how popular (in the training period) the items users touch are,
    their categories, event types and prices, and the length of sessions.

    Items are compared by popularity band, not one by one: ten bands of equal training traffic
    (the most popular items first) and one band of items the training period never saw. With
    thousands of items, item-level divergence between a training period and one day is mostly
    sampling noise; the bands keep what matters: new items taking the traffic, or the head of the
    catalog losing it.
    """
    counts = reference.group_by("item_id").len().sort("len", "item_id", descending=[True, False])
    share = counts["len"].cum_sum() / max(counts["len"].sum(), 1)
    bands = counts.select("item_id", (share * 10).ceil().clip(1, 10).cast(pl.Int64).cast(pl.String)
                          .str.zfill(2).alias("item_band"))

    def enrich(events: pl.DataFrame) -> pl.DataFrame:
        return (events.join(catalog.select("item_id", "category", "price"), on="item_id", how="left")
                .join(bands, on="item_id", how="left").with_columns(pl.col("item_band").fill_null("new item")))
    ref, cur = enrich(reference), enrich(current)
    sessions = [e.group_by("session_id").len()["len"].to_numpy() for e in (ref, cur)]
    return [
        _categorical("item popularity band", ref["item_band"], cur["item_band"], policy.js_threshold),
        _categorical("category", ref["category"].fill_null("(unknown)"), cur["category"].fill_null("(unknown)"),
                     policy.js_threshold),
        _categorical("event_type", ref["event_type"], cur["event_type"], policy.js_threshold),
        _numeric("price", ref["price"].drop_nulls().to_numpy(), cur["price"].drop_nulls().to_numpy(),
                 policy.psi_threshold),
        _numeric("session_length", sessions[0], sessions[1], policy.psi_threshold),
    ]


def propensity_drift(reference: pl.DataFrame, current: pl.DataFrame, policy: MonitoringPolicy) -> list[FeatureDrift]:
    from pipeline.families.purchase_propensity.features import PROPENSITY_DENSE

    return [_numeric(f, reference[f].to_numpy(), current[f].to_numpy(), policy.psi_threshold)
            for f in PROPENSITY_DENSE]


# ---- Skew --------------------------------------------------------------------------------------------

@dataclass
class FeatureSkew:
    feature: str
    users: int
    skewed_users: int
    example: str = ""

    @property
    def share(self) -> float:
        return self.skewed_users / self.users if self.users else 0.0


def next_item_skew(snapshot, events: pl.DataFrame, users: list[str]) -> list[FeatureSkew]:
    """The served history and purchases of each user (snapshot lookups) against the same recomputed
    from the dataset's events before the snapshot's cutoff."""
    from pipeline.serving.snapshot import user_histories

    users = [u for u in users if snapshot.knows(u)]
    offline = user_histories(events.filter((pl.col("event_time") < snapshot.cutoff)
                                           & pl.col("user_id").is_in(users)))
    offline_rows = {r["user_id"]: r for r in offline.iter_rows(named=True)}
    out = []
    for feature, served_of in (("history", snapshot.history), ("purchased", snapshot.purchased)):
        skewed = [u for u in users if served_of(u) != list((offline_rows.get(u) or {}).get(
            "items" if feature == "history" else "purchased") or [])]
        out.append(FeatureSkew(feature, len(users), len(skewed), f"user_id {skewed[0]}" if skewed else ""))
    return out


def propensity_skew(snapshot, events: pl.DataFrame, catalog: pl.DataFrame, pairs: pl.DataFrame) -> list[FeatureSkew]:
    """Each dense feature the service looked up for (user, item) pairs against the same recomputed
    from the dataset as of the snapshot's cutoff."""
    from pipeline.families.purchase_propensity.features import (
        PROPENSITY_DENSE,
        assemble_propensity,
        propensity_tables,
    )

    pairs = pairs.select("user_id", "item_id").unique(maintain_order=True)
    served = snapshot.propensity_inputs(pairs["user_id"].to_list(), pairs["item_id"].to_list())
    cutoff = snapshot.cutoff
    offline = assemble_propensity(pairs, propensity_tables(events.filter(pl.col("event_time") < cutoff), catalog,
                                                           cutoff, pairs))
    users = pairs["user_id"]
    out = []
    for f in PROPENSITY_DENSE:
        a, b = served[f].to_numpy().astype(float), offline[f].to_numpy().astype(float)
        differs = ~np.isclose(a, b, rtol=1e-6, atol=1e-9)
        skewed = users.filter(pl.Series(differs)).unique()
        out.append(FeatureSkew(f, users.n_unique(), skewed.len(),
                               f"user_id {skewed[0]}: served {a[differs][0]:.6g}, offline {b[differs][0]:.6g}"
                               if skewed.len() else ""))
    return out


# ---- The day's monitoring ------------------------------------------------------------------------------

@dataclass
class MonitorResult:
    model: str
    day: str
    dataset_version: str
    champion_version: str
    online: dict[str, dict[str, float]]                 # "<role> v<version>" -> figures
    offline: dict[str, float]                            # the champion's offline test figures
    drift: list[FeatureDrift] = field(default_factory=list)
    prediction_drift: FeatureDrift | None = None
    skew: list[FeatureSkew] = field(default_factory=list)
    coverage_hours: float = 0.0                          # hours of events after the day's end in the dataset
    run_id: str = ""
    report: str = ""

    @property
    def champion_online(self) -> dict[str, float]:
        return self.online.get(f"champion v{self.champion_version}", {})

    def lines(self, policy: MonitoringPolicy) -> list[str]:
        figures = self.champion_online
        names = ([f"hit_rate_at_{policy.k}", f"ndcg_at_{policy.k}"] if self.model == "next_item"
                 else ["auc", "log_loss", "calibration_error", "mean_probability", "purchase_rate"])
        shown = ", ".join(f"{n} {figures.get(n, float('nan')):.4f}" for n in names)
        out = [f"online {self.model} {self.day}: {shown} over {int(figures.get('users', 0))} users"
               f" (champion v{self.champion_version}; offline test {policy.metric} "
               f"{self.offline.get(policy.metric, float('nan')):.4f})"]
        for key, other in self.online.items():
            if not key.startswith("champion"):
                out.append(f"online {self.model} {self.day} {key}: "
                           + ", ".join(f"{n} {other.get(n, float('nan')):.4f}" for n in names)
                           + f" over {int(other.get('users', 0))} users")
        drifted = [d for d in self.drift if d.drifted]
        worst = max(self.drift, key=lambda d: d.value / d.threshold if math.isfinite(d.value) else -1, default=None)
        out.append(f"drift {self.model} {self.day}: {len(drifted)} of {len(self.drift)} input features drifted"
                   + (f" ({', '.join(f'{d.feature} {d.statistic} {d.value:.3f}' for d in drifted)})" if drifted
                      else f" (largest: {worst.feature} {worst.statistic} {worst.value:.3f})" if worst else "")
                   + ("" if self.prediction_drift is None else
                      f"; served scores PSI {self.prediction_drift.value:.3f} vs earlier days")
                   + (f"; report {self.report}" if self.report else ""))
        skewed = [s for s in self.skew if s.skewed_users]
        users = max((s.users for s in self.skew), default=0)
        out.append(f"skew {self.model} {self.day}: " + (
            "; ".join(f"{s.feature} differs for {s.share:.1%} of {s.users} users (e.g. {s.example})" for s in skewed)
            if skewed else f"served features equal the offline ones for all {users} users"))
        return out


def _day_bounds(day: str) -> tuple[datetime, datetime]:
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def champion_context(paths: StatePaths, model: str) -> dict:
    """The champion's version, run, training split, features and Bento snapshot."""
    import bentoml

    from pipeline.core.tracking import CHAMPION, alias_version, mlflow_client
    from pipeline.serving.package import use_bento_home

    client = mlflow_client(paths)
    mv = alias_version(client, model, CHAMPION)
    if mv is None:
        raise MonitoringError(f"{model} has no champion: nothing is served to monitor")
    run = client.get_run(mv.run_id)
    snapshot_path = None
    if mv.tags.get("bento_tag"):
        use_bento_home(paths)
        try:
            snapshot_path = Path(bentoml.models.get(bentoml.get(mv.tags["bento_tag"]).info.args["snapshot_tag"]).path)
        except Exception as exc:   # a Bento store without it: the skew report says so
            log.warning("the champion's snapshot is not in this Bento store: %s", exc)
    return {"version": str(mv.version), "run": run, "client": client, "snapshot": snapshot_path,
            "features_path": run.data.tags.get("features_path"),
            "split": {k.removeprefix("split."): v for k, v in run.data.params.items() if k.startswith("split.")}}


def monitor(paths: StatePaths, model: str, day: str, dataset_version: str | None = None,
            policy: MonitoringPolicy | None = None, log_to_mlflow: bool = True) -> MonitorResult:
    """Online quality, drift and skew of ``model`` on ``day``; logged to MLflow (see the module
    docstring). The events come from ``dataset_version`` (default: the current one)."""
    from pipeline.data.predictions import default_root, read_predictions
    from pipeline.data.version import open_dataset, resolve_dataset_version

    policy = policy or load_monitoring_policy(model)
    champion = champion_context(paths, model)
    version = resolve_dataset_version(paths, dataset_version)
    dataset = open_dataset(paths, version.version)
    events = dataset.events()
    start, end = _day_bounds(day)
    root = default_root() or str(paths.home / "predictions")
    answers = read_predictions(root, model, day)
    horizon = timedelta(hours=policy.horizon_hours)

    online: dict[str, dict[str, float]] = {}
    outcomes = pl.DataFrame()
    if answers.height:
        outcomes = (next_item_outcomes(answers, events, policy.k, horizon) if model == "next_item"
                    else propensity_outcomes(answers, events, horizon))
        for (role, mv), part in sorted(outcomes.group_by("role", "model_version"), key=lambda g: g[0]):
            online[f"{role} v{mv}"] = online_figures(model, part, policy.k)
    last = events["event_time"].max()
    coverage = max(0.0, (last - end).total_seconds() / 3600) if last is not None else 0.0

    run = champion["run"]
    offline = {k.removeprefix("test_"): v for k, v in run.data.metrics.items() if k.startswith("test_")}
    if model == "next_item":
        offline.setdefault(policy.metric, offline.get(policy.metric.replace("hit_rate", "recall"), math.nan))
    result = MonitorResult(model, day, version.version, champion["version"], online, offline,
                           coverage_hours=coverage)

    day_events = events.filter((pl.col("event_time") >= start) & (pl.col("event_time") < end))
    catalog = dataset.catalog(as_of=end)
    if model == "next_item":
        split = champion["split"]
        train_start = datetime.fromisoformat(split["start"])
        train_end = datetime.fromisoformat(split["train_end"])
        reference = events.filter((pl.col("event_time") >= train_start) & (pl.col("event_time") < train_end))
        result.drift = next_item_drift(reference, day_events, catalog, policy)
    else:
        from pipeline.core.params import load_params
        from pipeline.families.purchase_propensity.features import propensity_rows

        params = load_params().train_propensity
        reference = pl.read_parquet(Path(champion["features_path"]) / "train.parquet")
        current = propensity_rows(events, catalog, start, timedelta(days=params.horizon_days),
                                  timedelta(days=params.lookback_days))
        result.drift = propensity_drift(reference, current, policy)
    result.prediction_drift = _prediction_drift(root, model, day, answers, champion["version"], policy)

    if champion["snapshot"] is not None:
        from pipeline.serving.snapshot import FeatureSnapshot

        snapshot = FeatureSnapshot.load(champion["snapshot"])
        served_users = answers.filter(pl.col("user_id") != "")["user_id"].unique().sort().to_list()
        if model == "next_item":
            users = served_users or snapshot.histories["user_id"].head(1000).to_list()
            result.skew = next_item_skew(snapshot, events, users[:5000])
        else:
            pairs = (answers.filter(pl.col("user_id") != "").explode("items")
                     .select("user_id", pl.col("items").alias("item_id")).head(20_000))
            if pairs.height == 0:
                pairs = snapshot.tables["user_item"].select("user_id", "item_id").head(2000)
            result.skew = propensity_skew(snapshot, events, dataset.catalog(as_of=snapshot.cutoff), pairs)

    out = paths.home / "reports" / "monitoring" / model / day
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift.html").write_text(_html(result, policy))
    (out / "summary.json").write_text(json.dumps(_summary(result, policy), indent=2, default=str))
    result.report = str(out / "drift.html")
    if outcomes.height:
        outcomes.write_parquet(out / "outcomes.parquet")
    if log_to_mlflow:
        _log(paths, result, policy, champion["client"], out)
    return result


def _prediction_drift(root: str, model: str, day: str, answers: pl.DataFrame, version: str,
                      policy: MonitoringPolicy) -> FeatureDrift | None:
    """The champion's served top score (next item) or probabilities on this day against the same
    version's answers of the seven days before; None without both."""
    from pipeline.data.predictions import read_predictions

    def scores(frame: pl.DataFrame) -> np.ndarray:
        frame = frame.filter((pl.col("role") == "champion") & (pl.col("model_version") == version))
        column = pl.col("scores").list.first() if model == "next_item" else pl.col("scores").explode()
        return frame.select(column).to_series().drop_nulls().to_numpy()

    current = scores(answers)
    before = [scores(read_predictions(root, model, date.fromisoformat(day) - timedelta(days=d))) for d in range(1, 8)]
    reference = np.concatenate(before) if before else np.zeros(0)
    if current.size == 0 or reference.size == 0:
        return None
    return _numeric("served score", reference, current, policy.psi_threshold)


def _summary(result: MonitorResult, policy: MonitoringPolicy) -> dict:
    return {"model": result.model, "day": result.day, "dataset_version": result.dataset_version,
            "champion_version": result.champion_version, "online": result.online, "offline": result.offline,
            "coverage_hours": result.coverage_hours,
            "drift": [{**asdict(d), "drifted": d.drifted} for d in result.drift],
            "prediction_drift": None if result.prediction_drift is None else asdict(result.prediction_drift),
            "skew": [{**asdict(s), "share": s.share} for s in result.skew], "lines": result.lines(policy)}


def _html(result: MonitorResult, policy: MonitoringPolicy) -> str:
    e = html.escape
    rows = "".join(
        f"<tr class='{'bad' if d.drifted else ''}'><td>{e(d.feature)}</td><td>{d.statistic}</td>"
        f"<td>{d.value:.4f}</td><td>{d.threshold:g}</td><td>{'DRIFT' if d.drifted else 'ok'}</td>"
        f"<td>{e(d.reference)}</td><td>{e(d.current)}</td></tr>"
        for d in result.drift + ([result.prediction_drift] if result.prediction_drift else []))
    skew = "".join(f"<tr class='{'bad' if s.share > policy.skew_tolerance else ''}'><td>{e(s.feature)}</td>"
                   f"<td>{s.users}</td><td>{s.skewed_users}</td><td>{s.share:.2%}</td><td>{e(s.example)}</td></tr>"
                   for s in result.skew)
    online = "".join(f"<tr><td>{e(k)}</td><td>{e(', '.join(f'{n} {v:.4f}' for n, v in f.items()))}</td></tr>"
                     for k, f in result.online.items())
    lines = "".join(f"<li><code>{e(line)}</code></li>" for line in result.lines(policy))
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{e(result.model)} {e(result.day)}: online quality, drift, skew</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}tr.bad{{background:#fdd}}</style></head><body>
<h1>{e(result.model)} on {e(result.day)}</h1>
<p>Champion v{e(result.champion_version)}; dataset version {e(result.dataset_version)};
{result.coverage_hours:.0f} h of events after the day in the dataset (horizon {policy.horizon_hours:g} h).</p>
<ul>{lines}</ul>
<h2>Online quality</h2><table><tr><th>role and version</th><th>figures</th></tr>{online}</table>
<h2>Drift against the training period</h2><table><tr><th>feature</th><th>statistic</th><th>value</th>
<th>threshold</th><th></th><th>reference</th><th>this day</th></tr>{rows}</table>
<h2>Training/serving skew</h2><table><tr><th>feature</th><th>users</th><th>differ</th><th>share</th>
<th>example</th></tr>{skew}</table></body></html>"""


def _log(paths: StatePaths, result: MonitorResult, policy: MonitoringPolicy, client, out: Path) -> None:
    """One MLflow run per (model, day), reused by a rerun; tags on each served version."""
    import mlflow

    from pipeline.core.tracking import use_experiment

    experiment_id = use_experiment(paths, EXPERIMENT_PREFIX + result.model)
    found = client.search_runs([experiment_id], f"tags.shopml.monitor_day = '{result.day}'", max_results=1)
    run_id = found[0].info.run_id if found else client.create_run(
        experiment_id, run_name=f"{result.model}-{result.day}",
        tags={"shopml.monitor_day": result.day, "shopml.model": result.model}).info.run_id
    tags = {"champion_version": result.champion_version, "dataset_version": result.dataset_version,
            "report": "reports/drift.html", "summary": "\n".join(result.lines(policy))[:4900]}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    metrics = []
    for key, figures in result.online.items():
        prefix = "online" if key.startswith("champion") else "online_" + key.split()[0]
        metrics += [mlflow.entities.Metric(f"{prefix}_{n}", float(v), 0, 0) for n, v in figures.items()
                    if v is not None and math.isfinite(v)]
    metrics += [mlflow.entities.Metric(f"drift_{d.feature.replace(' ', '_')}", d.value, 0, 0) for d in result.drift
                if math.isfinite(d.value)]
    metrics += [mlflow.entities.Metric(f"skew_share_{s.feature}", s.share, 0, 0) for s in result.skew]
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("drift.html", "summary.json"):
            target = Path(tmp) / name
            target.write_bytes((out / name).read_bytes())
            client.log_artifact(run_id, str(target), artifact_path="reports")
    client.set_terminated(run_id)
    result.run_id = run_id
    for key, figures in result.online.items():
        version = key.split(" v", 1)[1]
        short = " ".join(f"{n}={v:.4f}" for n, v in figures.items() if v is not None and math.isfinite(v))
        client.set_model_version_tag(result.model, version, f"online.{result.day}", f"{key.split()[0]}: {short}"[:4900])
        client.set_model_version_tag(result.model, version, "online.last_day", result.day)
        client.set_model_version_tag(result.model, version, "online.last_run_id", run_id)


# ---- Retraining on evidence ------------------------------------------------------------------------------

@dataclass
class RetrainDecision:
    model: str
    day: str
    reasons: list[str]
    requested: bool
    suppressed_by: dict | None = None   # the earlier request whose cool-down holds this one back

    def line(self) -> str:
        if not self.reasons:
            return f"retrain {self.model} {self.day}: not needed (no threshold crossed)"
        why = "; ".join(self.reasons)
        if self.requested:
            return f"retrain {self.model} {self.day}: REQUESTED ({why})"
        last = self.suppressed_by or {}
        return (f"retrain {self.model} {self.day}: held back by the cool-down until {last.get('until')} "
                f"(requested on {last.get('day')}: {last.get('reason')}); would be: {why}")


def requests_file(paths: StatePaths, model: str) -> Path:
    return paths.home / "monitoring" / model / "retrain_requests.json"


def retrain_reasons(result: MonitorResult | None, policy: MonitoringPolicy, no_champion: bool = False) -> list[str]:
    """Which of ``policy``'s thresholds the day's reports cross, in words."""
    if no_champion:
        return ["no champion yet"]
    reasons = []
    drifted = [d for d in result.drift if d.drifted]
    if drifted and len(drifted) >= policy.drifted_features:
        reasons.append("drift: " + ", ".join(f"{d.feature} {d.statistic} {d.value:.3f} > {d.threshold:g}"
                                             for d in drifted))
    figures = result.champion_online
    value, offline = figures.get(policy.metric), result.offline.get(policy.metric)
    users = int(figures.get("users", 0))
    if value is not None and offline is not None and math.isfinite(offline) and users >= policy.min_users \
            and value < (1 - policy.max_drop) * offline:
        reasons.append(f"online {policy.metric} {value:.4f} < {1 - policy.max_drop:.2f} x offline {offline:.4f} "
                       f"over {users} users")
    return reasons


def retrain_decision(paths: StatePaths, model: str, day: str, reasons: list[str], policy: MonitoringPolicy,
                     dataset_version: str = "") -> RetrainDecision:
    """Request a retrain when there are reasons, unless one was requested less than the cool-down
    before (on the monitored days' clock: the end of ``day``). A request is recorded in
    ``$SHOPML_HOME/monitoring/<model>/retrain_requests.json``, under the lock every worker shares."""
    from pipeline.core.locks import shared_lock

    decision = RetrainDecision(model, day, reasons, False)
    if not reasons:
        return decision
    at = _day_bounds(day)[1]
    path = requests_file(paths, model)
    with shared_lock(paths, f"retrain-requests-{model}"):
        history = json.loads(path.read_text()) if path.exists() else []
        for earlier in reversed(history):
            until = datetime.fromisoformat(earlier["until"])
            if datetime.fromisoformat(earlier["at"]) <= at < until:
                decision.suppressed_by = earlier
                return decision
        history.append({"day": day, "at": at.isoformat(), "until": (at + timedelta(hours=policy.cooldown_hours))
                        .isoformat(), "reason": "; ".join(reasons), "dataset_version": dataset_version})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(history, indent=2))
        tmp.replace(path)
    decision.requested = True
    return decision


# ---- Online evidence for a challenger ---------------------------------------------------------------------

@dataclass
class OnlineGate:
    model: str
    version: str
    mode: str
    passed: bool
    reasons: list[str]
    difference: float = math.nan
    interval: tuple[float, float] = (math.nan, math.nan)
    users: tuple[int, int] = (0, 0)     # (challenger's, champion's)

    def line(self) -> str:
        return (f"online gate {self.model} v{self.version} ({self.mode}): {'PASS' if self.passed else 'WAIT'} - "
                + "; ".join(self.reasons))


def online_gate(paths: StatePaths, model: str, version: str, days: list[str],
                policy: MonitoringPolicy | None = None) -> OnlineGate:
    """Whether challenger ``version``'s online metric over ``days`` is not significantly worse than
    the champion's over the same days (the offline gate's bootstrap, resampling users): shadow
    answers are paired with the champion's answers to the same requests; a canary's users are
    compared with the champion's other users. Recorded on the version (``online_gate.*`` tags)."""
    from pipeline.core.tracking import mlflow_client
    from pipeline.lifecycle.gate import cluster_bootstrap, two_sample_bootstrap

    policy = policy or load_monitoring_policy(model)
    frames = [pl.read_parquet(p) for d in days
              if (p := paths.home / "reports" / "monitoring" / model / d / "outcomes.parquet").exists()]
    outcomes = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    column = "hit" if model == "next_item" else "probability"
    statistic = _online_statistic(model)
    gate = OnlineGate(model, str(version), "none", False, [])
    if outcomes.height == 0:
        gate.reasons.append(f"no monitored answers on {', '.join(days)}")
        return _record_gate(mlflow_client(paths), gate)
    mine = outcomes.filter(pl.col("model_version") == str(version))
    champion = outcomes.filter(pl.col("role") == "champion")
    shadow = mine.filter(pl.col("role") == "shadow")
    keys = ["request_id"] + (["item_id"] if model != "next_item" else [])
    if shadow.height:
        gate.mode = "shadow"
        paired = shadow.join(champion, on=keys, suffix="_champion")
        users = paired["user_id"].n_unique()
        gate.users = (users, users)
        labels = paired["label"].to_numpy() if "label" in paired.columns else None
        if users < policy.online_min_users:
            gate.reasons.append(f"{users} users answered by both, {policy.online_min_users} needed")
            return _record_gate(mlflow_client(paths), gate)
        diff, interval = cluster_bootstrap(paired["user_id"].to_numpy(), paired[column].to_numpy(),
                                           paired[f"{column}_champion"].to_numpy(), statistic(labels),
                                           policy.bootstrap_samples, policy.confidence, 0)
    else:
        canary = mine.filter(pl.col("role") == "challenger")
        if canary.height == 0:
            gate.reasons.append(f"v{version} answered no monitored request on {', '.join(days)}; serve it with "
                                f"--challenger-mode shadow or canary")
            return _record_gate(mlflow_client(paths), gate)
        gate.mode = "canary"
        gate.users = (canary["user_id"].n_unique(), champion["user_id"].n_unique())
        if min(gate.users) < policy.online_min_users:
            gate.reasons.append(f"{gate.users[0]} canary users and {gate.users[1]} champion users, "
                                f"{policy.online_min_users} each needed")
            return _record_gate(mlflow_client(paths), gate)
        diff, interval = two_sample_bootstrap(
            (canary["user_id"].to_numpy(), canary[column].to_numpy(),
             canary["label"].to_numpy() if "label" in canary.columns else None),
            (champion["user_id"].to_numpy(), champion[column].to_numpy(),
             champion["label"].to_numpy() if "label" in champion.columns else None),
            _online_statistic(model), policy.bootstrap_samples, policy.confidence, 0)
    gate.difference, gate.interval = diff, interval
    gate.passed = interval[1] >= 0
    name = "hit rate" if model == "next_item" else "AUC"
    gate.reasons.append(f"{name} difference {diff:+.4f} over {gate.users[0]} users, {policy.confidence:.0%} "
                        f"interval [{interval[0]:+.4f}, {interval[1]:+.4f}]"
                        + (": not worse than the champion" if gate.passed else ": significantly worse"))
    return _record_gate(mlflow_client(paths), gate)


def _online_statistic(model: str):
    """statistic(labels)(values, rows): the mean hit for the recommender, AUC for propensity."""
    if model == "next_item":
        return lambda labels: (lambda values, rows: float(values.mean()))
    from pipeline.families.base import auc

    return lambda labels: (lambda values, rows: auc(labels[rows], values))


def _record_gate(client, gate: OnlineGate) -> OnlineGate:
    state = "passed" if gate.passed else "waiting"
    client.set_model_version_tag(gate.model, gate.version, "online_gate.decision", state)
    client.set_model_version_tag(gate.model, gate.version, "online_gate.reasons", "; ".join(gate.reasons)[:4900])
    return gate
