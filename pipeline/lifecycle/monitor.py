"""Closing the loop: what serving answered, judged against what the shop's users did next.

For one model and one day (UTC), ``monitor`` runs three reports and logs them to MLflow:

1. **online quality**: the day's logged answers (``pipeline.data.predictions``) joined with the
   events that followed them in the ingested dataset. Next item: a request's target is the user's
   next step strictly after the request time (repeats collapsed, as in training), within
   ``horizon_hours``; hit rate and NDCG at ``k`` of the served list, per request, averaged per user
   then over users (the offline evaluation's unit). Propensity: a candidate's label is whether the
   user bought the item within ``horizon_hours``; AUC, log loss and calibration (mean probability
   against the purchase rate; expected calibration error over ten bins) over every served
   candidate. Figures per model version and role (champion, challenger, shadow), and for the
   family's floors (``Monitoring.references``) answering the very requests the champion answered,
   with the bootstrap interval of champion minus floor over users. A day is **judged** only once
   the published data reaches ``horizon_hours`` past its end; before, every answer late in the day
   still lacks its outcome, the figures are marked provisional and are no evidence for a retrain or
   the online gate. Beside them, the champion's own offline figures of the same protocol (the test
   period's sessions, ``Monitoring.offline``, logged at its evaluation); the gate's offline figures
   measure another task and are not printed beside the online ones;
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
retrain when drift crosses a threshold, or, on a judged day, when the champion is below a floor on
the same requests or well below its own earlier judged days; at most once per cool-down.

The statistics are in ``pipeline.data.drift``; what each family observes, in its ``monitoring.py``.
"""

from __future__ import annotations

import html
import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import Field, StrictBool
from pydantic.dataclasses import dataclass as pydantic_dataclass

from pipeline.core.config import STRICT, section
from pipeline.core.errors import BadInput
from pipeline.core.settings import StatePaths
from pipeline.data.drift import FeatureDrift, FeatureSkew, numeric_drift

log = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "monitoring-"


class MonitoringError(BadInput):
    """Nothing to monitor (no champion, a family without monitoring hooks), or a bad monitoring rule."""


# ---- Rules ------------------------------------------------------------------------------------------


@pydantic_dataclass(frozen=True, config=STRICT)
class MonitoringPolicy:
    horizon_hours: float = 24.0  # how long after an answer the user's events count
    k: int = 10  # ranking metrics at k (next item)
    metric: str = "hit_rate_at_10"  # the online metric of the first line and of the triggers
    higher_is_better: StrictBool = (
        True  # false for an error (a forecast's WAPE): the triggers and the online gate turn round
    )
    min_users: int = 50  # fewer users: not evidence (no trigger, no online gate)
    max_drop: float = 0.2  # retrain when the online metric falls below (1 - this) x its own earlier days
    psi_threshold: float = 0.25  # a numeric feature drifted
    js_threshold: float = 0.1  # a categorical feature drifted (Jensen-Shannon divergence, base 2)
    drifted_features: int = 1  # retrain when at least this many input features drifted
    cooldown_hours: float = 72.0  # at most one evidence-triggered retrain per this period
    skew_tolerance: float = 0.01  # a share of users with skewed features above this is reported as FAIL
    # The online gate: a challenger (shadow or canary) is promotable only when, over at least
    # online_min_users users on judged days, its online metric is no worse than the champion's by more
    # than online_margin, with confidence (non-inferiority).
    require_online_evidence: StrictBool = False
    online_min_users: int = 200
    online_margin: float = 0.02  # the challenger passes when its interval's lower end is above -this
    earlier_days: int = 7  # the model's own earlier judged days its online metric is compared with
    confidence: float = Field(default=0.95, ge=0.5, lt=1)
    bootstrap_samples: int = Field(default=1000, ge=100)


def load_monitoring_policy(model: str, path: Path | None = None) -> MonitoringPolicy:
    """The ``monitoring.<model>`` rules of the policy file (defaults where it has none).

    Raises:
        MonitoringError: an unknown rule, or a value of the wrong type; the message names the file,
            the rule and the value."""
    from pipeline.lifecycle.gate import read_policy_file

    path, data = read_policy_file(path)
    return section(
        MonitoringPolicy, (data.get("monitoring") or {}).get(model), f"{path}: monitoring.{model}", MonitoringError
    )


