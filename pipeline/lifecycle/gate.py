"""The promotion gate: rules from ``policy.yaml``, a paired bootstrap, and a decision with reasons.

A candidate is promoted only if every check passes:

1. floors: the bootstrap confidence interval (at ``confidence``) of the candidate-minus-baseline
   difference on the same test rows, resampling users (all rows of a user together, since a user's
   rows are not independent), lies above ``floor_margin`` for each baseline the policy names (this
   alone decides for the first model, when there is no champion); a point estimate above the
   baseline is not enough;
   With ``online_protocol``, each floor must also be cleared on the family's online protocol run
   offline on the test period (``Monitoring.offline``: for the recommender, the next step of each
   session step, the task it serves), paired on the same requests and resampling users, since a
   model can beat a floor on one task and lose to it on the one it is served for;
2. champion eligibility: the champion's own data (its split's ``valid_end``: its training and
   validation periods) ends no later than the candidate's test period starts; a champion that saw
   the candidate's test days would be compared on rows it learned from, so the gate refuses;
3. improvement: its metric exceeds the champion's by at least ``min_improvement``;
4. significance: the same bootstrap interval of the candidate-minus-champion difference lies
   entirely above zero;
5. guards: p95 latency of a one-row prediction and the model's size stay under their limits;
6. evidence (with ``min_positives``): the test rows hold at least that many positive labels (frauds),
   else no difference counts: the champion stays, and with none the strongest floor serves.

Every side (candidate, champion, baselines) is resampled with the same draws of users, so each
interval is paired on the same rows. When a candidate fails a floor and there is no champion,
``Decision.strongest_floor`` names the baseline with the best metric: the floor is a model too, and
the lifecycle serves it (``pipeline.lifecycle.steps.register``) so that a family never has none.

``decide`` is pure (no MLflow): it takes figures and per-row values and returns a
``Decision`` whose ``reasons`` say, in words, why it passed or failed. ``gate_candidate`` applies it
to a candidate's logged evaluation and logs the decision to its run.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydantic import Field, StrictBool
from pydantic.dataclasses import dataclass as pydantic_dataclass

from pipeline.core.config import STRICT, section
from pipeline.core.policyfile import POLICY_ENV, POLICY_FILE, PolicyError, read_policy_file
from pipeline.core.settings import StatePaths

log = logging.getLogger(__name__)

__all__ = ["POLICY_ENV", "POLICY_FILE", "PolicyError", "read_policy_file"]  # re-exported from core.policyfile


@pydantic_dataclass(frozen=True, config=STRICT)
class Policy:
    metric: str  # e.g. ndcg_at_20 or auc
    higher_is_better: StrictBool = True
    floors: tuple[str, ...] = ()  # baselines the candidate must beat
    min_improvement: float = 0.0  # over the champion, in the metric's units
    floor_margin: float = 0.0  # the floors' intervals must lie above this, in the metric's units
    online_protocol: StrictBool = False  # the floors must also be cleared on the online protocol run offline
    confidence: float = Field(default=0.95, ge=0.5, lt=1)
    bootstrap_samples: int = Field(default=2000, ge=100)
    # The test rows must hold at least this many positive labels (frauds) before any difference
    # counts: with fewer, the bootstrap interval does not keep its error rate (make
    # bench-gate-calibration). 0: no such rule.
    min_positives: int = Field(default=0, ge=0)
    seed: int = 0
    max_latency_ms: float = Field(default=math.inf, gt=0)  # p95 of a one-row prediction
    max_model_mb: float = Field(default=math.inf, gt=0)
    require_smoke_test: StrictBool = True  # promote only a version whose Bento passed the smoke test
    # Metrics (higher is better) on which the candidate must not be worse than the champion: the
    # interval of candidate minus champion, on the same rows, must lie above -guard_margin.
    guard_metrics: tuple[str, ...] = ()
    guard_margin: float = Field(default=0.0, ge=0)

    def to_dict(self) -> dict:
        return asdict(self)


def load_policy(model_name: str, path: Path | None = None) -> Policy:
    """The rules for ``model_name`` from the policy file (``$SHOPML_POLICY``, else ``policy.yaml`` at
    the repo root).

    Raises:
        PolicyError: no section for the model, an unknown rule, a value of the wrong type or out of
            bounds; the message names the file, the rule and the value."""
    path, data = read_policy_file(path)
    if model_name not in data:
        raise PolicyError(f"{path}: no section for model {model_name!r} (sections: {', '.join(data) or 'none'})")
    return section(Policy, data[model_name], f"{path}: {model_name}", PolicyError)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Decision:
    passed: bool
    checks: list[Check] = field(default_factory=list)
    champion_version: str | None = None
    difference: float | None = None
    interval: tuple[float, float] | None = None
    floor_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    strongest_floor: str | None = None  # the best baseline, when the candidate failed a floor and no champion exists

    @property
    def reasons(self) -> list[str]:
        return [f"{'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]

    def summary(self) -> str:
        verdict = "PROMOTE" if self.passed else "REJECT"
        return "\n".join([f"gate decision: {verdict}", *(f"  {r}" for r in self.reasons)])

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "champion_version": self.champion_version,
            "difference": self.difference,
            "interval": list(self.interval) if self.interval else None,
            "floor_intervals": {k: list(v) for k, v in self.floor_intervals.items()},
            "strongest_floor": self.strongest_floor,
            "checks": [asdict(c) for c in self.checks],
            "reasons": self.reasons,
        }


def group_resampler(
    groups: np.ndarray, rng: np.random.Generator, size: int | None = None
) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """A function drawing one resample of whole groups: ``size`` groups (default: as many as there
    are) picked with replacement. It returns the row indices of every picked group's rows, together
    and in the order picked, and how many rows each picked group has (so that a group picked twice
    can be told apart as two)."""
    order = np.argsort(groups, kind="stable")
    _, starts, counts = np.unique(groups[order], return_index=True, return_counts=True)
    picks = starts.size if size is None else size

    def draw() -> tuple[np.ndarray, np.ndarray]:
        picked = rng.integers(0, starts.size, size=picks)
        lengths = counts[picked]
        # Row indices of every picked group, vectorised: each group's start plus 0..count-1.
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return order[np.repeat(starts[picked], lengths) + offsets], lengths

    return draw


def _group_draws(groups: np.ndarray, rng: np.random.Generator) -> Callable[[], np.ndarray]:
    """A function drawing one bootstrap resample of whole groups: the row indices of as many groups
    as there are, picked with replacement (each picked group's rows together)."""
    draw = group_resampler(groups, rng)
    return lambda: draw()[0]


def _interval(diffs: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs[np.isfinite(diffs)], [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_sides(
    groups: np.ndarray,
    sides: dict[str, np.ndarray],
    statistic: Callable[[np.ndarray, np.ndarray], float],
    samples: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """``statistic`` of every side on ``samples`` resamples of whole groups, the same resample for
    every side (so differences between sides are paired on the same rows)."""
    draw = _group_draws(groups, np.random.default_rng(seed))
    out = {name: np.empty(samples) for name in sides}
    for b in range(samples):
        rows = draw()
        for name, values in sides.items():
            out[name][b] = statistic(values[rows], rows)
    return out


def cluster_bootstrap(
    groups: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    samples: int,
    confidence: float,
    seed: int,
) -> tuple[float, tuple[float, float]]:
    """Paired bootstrap of ``statistic(candidate) - statistic(champion)``, resampling whole groups.

    ``statistic(values, rows)`` gets the values at the resampled row indices ``rows`` (so a
    statistic like AUC can look up the labels of the same rows). Returns the observed difference and
    the percentile interval at ``confidence``.
    """
    stats = bootstrap_sides(groups, {"a": candidate, "b": champion}, statistic, samples, seed)
    all_rows = np.arange(groups.size)
    observed = statistic(candidate, all_rows) - statistic(champion, all_rows)
    return float(observed), _interval(stats["a"] - stats["b"], confidence)


@dataclass
class Rows:
    """Per-row values of every side on the gate's one row set: ``groups`` (the user of each row,
    the bootstrap's clusters), the candidate's values, the champion's (None without one), each
    baseline's, and ``statistic(values, rows)``, the metric of the values at those rows."""

    groups: np.ndarray
    candidate: np.ndarray
    statistic: Callable[[np.ndarray, np.ndarray], float]
    champion: np.ndarray | None = None
    baselines: dict[str, np.ndarray] = field(default_factory=dict)
    clusters: str = "users"  # what a group is, for the messages (``ModelSpec.clusters``)


def _floor_checks(
    decision: Decision,
    policy: Policy,
    label: str,
    metric: str,
    value: float,
    baselines: dict[str, float],
    stats: dict[str, np.ndarray],
    users: int,
    clusters: str = "users",
) -> None:
    """One check per floor of the policy: the interval of candidate minus floor above ``floor_margin``."""
    for name in policy.floors:
        check = f"floor {name}{label}"
        if name not in baselines:
            decision.checks.append(Check(check, False, f"no {metric} for baseline {name!r} in the evaluation"))
            continue
        point = f"{metric} {value:.4f} vs {name} {baselines[name]:.4f} (difference {value - baselines[name]:+.4f}"
        if f"baseline.{name}" not in stats:
            decision.checks.append(Check(check, False, point + "); no per-row values to bootstrap"))
            continue
        low, high = _interval(stats["candidate"] - stats[f"baseline.{name}"], policy.confidence)
        decision.floor_intervals[name + label] = (low, high)
        lower = low if policy.higher_is_better else -high
        ok = bool(lower > policy.floor_margin)
        interval = f", {policy.confidence:.0%} interval [{low:+.4f}, {high:+.4f}] over {users} {clusters})"
        decision.checks.append(
            Check(
                check,
                ok,
                point
                + interval
                + ("" if ok else f": not above the floor (margin {policy.floor_margin:g}) with confidence"),
            )
        )


def decide(
    policy: Policy,
    candidate: dict[str, float],
    baselines: dict[str, float],
    champion: dict[str, float] | None = None,
    champion_version: str | None = None,
    rows: Rows | None = None,
    latency_ms: float = float("nan"),
    model_mb: float = float("nan"),
    champion_ineligible: str | None = None,
    online: tuple[str, Rows] | None = None,
    guards: dict[str, Rows] | None = None,
    latency_context: str = "",
    positives: int | None = None,
) -> Decision:
    """Apply the policy.

    Args:
        policy: the model's rules.
        candidate: the candidate's metrics on the test rows (must hold ``policy.metric``).
        baselines: each baseline's value of ``policy.metric`` on the same rows.
        champion: the champion's metrics on the same rows, or None when there is no champion.
        champion_version: the registry version of the champion, recorded in the decision.
        rows: the per-row values of every side, for the bootstrap intervals (floors and champion).
        latency_ms: p95 latency of a one-row prediction of the candidate.
        model_mb: the candidate's size on disk.
        champion_ineligible: why the champion cannot be compared on these rows (it saw them), or None.
        online: (metric, per-request values) of the online protocol run offline on the test period,
            the floors among its baselines: with ``policy.online_protocol``, each floor must be
            cleared there too, with confidence.
        guards: per metric of ``policy.guard_metrics``, the per-row values of the candidate and the
            champion: the candidate must not be worse there by more than ``guard_margin``.
        latency_context: how busy the host was when the latency was measured
            (``latency_context``), said beside a latency over its limit.
        positives: the positive labels among the test rows (frauds), for ``policy.min_positives``;
            None when the evaluation has no labels.
    """
    sign = 1.0 if policy.higher_is_better else -1.0
    metric = policy.metric
    value = candidate[metric]
    decision = Decision(passed=False, champion_version=champion_version)
    checks = decision.checks
    stats, users = {}, 0
    if rows is not None:
        sides = {
            "candidate": rows.candidate,
            **{f"baseline.{n}": v for n, v in rows.baselines.items() if n in policy.floors},
        }
        if champion is not None and rows.champion is not None:
            sides["champion"] = rows.champion
        stats = bootstrap_sides(rows.groups, sides, rows.statistic, policy.bootstrap_samples, policy.seed)
        users = int(np.unique(rows.groups).size)
    level = f"{policy.confidence:.0%}"
    clusters = rows.clusters if rows is not None else "users"
    if policy.min_positives:
        enough = positives is not None and positives >= policy.min_positives
        counted = (
            "the evaluation has no labels to count"
            if positives is None
            else f"{positives} positive labels in the test rows (at least {policy.min_positives})"
        )
        too_few = "" if enough else ": too few to tell two models apart at the stated confidence"
        checks.append(Check("evidence", enough, counted + too_few))
    _floor_checks(decision, policy, "", metric, value, baselines, stats, users, clusters)
    if online is not None:
        online_metric, online_rows = online
        everything = np.arange(online_rows.groups.size)
        online_stats = bootstrap_sides(
            online_rows.groups,
            {"candidate": online_rows.candidate, **{f"baseline.{n}": v for n, v in online_rows.baselines.items()}},
            online_rows.statistic,
            policy.bootstrap_samples,
            policy.seed,
        )
        _floor_checks(
            decision,
            policy,
            " (online protocol)",
            online_metric,
            online_rows.statistic(online_rows.candidate, everything),
            {n: online_rows.statistic(v, everything) for n, v in online_rows.baselines.items()},
            online_stats,
            int(np.unique(online_rows.groups).size),
        )
    elif policy.online_protocol:
        checks.extend(
            Check(
                f"floor {n} (online protocol)", False, "no per-request values of the online protocol in the evaluation"
            )
            for n in policy.floors
        )
    if champion is None:
        checks.append(Check("champion", True, "no champion yet: the floors and guards decide"))
    elif champion_ineligible:
        checks.append(Check("champion eligibility", False, champion_ineligible))
    else:
        diff = sign * (value - champion[metric])
        decision.difference = value - champion[metric]
        checks.append(
            Check(
                "improvement",
                diff >= policy.min_improvement and diff > 0,
                f"{metric} {value:.4f} vs champion v{champion_version} {champion[metric]:.4f} "
                f"(difference {value - champion[metric]:+.4f}, required > {policy.min_improvement:g})",
            )
        )
        if "champion" not in stats:
            checks.append(Check("significance", False, "no per-row values to bootstrap"))
        else:
            low, high = _interval(stats["candidate"] - stats["champion"], policy.confidence)
            decision.interval = (low, high)
            lower = low if policy.higher_is_better else -high
            checks.append(
                Check(
                    "significance",
                    lower > 0,
                    f"{level} bootstrap interval of the difference over {users} {clusters}: "
                    f"[{low:+.4f}, {high:+.4f}]" + ("" if lower > 0 else ", includes zero: not significantly better"),
                )
            )
    if champion is not None and not champion_ineligible:
        _guard_checks(decision, policy, guards or {})
    if math.isfinite(policy.max_latency_ms):
        fast = bool(latency_ms <= policy.max_latency_ms)
        detail = f"p95 {latency_ms:.1f} ms (limit {policy.max_latency_ms:g} ms)"
        checks.append(Check("latency", fast, detail + ("" if fast or not latency_context else f"; {latency_context}")))
    if math.isfinite(policy.max_model_mb):
        checks.append(
            Check(
                "size", bool(model_mb <= policy.max_model_mb), f"{model_mb:.1f} MB (limit {policy.max_model_mb:g} MB)"
            )
        )
    decision.passed = all(c.passed for c in checks)
    floors = [n for n in policy.floors if n in baselines]
    # With no champion, a candidate that failed a floor, or that too few labels could not tell from
    # one, leaves the family to the strongest floor.
    undecided = (c for c in checks if c.name.startswith("floor ") or c.name == "evidence")
    if champion is None and floors and not all(c.passed for c in undecided):
        decision.strongest_floor = max(floors, key=lambda n: sign * baselines[n])
    return decision


def _guard_checks(decision: Decision, policy: Policy, guards: dict[str, Rows]) -> None:
    """Non-inferiority to the champion on each guard metric (higher is better)."""
    for metric in policy.guard_metrics:
        rows = guards.get(metric)
        if rows is None or rows.champion is None:
            decision.checks.append(Check(f"guard {metric}", False, "no per-row values of the candidate and champion"))
            continue
        everything = np.arange(rows.groups.size)
        value, held = rows.statistic(rows.candidate, everything), rows.statistic(rows.champion, everything)
        stats = bootstrap_sides(
            rows.groups,
            {"a": rows.candidate, "b": rows.champion},
            rows.statistic,
            policy.bootstrap_samples,
            policy.seed,
        )
        low, high = _interval(stats["a"] - stats["b"], policy.confidence)
        ok = bool(low >= -policy.guard_margin)
        decision.checks.append(
            Check(
                f"guard {metric}",
                ok,
                f"{metric} {value:.4f} vs champion {held:.4f}, {policy.confidence:.0%} interval of the difference "
                f"[{low:+.4f}, {high:+.4f}] over {np.unique(rows.groups).size} {rows.clusters}"
                + ("" if ok else f": may be worse by more than {policy.guard_margin:g}"),
            )
        )


# Applied to a logged evaluation --------------------------------------------------------------


def mean_statistic(values: np.ndarray, rows: np.ndarray) -> float:
    """The default gate statistic: the mean of the per-row values (a ranking metric per user)."""
    return float(values.mean())


def gate_rows(model_name: str, metric: str, rows) -> tuple[str, Callable[[np.ndarray, np.ndarray], float]]:
    """The per-row column the gate compares for ``metric`` and the statistic of its values: the
    family's (``ModelSpec.gate_statistic``: AUC on the rows' labels, a forecast's WAPE), else the
    column named after the metric and its mean."""
    from pipeline import families

    spec = families.get(model_name)
    if spec.gate_statistic is not None:
        found = spec.gate_statistic(metric, rows)
        if found is not None:
            return found
    return metric, mean_statistic


def _online_protocol_rows(client, model_name: str, run_id: str, tmp: str) -> tuple[str, Rows] | None:
    """(metric, per-request values) of the online protocol run offline at evaluation
    (``evaluation/session_rows.parquet``: the candidate's and the floors' outcomes on the test
    period's requests), paired by request, with the online figure's own statistic; None without it."""
    import polars as pl

    from pipeline import families
    from pipeline.lifecycle.evaluate import SESSION_ROWS
    from pipeline.lifecycle.monitor import load_monitoring_policy

    hooks = families.get(model_name).monitoring
    path = f"evaluation/{SESSION_ROWS}"
    if hooks is None or path not in {a.path for a in client.list_artifacts(run_id, "evaluation")}:
        return None  # evaluated without the hook, or before it existed
    outcomes = pl.read_parquet(client.download_artifacts(run_id, path, tmp))
    keys, column = list(hooks.pair_keys), hooks.value_column
    # The candidate's rows whole: the statistic may read more than the values (fraud's labels).
    paired = outcomes.filter(pl.col("role") == "candidate")
    floors = outcomes.filter(pl.col("role") == "floor")["model_version"].unique().sort().to_list()
    for name in floors:
        side = outcomes.filter((pl.col("role") == "floor") & (pl.col("model_version") == name))
        paired = paired.join(side.select(*keys, pl.col(column).alias(f"floor.{name}")), on=keys)
    return load_monitoring_policy(model_name).metric, Rows(
        paired["user_id"].to_numpy(),
        paired[column].to_numpy(),
        hooks.statistic(paired),
        baselines={n: paired[f"floor.{n}"].to_numpy() for n in floors},
    )


def champion_ineligibility(summary: dict) -> str | None:
    """Why the champion cannot be compared on the evaluation's rows, or None: its own data (training
    and validation periods, up to its ``valid_end``) reaches into the candidate's test period."""
    from datetime import datetime

    seen, start = summary.get("champion_data_end"), summary.get("test_start")
    if (
        summary.get("champion") is None
        or not seen
        or not start
        or datetime.fromisoformat(seen) <= datetime.fromisoformat(start)
    ):
        return None
    return (
        f"champion v{summary['champion_version']} learned from data up to {seen}, after this candidate's "
        f"test period starts ({start}): it would be judged on rows it saw; retrain the candidate on a dataset "
        f"version whose test period starts after {seen}"
    )


def positive_labels(rows) -> int | None:
    """The positive labels (frauds, purchases) among an evaluation's rows; None where the rows have
    no 0/1 labels (a forecast's label is the units sold)."""
    if "label" not in rows:
        return None
    labels = rows["label"].dropna()
    return int((labels == 1).sum()) if labels.isin([0, 1]).all() else None


def latency_context(summary: dict) -> str:
    """Words on the host's load while the evaluation measured the candidate's latency, when it was
    busier than its cores (a 1-minute load average above the core count), else "". The latency is
    the fastest of a few tries per request (``families.base.latency_p95``), which takes out load
    that comes and goes; load that lasts the whole measurement still shows, and a reader of a
    refusal should know it was there."""
    load, cpus = summary.get("host_load_1m"), summary.get("host_cpus") or 0
    if load is None or not math.isfinite(load) or not cpus or load <= cpus:
        return ""
    return (
        f"measured while the host's 1-minute load average was {load:.1f} on {cpus} cores: "
        "evaluate again on a quieter worker before reading this as the model's own latency"
    )


def gate_candidate(paths: StatePaths, model_name: str, run_id: str, policy: Policy | None = None) -> Decision:
    """Apply the policy to the run's evaluation; log and print the decision and every reason."""
    import pandas as pd

    from pipeline import families
    from pipeline.core.tracking import mlflow_client

    policy = policy or load_policy(model_name)
    client = mlflow_client(paths)
    with tempfile.TemporaryDirectory() as tmp:
        summary = json.loads(Path(client.download_artifacts(run_id, "evaluation/summary.json", tmp)).read_text())
        rows = pd.read_parquet(client.download_artifacts(run_id, "evaluation/rows.parquet", tmp))
        online = _online_protocol_rows(client, model_name, run_id, tmp) if policy.online_protocol else None
    metric = policy.metric
    if metric not in summary["candidate"]["metrics"]:
        raise PolicyError(
            f"policy metric {metric!r} is not among the evaluation's metrics "
            f"({', '.join(summary['candidate']['metrics'])})"
        )
    column, statistic = gate_rows(model_name, metric, rows)
    per_row = Rows(
        rows["user_id"].to_numpy(),
        rows[f"candidate.{column}"].to_numpy(),
        statistic,
        champion=rows[f"champion.{column}"].to_numpy() if f"champion.{column}" in rows else None,
        baselines={n: rows[f"{n}.{column}"].to_numpy() for n in summary["baselines"] if f"{n}.{column}" in rows},
        clusters=families.get(model_name).clusters,
    )
    guards = {}
    for name in policy.guard_metrics:
        guard_column, guard_statistic = gate_rows(model_name, name, rows)
        if f"champion.{guard_column}" in rows:
            guards[name] = Rows(
                rows["user_id"].to_numpy(),
                rows[f"candidate.{guard_column}"].to_numpy(),
                guard_statistic,
                champion=rows[f"champion.{guard_column}"].to_numpy(),
                clusters=families.get(model_name).clusters,
            )
    decision = decide(
        policy,
        summary["candidate"]["metrics"],
        {n: b["metrics"][metric] for n, b in summary["baselines"].items()},
        champion=None if summary["champion"] is None else summary["champion"]["metrics"],
        champion_version=summary["champion_version"],
        rows=per_row,
        latency_ms=summary["latency_ms_p95"],
        model_mb=summary["model_mb"],
        champion_ineligible=champion_ineligibility(summary),
        online=online,
        guards=guards,
        latency_context=latency_context(summary),
        positives=positive_labels(rows),
    )
    client.log_metric(run_id, "gate_passed", float(decision.passed))
    client.set_tag(run_id, "gate.decision", "passed" if decision.passed else "rejected")
    client.set_tag(run_id, "gate.reasons", "\n".join(decision.reasons)[:4900])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decision.json"
        path.write_text(json.dumps({**decision.to_dict(), "policy": policy.to_dict()}, indent=2, default=str))
        client.log_artifact(run_id, str(path), artifact_path="evaluation")
    log.debug("%s run %s\n%s", model_name, run_id, decision.summary())
    return decision


def two_sample_bootstrap(
    a: tuple[np.ndarray, np.ndarray, Callable],
    b: tuple[np.ndarray, np.ndarray, Callable],
    samples: int,
    confidence: float,
    seed: int,
) -> tuple[float, tuple[float, float]]:
    """``cluster_bootstrap`` for two groups of different users (a canary's and the champion's):
    each side's users resampled on their own. ``a`` and ``b`` are (groups, values, statistic), the
    statistic as in ``cluster_bootstrap``. Returns the observed difference a - b and its percentile
    interval at ``confidence``."""
    rng = np.random.default_rng(seed)
    (groups_a, values_a, statistic_a), (groups_b, values_b, statistic_b) = a, b
    draw_a, draw_b = _group_draws(groups_a, rng), _group_draws(groups_b, rng)
    diffs = np.empty(samples)
    for i in range(samples):
        rows_a, rows_b = draw_a(), draw_b()
        diffs[i] = statistic_a(values_a[rows_a], rows_a) - statistic_b(values_b[rows_b], rows_b)
    observed = statistic_a(values_a, np.arange(values_a.size)) - statistic_b(values_b, np.arange(values_b.size))
    return float(observed), _interval(diffs, confidence)