# ---- The day's monitoring ------------------------------------------------------------------------------


@dataclass
class MonitorResult:
    model: str
    day: str
    dataset_version: str
    champion_version: str
    online: dict[str, dict[str, float]]  # "<role> v<version>" or "floor <name>" -> figures
    offline: dict[str, dict[str, float]]  # the champion's offline figures of the online protocol,
    # per side ("candidate": the champion itself; floors)
    judged: bool = False  # the outcome horizon has passed in the data
    answered: int = 0  # the champion's logged answers to known users
    floors: dict[str, tuple[float, tuple[float, float]]] = field(default_factory=dict)  # champion - floor
    earlier: float | None = None  # median of the version's own earlier judged days
    drift: list[FeatureDrift] = field(default_factory=list)
    prediction_drift: FeatureDrift | None = None
    skew: list[FeatureSkew] = field(default_factory=list)
    coverage_hours: float = 0.0  # hours of published data after the day's end
    repeats: int = 0  # logged answers left out as repeats of another (``distinct_answers``)
    run_id: str = ""
    report: str = ""

    @property
    def champion_online(self) -> dict[str, float]:
        return self.online.get(f"champion v{self.champion_version}", {})

    def lines(self, policy: MonitoringPolicy) -> list[str]:
        hooks = _spec(self.model)
        figures = self.champion_online
        names = hooks.headline(policy)
        metric = policy.metric

        def shown(f: dict) -> str:
            return ", ".join(f"{n} {f.get(n, float('nan')):.4f}" for n in names)

        protocol = hooks.protocol(policy) if hooks.protocol else f"outcomes within {policy.horizon_hours:g} h"
        outcome = figures.get("requests")  # answers with an outcome, where an answer can have none
        state = (
            f"judged: {protocol}, every outcome horizon passed"
            if self.judged
            else f"PROVISIONAL: {protocol}, only {self.coverage_hours:.0f} h of events after the day, so late answers "
            f"cannot have their outcome yet; judge it again once the data reaches {policy.horizon_hours:g} h "
            f"past the day"
        )
        out = [
            f"online {self.model} {self.day} ({state}): champion v{self.champion_version} {shown(figures)} over "
            f"{int(figures.get('users', 0))} users"
            + (
                f" ({int(outcome)} of {self.answered} answers had an outcome)"
                if outcome is not None and self.answered
                else ""
            )
            + (f"; {self.repeats} answers logged again (a day replayed twice) counted once" if self.repeats else "")
        ]
        for key, other in self.online.items():
            if key.startswith("floor "):
                diff, (low, high) = self.floors.get(key.removeprefix("floor "), (math.nan, (math.nan, math.nan)))
                out.append(
                    f"online {self.model} {self.day} {key} on the same requests: {metric} "
                    f"{other.get(metric, float('nan')):.4f}; champion - {key.removeprefix('floor ')} "
                    f"{diff:+.4f}, {policy.confidence:.0%} interval [{low:+.4f}, {high:+.4f}] over users"
                )
            elif not key.startswith("champion"):
                out.append(
                    f"online {self.model} {self.day} {key}: {shown(other)} over {int(other.get('users', 0))} users"
                )
        if self.offline:
            sides = ", ".join(
                f"{'champion' if side == 'candidate' else side} {f.get(metric, float('nan')):.4f}"
                for side, f in sorted(self.offline.items(), key=lambda kv: kv[0] != "candidate")
            )
            users = int(self.offline.get("candidate", {}).get("users", 0))
            out.append(
                f"offline {self.model}, same protocol ({hooks.offline_protocol or protocol}): {metric} "
                f"{sides} over {users} users"
            )
        else:
            out.append(
                f"offline {self.model}: no offline figure of this protocol on the champion's run; its gate's "
                f"figures measure another task and are not comparable"
            )
        drifted = [d for d in self.drift if d.drifted]
        worst = max(self.drift, key=lambda d: d.value / d.threshold if math.isfinite(d.value) else -1, default=None)
        out.append(
            f"drift {self.model} {self.day}: {len(drifted)} of {len(self.drift)} input features drifted"
            + (
                f" ({', '.join(f'{d.feature} {d.statistic} {d.value:.3f}' for d in drifted)})"
                if drifted
                else f" (largest: {worst.feature} {worst.statistic} {worst.value:.3f})"
                if worst
                else ""
            )
            + (
                ""
                if self.prediction_drift is None
                else f"; served scores PSI {self.prediction_drift.value:.3f} vs earlier days"
            )
            + (f"; report {self.report}" if self.report else "")
        )
        skewed = [s for s in self.skew if s.skewed_users]
        users = max((s.users for s in self.skew), default=0)
        out.append(
            f"skew {self.model} {self.day}: "
            + (
                "; ".join(
                    f"{s.feature} differs for {s.share:.1%} of {s.users} users (e.g. {s.example})" for s in skewed
                )
                if skewed
                else f"served features equal the offline ones for all {users} users"
            )
        )
        return out


def _day_bounds(day: str) -> tuple[datetime, datetime]:
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def champion_context(paths: StatePaths, model: str) -> dict:
    """The champion's version, run, training parameters and split, features and Bento snapshot."""
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
        except Exception as exc:  # a Bento store without it: the skew report says so
            log.warning("the champion's snapshot is not in this Bento store: %s", exc)
    return {
        "version": str(mv.version),
        "run": run,
        "client": client,
        "snapshot": snapshot_path,
        "features_path": run.data.tags.get("features_path"),
        "params": dict(run.data.params),
        "split": {k.removeprefix("split."): v for k, v in run.data.params.items() if k.startswith("split.")},
    }


def monitor(
    paths: StatePaths, model: str, day: str, dataset_version: str | None = None, policy: MonitoringPolicy | None = None
) -> MonitorResult:
    """Online quality, drift and skew of ``model`` on ``day``; logged to MLflow (see the module
    docstring). The events come from ``dataset_version`` (default: the current one)."""
    from pipeline.data.predictions import default_root, distinct_answers, read_predictions
    from pipeline.data.version import open_dataset, resolve_dataset_version

    policy = policy or load_monitoring_policy(model)
    champion = champion_context(paths, model)
    version = resolve_dataset_version(paths, dataset_version)
    dataset = open_dataset(paths, version.version)
    events = dataset.events()
    start, end = _day_bounds(day)
    root = default_root() or str(paths.home / "predictions")
    answers, repeats = distinct_answers(read_predictions(root, model, day))

    hooks = _spec(model)
    snapshot = None
    if champion["snapshot"] is not None:
        from pipeline.serving.snapshot import FeatureSnapshot

        snapshot = FeatureSnapshot.load(champion["snapshot"])
    online: dict[str, dict[str, float]] = {}
    outcomes = pl.DataFrame()
    asked = answers.filter((pl.col("role") == "champion") & (pl.col("user_id") != ""))
    if answers.height:
        scored = answers
        if hooks.references is not None:
            scored = pl.concat(
                [answers, hooks.references(answers, events, champion, snapshot, policy)], how="diagonal_relaxed"
            )
        outcomes = hooks.outcomes(scored, events, policy)
        for (role, mv), part in sorted(outcomes.group_by("role", "model_version"), key=lambda g: g[0]):
            online[f"floor {mv}" if role == "floor" else f"{role} v{mv}"] = hooks.figures(part, policy)
    # The data reaches the end of its last published day (partitions are whole UTC days).
    from pipeline.data.dataset import split_by_time

    data_end = split_by_time(events, 0, 0).end if events.height else end
    coverage = max(0.0, (data_end - end).total_seconds() / 3600)

    run = champion["run"]
    offline: dict[str, dict[str, float]] = {}
    for key, value in run.data.metrics.items():
        if key.startswith(SESSION_PREFIX):
            side, _, name = key.removeprefix(SESSION_PREFIX).partition(".")
            offline.setdefault(side, {})[name] = value
    result = MonitorResult(
        model,
        day,
        version.version,
        champion["version"],
        online,
        offline,
        judged=coverage >= policy.horizon_hours,
        answered=asked.height,
        coverage_hours=coverage,
        repeats=repeats,
    )
    result.floors = _floor_intervals(outcomes, champion["version"], hooks, policy)
    result.earlier = _earlier_median(paths, model, day, champion["version"], policy)
    result.drift = hooks.drift(events, dataset.catalog(as_of=end), start, end, champion, policy)
    result.prediction_drift = _prediction_drift(root, model, day, answers, champion["version"], policy)
    if snapshot is not None:
        result.skew = hooks.skew(snapshot, events, dataset.catalog(as_of=snapshot.cutoff), answers)

    out = paths.home / "reports" / "monitoring" / model / day
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift.html").write_text(_html(result, policy))
    (out / "summary.json").write_text(json.dumps(_summary(result, policy), indent=2, default=str))
    result.report = str(out / "drift.html")
    if outcomes.height:
        outcomes.write_parquet(out / "outcomes.parquet")
    _log(paths, result, policy, champion["client"], out)
    return result


SESSION_PREFIX = "session_"  # the run's offline figures of the online protocol: session_<side>.<metric>


def _floor_intervals(
    outcomes: pl.DataFrame, version: str, hooks, policy: MonitoringPolicy
) -> dict[str, tuple[float, tuple[float, float]]]:
    """Champion minus each floor on the same requests: the observed difference of the online
    statistic and its bootstrap interval, resampling users (``pipeline.lifecycle.gate``)."""
    from pipeline.lifecycle.gate import cluster_bootstrap

    if outcomes.height == 0:
        return {}
    keys, column = list(hooks.pair_keys), hooks.value_column
    mine = outcomes.filter((pl.col("role") == "champion") & (pl.col("model_version") == version))
    out = {}
    for (name,), floor in outcomes.filter(pl.col("role") == "floor").group_by("model_version"):
        paired = mine.join(floor.select(*keys, pl.col(column).alias("_floor")), on=keys)
        if paired.height == 0:
            continue
        out[name] = cluster_bootstrap(
            paired["user_id"].to_numpy(),
            paired[column].to_numpy(),
            paired["_floor"].to_numpy(),
            hooks.statistic(paired),
            policy.bootstrap_samples,
            policy.confidence,
            0,
        )
    return dict(sorted(out.items()))


def _earlier_median(paths: StatePaths, model: str, day: str, version: str, policy: MonitoringPolicy) -> float | None:
    """The median online metric of the same champion version over its judged days among the
    ``earlier_days`` before ``day`` (their ``summary.json``), or None without any."""
    values = []
    for back in range(1, policy.earlier_days + 1):
        other = (date.fromisoformat(day) - timedelta(days=back)).isoformat()
        path = paths.home / "reports" / "monitoring" / model / other / "summary.json"
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        figures = summary.get("online", {}).get(f"champion v{version}", {})
        if summary.get("judged") and policy.metric in figures and figures.get("users", 0) >= policy.min_users:
            values.append(float(figures[policy.metric]))
    return float(np.median(values)) if values else None


def _prediction_drift(
    root: str, model: str, day: str, answers: pl.DataFrame, version: str, policy: MonitoringPolicy
) -> FeatureDrift | None:
    """The champion's served top score (next item) or probabilities on this day against the same
    version's answers of the seven days before; None without both."""
    from pipeline.data.predictions import distinct_answers, read_predictions

    def scores(frame: pl.DataFrame) -> np.ndarray:
        return _spec(model).served_scores(
            frame.filter((pl.col("role") == "champion") & (pl.col("model_version") == version))
        )

    current = scores(answers)
    reference = np.concatenate(
        [
            scores(distinct_answers(read_predictions(root, model, date.fromisoformat(day) - timedelta(days=d)))[0])
            for d in range(1, 8)
        ]
    )
    if current.size == 0 or reference.size == 0:
        return None
    return numeric_drift("served score", reference, current, policy.psi_threshold)


def _summary(result: MonitorResult, policy: MonitoringPolicy) -> dict:
    return {
        "model": result.model,
        "day": result.day,
        "dataset_version": result.dataset_version,
        "champion_version": result.champion_version,
        "online": result.online,
        "offline": result.offline,
        "coverage_hours": result.coverage_hours,
        "judged": result.judged,
        "answered": result.answered,
        "repeats": result.repeats,
        "floors": {n: {"difference": d, "interval": list(i)} for n, (d, i) in result.floors.items()},
        "earlier": result.earlier,
        "drift": [{**asdict(d), "drifted": d.drifted} for d in result.drift],
        "prediction_drift": None if result.prediction_drift is None else asdict(result.prediction_drift),
        "skew": [{**asdict(s), "share": s.share} for s in result.skew],
        "lines": result.lines(policy),
    }


def _html(result: MonitorResult, policy: MonitoringPolicy) -> str:
    e = html.escape
    rows = "".join(
        f"<tr class='{'bad' if d.drifted else ''}'><td>{e(d.feature)}</td><td>{d.statistic}</td>"
        f"<td>{d.value:.4f}</td><td>{d.threshold:g}</td><td>{'DRIFT' if d.drifted else 'ok'}</td>"
        f"<td>{e(d.reference)}</td><td>{e(d.current)}</td></tr>"
        for d in result.drift + ([result.prediction_drift] if result.prediction_drift else [])
    )
    skew = "".join(
        f"<tr class='{'bad' if s.share > policy.skew_tolerance else ''}'><td>{e(s.feature)}</td>"
        f"<td>{s.users}</td><td>{s.skewed_users}</td><td>{s.share:.2%}</td><td>{e(s.example)}</td></tr>"
        for s in result.skew
    )
    online = "".join(
        f"<tr><td>{e(k)}</td><td>{e(', '.join(f'{n} {v:.4f}' for n, v in f.items()))}</td></tr>"
        for k, f in result.online.items()
    )
    lines = "".join(f"<li><code>{e(line)}</code></li>" for line in result.lines(policy))
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{e(result.model)} {e(result.day)}: online quality, drift, skew</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}tr.bad{{background:#fdd}}</style></head><body>
<h1>{e(result.model)} on {e(result.day)}</h1>
<p>Champion v{e(result.champion_version)}; dataset version {e(result.dataset_version)};
{result.coverage_hours:.0f} h of published data after the day (horizon {policy.horizon_hours:g} h):
{"judged" if result.judged else "provisional, the outcomes of late answers are not in yet"}.</p>
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
    run_id = (
        found[0].info.run_id
        if found
        else client.create_run(
            experiment_id,
            run_name=f"{result.model}-{result.day}",
            tags={"shopml.monitor_day": result.day, "shopml.model": result.model},
        ).info.run_id
    )
    tags = {
        "champion_version": result.champion_version,
        "dataset_version": result.dataset_version,
        "report": "reports/drift.html",
        "summary": "\n".join(result.lines(policy))[:4900],
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    metrics = []
    for key, figures in result.online.items():
        prefix = (
            "online"
            if key.startswith("champion")
            else "online_" + (key.replace(" ", "_") if key.startswith("floor ") else key.split()[0])
        )
        metrics += [
            mlflow.entities.Metric(f"{prefix}_{n}", float(v), 0, 0)
            for n, v in figures.items()
            if v is not None and math.isfinite(v)
        ]
    metrics += [
        mlflow.entities.Metric(f"drift_{d.feature.replace(' ', '_')}", d.value, 0, 0)
        for d in result.drift
        if math.isfinite(d.value)
    ]
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
    metrics += [
        mlflow.entities.Metric(f"online_vs_{name}_{policy.metric}", diff, 0, 0)
        for name, (diff, _) in result.floors.items()
        if math.isfinite(diff)
    ]
    for key, figures in result.online.items():
        if key.startswith("floor "):
            continue  # a floor scored online is no registered version
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
    suppressed_by: dict | None = None  # the earlier request whose cool-down holds this one back
    unweighed: str = ""  # why the day's online figures were no evidence (``unweighed``), if they were not

    def line(self) -> str:
        if not self.reasons:
            why = f"; {self.unweighed}" if self.unweighed else ""
            return f"retrain {self.model} {self.day}: not needed (no threshold crossed{why})"
        why = "; ".join(self.reasons)
        if self.requested:
            return f"retrain {self.model} {self.day}: REQUESTED ({why})"
        last = self.suppressed_by or {}
        return (
            f"retrain {self.model} {self.day}: held back by the cool-down until {last.get('until')} "
            f"(requested on {last.get('day')}: {last.get('reason')}); would be: {why}"
        )


def requests_file(paths: StatePaths, model: str) -> Path:
    return paths.home / "monitoring" / model / "retrain_requests.json"


def retrain_reasons(result: MonitorResult | None, policy: MonitoringPolicy, no_champion: bool = False) -> list[str]:
    """Which of ``policy``'s thresholds the day's reports cross, in words."""
    if no_champion:
        return ["no champion yet"]
    if result is None:
        raise ValueError("retrain_reasons needs the day's MonitorResult unless there is no champion")
    reasons = []
    drifted = [d for d in result.drift if d.drifted]
    if drifted and len(drifted) >= policy.drifted_features:
        reasons.append(
            "drift: " + ", ".join(f"{d.feature} {d.statistic} {d.value:.3f} > {d.threshold:g}" for d in drifted)
        )
    if unweighed(result, policy):
        return reasons  # a provisional day's online figures, or too few, are not evidence
    figures = result.champion_online
    value, users = figures[policy.metric], int(figures.get("users", 0))
    sign = 1.0 if policy.higher_is_better else -1.0
    for name, (diff, (low, high)) in result.floors.items():
        if (high < 0) if policy.higher_is_better else (low > 0):
            reasons.append(
                f"online {policy.metric}: the champion is below the floor {name} on the same requests "
                f"({diff:+.4f}, {policy.confidence:.0%} interval [{low:+.4f}, {high:+.4f}] over "
                f"{users} users)"
            )
    if result.earlier is not None and sign * value < sign * (1 - sign * policy.max_drop) * result.earlier:
        relation = "<" if policy.higher_is_better else ">"
        reasons.append(
            f"online {policy.metric} {value:.4f} {relation} {1 - sign * policy.max_drop:.2f} x {result.earlier:.4f}, "
            f"the median of its own earlier days, over {users} users"
        )
    return reasons


def unweighed(result: MonitorResult, policy: MonitoringPolicy) -> str:
    """Why ``retrain_reasons`` does not weigh the day's online figures (the floors' intervals, the
    earlier days), in words; empty when it does (``retrain_reasons`` asks this very function). A
    champion below a floor with confidence on a day too small to count is otherwise a contradiction
    the decision line would leave unexplained."""
    if not result.judged:
        return (
            f"the online figures are provisional ({result.coverage_hours:.0f} h of events after the day, "
            f"{policy.horizon_hours:g} h needed), so they were not weighed"
        )
    figures = result.champion_online
    if figures.get(policy.metric) is None:
        return "no online figure of the champion, so none was weighed"
    users = int(figures.get("users", 0))
    if users < policy.min_users:
        return f"the online figures over {users} users are fewer than min_users {policy.min_users}, so not weighed"
    return ""


def retrain_decision(
    paths: StatePaths,
    model: str,
    day: str,
    reasons: list[str],
    policy: MonitoringPolicy,
    dataset_version: str = "",
    unweighed: str = "",
) -> RetrainDecision:
    """Request a retrain when there are reasons, unless one was requested less than the cool-down
    before (on the monitored days' clock: the end of ``day``). A request is recorded in
    ``$SHOPML_HOME/monitoring/<model>/retrain_requests.json``, under the lock every worker shares.
    ``unweighed`` (``unweighed(result, policy)``) is said on a decision without reasons."""
    from pipeline.core.locks import shared_lock

    decision = RetrainDecision(model, day, reasons, False, unweighed=unweighed)
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
        history.append(
            {
                "day": day,
                "at": at.isoformat(),
                "until": (at + timedelta(hours=policy.cooldown_hours)).isoformat(),
                "reason": "; ".join(reasons),
                "dataset_version": dataset_version,
            }
        )
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
    users: tuple[int, int] = (0, 0)  # (challenger's, champion's)

    def line(self) -> str:
        return (
            f"online gate {self.model} v{self.version} ({self.mode}): {'PASS' if self.passed else 'WAIT'} - "
            + "; ".join(self.reasons)
        )


def online_gate(
    paths: StatePaths, model: str, version: str, days: list[str], policy: MonitoringPolicy | None = None
) -> OnlineGate:
    """Whether challenger ``version``'s online metric over the judged ones of ``days`` is no worse
    than the champion's by more than ``online_margin``, with confidence: the lower end of the
    bootstrap interval of the difference (resampling users, the figure's own statistic: per user for
    a ranking) lies above ``-online_margin``, over at least ``online_min_users`` users. Shadow
    answers are paired with the champion's answers to the same requests; a canary's users are
    compared with the champion's other users. Recorded on the version (``online_gate.*`` tags)."""
    from pipeline.core.tracking import mlflow_client

    policy = policy or load_monitoring_policy(model)
    folder = paths.home / "reports" / "monitoring" / model
    judged = [
        d
        for d in days
        if (folder / d / "summary.json").exists()
        and json.loads((folder / d / "summary.json").read_text()).get("judged")
    ]
    frames = [pl.read_parquet(p) for d in judged if (p := folder / d / "outcomes.parquet").exists()]
    outcomes = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    if outcomes.height == 0:
        gate = OnlineGate(model, str(version), "none", False, [])
        provisional = sorted(set(days) - set(judged))
        gate.reasons.append(
            f"no judged monitored answers on {', '.join(days)}"
            + (
                f" ({', '.join(provisional)}: not monitored, or provisional: its outcome horizon had "
                f"not passed; monitor it again)"
                if provisional
                else ""
            )
        )
        return _record_gate(mlflow_client(paths), gate)
    return _record_gate(mlflow_client(paths), judge_online(outcomes, model, version, days, policy))


def judge_online(
    outcomes: pl.DataFrame, model: str, version: str, days: list[str], policy: MonitoringPolicy
) -> OnlineGate:
    """``online_gate``'s decision on judged outcomes (no I/O)."""
    from pipeline.lifecycle.gate import cluster_bootstrap, two_sample_bootstrap

    hooks = _spec(model)
    column, statistic = hooks.value_column, hooks.statistic
    gate = OnlineGate(model, str(version), "none", False, [])
    mine = outcomes.filter(pl.col("model_version") == str(version))
    champion = outcomes.filter(pl.col("role") == "champion")
    shadow = mine.filter(pl.col("role") == "shadow")
    keys = list(hooks.pair_keys)
    if shadow.height:
        gate.mode = "shadow"
        paired = shadow.join(champion, on=keys, suffix="_champion")
        users = paired["user_id"].n_unique()
        gate.users = (users, users)
        if users < policy.online_min_users:
            gate.reasons.append(f"{users} users answered by both, {policy.online_min_users} needed")
            return gate
        diff, interval = cluster_bootstrap(
            paired["user_id"].to_numpy(),
            paired[column].to_numpy(),
            paired[f"{column}_champion"].to_numpy(),
            statistic(paired),
            policy.bootstrap_samples,
            policy.confidence,
            0,
        )
    else:
        canary = mine.filter(pl.col("role") == "challenger")
        if canary.height == 0:
            gate.reasons.append(
                f"v{version} answered no monitored request on {', '.join(days)}; serve it with "
                f"--challenger-mode shadow or canary"
            )
            return gate
        gate.mode = "canary"
        gate.users = (canary["user_id"].n_unique(), champion["user_id"].n_unique())
        if min(gate.users) < policy.online_min_users:
            gate.reasons.append(
                f"{gate.users[0]} canary users and {gate.users[1]} champion users, "
                f"{policy.online_min_users} each needed"
            )
            return gate
        diff, interval = two_sample_bootstrap(
            (canary["user_id"].to_numpy(), canary[column].to_numpy(), statistic(canary)),
            (champion["user_id"].to_numpy(), champion[column].to_numpy(), statistic(champion)),
            policy.bootstrap_samples,
            policy.confidence,
            0,
        )
    gate.difference, gate.interval = diff, interval
    # Non-inferiority: the whole interval above -online_margin. A small sample has a wide interval and
    # waits for more traffic instead of passing because it could not be shown worse.
    gate.passed = interval[0] > -policy.online_margin if policy.higher_is_better else interval[1] < policy.online_margin
    name = f"{policy.metric if column == 'hit' else column + ' AUC'}"
    gate.reasons.append(
        f"{name} difference {diff:+.4f} over {gate.users[0]} users, {policy.confidence:.0%} "
        f"interval [{interval[0]:+.4f}, {interval[1]:+.4f}]"
        + (
            f": not worse than the champion by more than {policy.online_margin:g}"
            if gate.passed
            else f": could be worse than the champion by more than {policy.online_margin:g}"
            + (" (significantly worse)" if interval[1] < 0 else "; more traffic narrows it")
        )
    )
    return gate


def _spec(model: str):
    """The family's monitoring hooks (``ModelSpec.monitoring``)."""
    from pipeline import families

    hooks = families.get(model).monitoring
    if hooks is None:
        raise MonitoringError(f"model family {model!r} has no monitoring hooks (ModelSpec.monitoring)")
    return hooks


def _record_gate(client, gate: OnlineGate) -> OnlineGate:
    state = "passed" if gate.passed else "waiting"
    client.set_model_version_tag(gate.model, gate.version, "online_gate.decision", state)
    client.set_model_version_tag(gate.model, gate.version, "online_gate.reasons", "; ".join(gate.reasons)[:4900])
    return gate
