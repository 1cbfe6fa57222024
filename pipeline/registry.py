"""Evaluate -> gate -> register -> promote, through the MLflow model registry.

Registered model names are the model names (``next_item``, ``purchase_propensity``). Aliases:

* ``challenger``: the newest version that passed the gate, waiting for packaging;
* ``champion``: the version that serves.

Every version is registered, passed or not, tagged with its dataset version, git commit, gate
decision and reasons, and its evaluation metrics. A promotion is a compare-and-set: it names the
champion the candidate was evaluated against and fails if the champion moved meanwhile, under a
lock, so two racing promotions leave exactly one champion, and never a candidate that was not
compared with the model it replaces. Each change of champion is recorded (who, why, when) on the
registered model; ``rollback`` moves the champion back to the one before.

Each step reads what it needs from MLflow, so the DAG's tasks can run on different workers.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from pipeline.evaluate import (
    ModelScores,
    TestSet,
    auc,
    next_item_test_set,
    per_slice,
    popularity_scores,
    propensity_metrics,
    propensity_test_set,
    score_propensity,
    score_recommender,
)
from pipeline.gate import Decision, Policy, decide, load_policy
from pipeline.settings import StatePaths
from pipeline.tracking import tracking_uri

log = logging.getLogger(__name__)

CHALLENGER, CHAMPION = "challenger", "champion"
MODELS = ("next_item", "purchase_propensity")
HISTORY_TAG, STACK_TAG = "champion_history", "champion_stack"
HISTORY_KEPT = 20
NO_CHAMPION = "none"
PREDICTIONS = "predictions.parquet"   # under the run's evaluation/ artifacts


class RegistryError(RuntimeError):
    """A registry operation that cannot be done as asked (the message says why)."""


class ChampionMoved(RegistryError):
    """The champion changed between the candidate's evaluation and its promotion."""


def _client(paths: StatePaths):
    import mlflow
    from mlflow.tracking import MlflowClient

    # Task logs should show decisions, not a progress bar per downloaded artifact.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(paths)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _check_model(model_name: str) -> None:
    if model_name not in MODELS:
        raise RegistryError(f"unknown model {model_name!r}; models: {', '.join(MODELS)}")


def alias_version(client, model_name: str, alias: str):
    """The model version behind ``alias``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def _model_uri(client, run_id: str) -> str:
    """The model logged by a training run (MLflow 3 logged model)."""
    import mlflow

    run = client.get_run(run_id)
    # Without experiment ids MLflow searches only the active experiment, which a fresh worker lacks.
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run_id}'", output_format="list")
    if not models:
        raise RegistryError(f"run {run_id} logged no model")
    return models[0].model_uri


# Evaluation --------------------------------------------------------------------------------------

@dataclass
class Evaluation:
    model_name: str
    run_id: str
    champion_version: str | None
    candidate: ModelScores
    champion: ModelScores | None
    baselines: dict[str, ModelScores]
    model_mb: float


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def _logreg_scores(client, run_id: str, test: TestSet, tmp: Path) -> ModelScores:
    import joblib

    from pipeline.features import PROPENSITY_DENSE
    from pipeline.train import logreg_features

    saved = joblib.load(client.download_artifacts(run_id, "baseline/logreg.joblib", str(tmp)))
    dense = test.inputs[list(PROPENSITY_DENSE)].to_numpy(dtype=np.float32)
    probs = saved["model"].predict_proba(logreg_features(dense, saved["mean"], saved["std"]))[:, 1]
    labels = test.labels
    return ModelScores(propensity_metrics(labels, probs), {"probability": probs},
                       per_slice(test, lambda m: propensity_metrics(labels[m], probs[m])))


def build_test_set(paths: StatePaths, model_name: str, run) -> TestSet:
    """The frozen test rows: the current dataset, cut as the candidate's training cut it."""
    from pipeline.features import latest_catalog, load_events, split_by_time

    events, catalog = load_events(paths.canonical), latest_catalog(paths.canonical)
    params = run.data.params
    valid_days = (datetime.fromisoformat(params["split.valid_end"])
                  - datetime.fromisoformat(params["split.train_end"])).days
    test_days = (datetime.fromisoformat(params["split.end"]) - datetime.fromisoformat(params["split.valid_end"])).days
    split = split_by_time(events, valid_days, test_days)
    if model_name == "next_item":
        return next_item_test_set(events, catalog, split)
    return propensity_test_set(events, catalog, split, int(params["data.horizon_days"]),
                               int(params["data.lookback_days"]))


def evaluate_candidate(paths: StatePaths, model_name: str, run_id: str) -> Evaluation:
    """Score the run's model, the champion and the baselines on the same test rows; log to the run.

    The candidate run receives metrics ``eval_*`` (candidate), ``eval_champion_*`` and
    ``eval_baseline_<name>_*``, and artifacts under ``evaluation/``: ``summary.json`` (all metrics,
    per slice too), ``rows.parquet`` (per-row values for the gate's bootstrap) and plots.
    """
    import mlflow

    _check_model(model_name)
    client = _client(paths)
    run = client.get_run(run_id)
    test = build_test_set(paths, model_name, run)
    champion_mv = alias_version(client, model_name, CHAMPION)
    score = score_recommender if model_name == "next_item" else score_propensity
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(_model_uri(client, run_id), dst_path=str(Path(tmp) / "model"))
        candidate = score(mlflow.pyfunc.load_model(local), test)
        model_mb = _dir_mb(Path(local))
        champion = None
        if champion_mv is not None:
            champion = score(mlflow.pyfunc.load_model(f"models:/{model_name}/{champion_mv.version}"), test)
        if model_name == "next_item":
            baselines = {"popularity": popularity_scores(test)}
        else:
            baselines = {"logistic_regression": _logreg_scores(client, run_id, test, Path(tmp))}
    evaluation = Evaluation(model_name, run_id, str(champion_mv.version) if champion_mv else None, candidate, champion,
                            baselines, model_mb)
    _log_evaluation(client, evaluation, test)
    return evaluation


def _log_evaluation(client, ev: Evaluation, test: TestSet) -> None:
    metrics = {f"eval_{k}": v for k, v in ev.candidate.metrics.items()}
    metrics["eval_latency_ms_p95"] = ev.candidate.latency_ms_p95
    metrics["eval_model_mb"] = ev.model_mb
    if ev.champion is not None:
        metrics.update({f"eval_champion_{k}": v for k, v in ev.champion.metrics.items()})
    for name, scores in ev.baselines.items():
        metrics.update({f"eval_baseline_{name}_{k}": v for k, v in scores.metrics.items()})
    for key, value in metrics.items():
        if np.isfinite(value):
            client.log_metric(ev.run_id, key, float(value))
    client.set_tag(ev.run_id, "eval.champion_version", ev.champion_version or NO_CHAMPION)

    summary = {
        "model": ev.model_name, "champion_version": ev.champion_version, "rows": len(test.users),
        "users": int(pd.unique(test.users).size), "model_mb": ev.model_mb,
        "latency_ms_p95": ev.candidate.latency_ms_p95,
        "candidate": {"metrics": ev.candidate.metrics, "slices": ev.candidate.slices},
        "champion": None if ev.champion is None else {"metrics": ev.champion.metrics, "slices": ev.champion.slices},
        "baselines": {n: {"metrics": s.metrics, "slices": s.slices} for n, s in ev.baselines.items()},
    }
    rows = pd.DataFrame({"user_id": test.users.astype(str)})
    if test.labels is not None:
        rows["label"] = test.labels
    for side, scores in (("candidate", ev.candidate), ("champion", ev.champion), *ev.baselines.items()):
        if scores is not None:
            for name, values in scores.values.items():
                rows[f"{side}.{name}"] = values
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "evaluation"
        out.mkdir()
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        rows.to_parquet(out / "rows.parquet", index=False)
        # What the candidate was asked and answered, for the serving stage's parity check.
        answers = ev.candidate.predictions.reset_index(drop=True).add_prefix("predicted_")
        pd.concat([pd.DataFrame({"user_id": test.users.astype(str)}), test.inputs.reset_index(drop=True), answers],
                  axis=1).to_parquet(out / PREDICTIONS, index=False)
        _plots(ev, test, out)
        client.log_artifacts(ev.run_id, str(out), artifact_path="evaluation")


def _plots(ev: Evaluation, test: TestSet, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "ndcg_at_20" if ev.model_name == "next_item" else "auc"
    sides = {"candidate": ev.candidate, **({"champion": ev.champion} if ev.champion else {}), **ev.baselines}
    names = list(ev.candidate.slices)
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 4))
    width = 0.8 / len(sides)
    for j, (side, scores) in enumerate(sides.items()):
        ax.bar(np.arange(len(names)) + j * width, [scores.slices[n][metric] for n in names], width, label=side)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(f"{ev.model_name}: {metric} by slice")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{metric}_by_slice.png", dpi=100)
    plt.close(fig)
    if test.labels is not None:
        fig, ax = plt.subplots(figsize=(5, 5))
        edges = np.linspace(0, 1, 11)
        for side, scores in sides.items():
            probs = scores.values["probability"]
            which = np.minimum(np.digitize(probs, edges[1:-1]), 9)
            pts = [(probs[which == b].mean(), test.labels[which == b].mean()) for b in range(10) if (which == b).any()]
            ax.plot(*zip(*pts, strict=True), marker="o", label=side)
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("observed purchase rate")
        ax.set_title("calibration")
        ax.legend()
        fig.savefig(out / "calibration_curve.png", dpi=100)
        plt.close(fig)


# Gate --------------------------------------------------------------------------------------------

def _statistic(policy: Policy, labels: np.ndarray | None):
    if policy.metric == "auc":
        if labels is None:
            raise RegistryError("metric auc needs labels")
        return lambda values, rows: auc(labels[rows], values)
    return lambda values, rows: float(values.mean())


def gate_candidate(paths: StatePaths, model_name: str, run_id: str, policy: Policy | None = None) -> Decision:
    """Apply the policy to the run's evaluation; log and print the decision and every reason."""
    _check_model(model_name)
    policy = policy or load_policy(model_name)
    client = _client(paths)
    with tempfile.TemporaryDirectory() as tmp:
        summary = json.loads(Path(client.download_artifacts(run_id, "evaluation/summary.json", tmp)).read_text())
        rows = pd.read_parquet(client.download_artifacts(run_id, "evaluation/rows.parquet", tmp))
    metric = policy.metric
    if metric not in summary["candidate"]["metrics"]:
        raise RegistryError(f"policy metric {metric!r} is not among the evaluation's metrics "
                            f"({', '.join(summary['candidate']['metrics'])})")
    paired = None
    if summary["champion"] is not None:
        column = "probability" if metric == "auc" else metric
        labels = rows["label"].to_numpy() if "label" in rows else None
        paired = (rows["user_id"].to_numpy(), rows[f"candidate.{column}"].to_numpy(),
                  rows[f"champion.{column}"].to_numpy(), _statistic(policy, labels))
    decision = decide(
        policy, summary["candidate"]["metrics"],
        {n: b["metrics"][metric] for n, b in summary["baselines"].items()},
        champion=None if summary["champion"] is None else summary["champion"]["metrics"],
        champion_version=summary["champion_version"], paired=paired,
        latency_ms=summary["latency_ms_p95"], model_mb=summary["model_mb"],
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


# Registry ----------------------------------------------------------------------------------------

def register_candidate(paths: StatePaths, model_name: str, run_id: str):
    """Register the run's model as a version with lineage tags; ``challenger`` if it passed the gate.

    Idempotent: a run already registered returns its existing version (a retried task never
    registers a model twice).
    """
    import mlflow

    _check_model(model_name)
    client = _client(paths)
    run = client.get_run(run_id)
    decision = run.data.tags.get("gate.decision")
    if decision is None:
        raise RegistryError(f"run {run_id} has no gate decision; run the gate first")
    existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    if existing:
        mv = existing[0]
    else:
        mv = mlflow.register_model(_model_uri(client, run_id), model_name)
        tags = {
            "dataset_version": run.data.tags.get("dataset_version", ""),
            "git_commit": run.data.tags.get("git_commit", ""),
            "run_id": run_id, "gate.decision": decision, "gate.reasons": run.data.tags.get("gate.reasons", ""),
            "gate.champion_version": run.data.tags.get("eval.champion_version", NO_CHAMPION),
            "status": "challenger" if decision == "passed" else "rejected",
        }
        tags.update({k: f"{v:.6g}" for k, v in run.data.metrics.items() if k.startswith(("eval_", "test_"))})
        for key, value in tags.items():
            client.set_model_version_tag(model_name, mv.version, key, value)
    if decision == "passed":
        client.set_registered_model_alias(model_name, CHALLENGER, mv.version)
    log.info("%s version %s registered from run %s (gate %s)", model_name, mv.version, run_id, decision)
    return client.get_model_version(model_name, mv.version)


def _lock(paths: StatePaths, model_name: str) -> FileLock:
    # One promotion at a time per model. With a shared tracking server, SHOPML_HOME must sit on
    # storage every worker sees (the compare-and-set below still refuses a stale promotion).
    lock_dir = paths.home / "registry"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock_dir / f"{model_name}.lock"), timeout=120)


def _record(client, model_name: str, entry: dict, stack: list[str]) -> None:
    model = client.get_registered_model(model_name)
    history = json.loads(model.tags.get(HISTORY_TAG, "[]"))
    history = ([*history, entry])[-HISTORY_KEPT:]
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(history))
    client.set_registered_model_tag(model_name, STACK_TAG, json.dumps(stack[-HISTORY_KEPT:]))


def _stack(client, model_name: str) -> list[str]:
    return json.loads(client.get_registered_model(model_name).tags.get(STACK_TAG, "[]"))


def promote(paths: StatePaths, model_name: str, version: str | None = None, expected_champion: str | None = "any",
            by: str | None = None, reason: str = "", force: bool = False, policy: Policy | None = None):
    """Make ``version`` (default: the ``challenger``) the champion.

    Args:
        expected_champion: the champion version the candidate was evaluated against (``"none"``
            when there was none); the promotion fails with ``ChampionMoved`` if the champion is
            another by now. ``"any"`` skips this check (a person promoting by hand).
        force: promote a version the gate rejected or whose Bento was not smoke-tested (a person
            overriding the gate; recorded).
        policy: the rules (default: the policy file); ``require_smoke_test`` is read from it.
    """
    _check_model(model_name)
    client = _client(paths)
    with _lock(paths, model_name):
        if version is None:
            challenger = alias_version(client, model_name, CHALLENGER)
            if challenger is None:
                raise RegistryError(f"{model_name} has no challenger to promote; name a version")
            version = str(challenger.version)
        mv = client.get_model_version(model_name, str(version))
        if mv.tags.get("gate.decision") != "passed" and not force:
            raise RegistryError(f"{model_name} version {version} was rejected by the gate "
                                f"({mv.tags.get('gate.reasons', 'no reasons recorded')}); use --force to override")
        if (policy or load_policy(model_name)).require_smoke_test and mv.tags.get("smoke_test") != "passed" \
                and not force:
            state = mv.tags.get("smoke_test")
            why = f"its smoke test failed: {mv.tags.get('smoke_test.reason', '')[:300]}" if state == "failed" else \
                "it was never packaged and smoke-tested"
            raise RegistryError(f"{model_name} version {version} cannot be champion: {why}; run "
                                f"`python -m pipeline package --model {model_name} --version {version}` "
                                f"(or --force to override)")
        current = alias_version(client, model_name, CHAMPION)
        current_version = str(current.version) if current else NO_CHAMPION
        if expected_champion != "any" and str(expected_champion) != current_version:
            raise ChampionMoved(f"{model_name}: the champion is version {current_version}, but version {version} "
                                f"was evaluated against {expected_champion}; evaluate it again")
        if current_version == str(version):
            return mv
        client.set_registered_model_alias(model_name, CHAMPION, str(version))
        challenger = alias_version(client, model_name, CHALLENGER)
        if challenger is not None and str(challenger.version) == str(version):
            client.delete_registered_model_alias(model_name, CHALLENGER)
        by = by or getpass.getuser()
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        client.set_model_version_tag(model_name, str(version), "status", "champion")
        client.set_model_version_tag(model_name, str(version), "promoted_at", now)
        client.set_model_version_tag(model_name, str(version), "promoted_by", by)
        if current is not None:
            client.set_model_version_tag(model_name, current.version, "status", "retired")
        _record(client, model_name, {"action": "promote", "version": str(version), "previous": current_version,
                                     "by": by, "reason": reason, "at": now, "forced": force},
                [*_stack(client, model_name), str(version)])
    log.info("%s: champion is now version %s (was %s)", model_name, version, current_version)
    return client.get_model_version(model_name, str(version))


def rollback(paths: StatePaths, model_name: str, by: str | None = None, reason: str = ""):
    """Move ``champion`` back to the version that was champion before the current one."""
    _check_model(model_name)
    client = _client(paths)
    with _lock(paths, model_name):
        current = alias_version(client, model_name, CHAMPION)
        stack = _stack(client, model_name)
        if current is None or len(stack) < 2 or stack[-1] != str(current.version):
            raise RegistryError(f"{model_name}: no previous champion to roll back to "
                                f"(champion {current.version if current else 'none'}, history {stack})")
        target = stack[-2]
        client.set_registered_model_alias(model_name, CHAMPION, target)
        by = by or getpass.getuser()
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        client.set_model_version_tag(model_name, current.version, "status", "rolled_back")
        client.set_model_version_tag(model_name, current.version, "rolled_back_by", by)
        client.set_model_version_tag(model_name, current.version, "rolled_back_reason", reason)
        client.set_model_version_tag(model_name, target, "status", "champion")
        _record(client, model_name, {"action": "rollback", "version": target, "previous": str(current.version),
                                     "by": by, "reason": reason, "at": now}, stack[:-1])
    log.info("%s: rolled back from version %s to %s (%s)", model_name, current.version, target, reason)
    return client.get_model_version(model_name, target)


def lineage(paths: StatePaths, model_name: str, version: str | None = None, bento_tag: str | None = None) -> dict:
    """From a model version (default: the champion) or a Bento tag back to its run, data and code."""
    _check_model(model_name)
    client = _client(paths)
    if bento_tag is not None:
        found = client.search_model_versions(f"name = '{model_name}' and tags.bento_tag = '{bento_tag}'")
        if not found:
            raise RegistryError(f"no {model_name} version was packaged as Bento {bento_tag}")
        mv = found[0]
    elif version is None:
        mv = alias_version(client, model_name, CHAMPION)
        if mv is None:
            raise RegistryError(f"{model_name} has no champion; name a version")
    else:
        mv = client.get_model_version(model_name, str(version))
    run = client.get_run(mv.run_id)
    return {
        "model": model_name, "version": str(mv.version),
        "aliases": _aliases_by_version(client, model_name).get(str(mv.version), []), "status": mv.tags.get("status"),
        "run_id": mv.run_id, "experiment_id": run.info.experiment_id,
        "dataset_version": run.data.tags.get("dataset_version"), "dataset_path": run.data.tags.get("dataset_path"),
        "git_commit": run.data.tags.get("git_commit"), "bento_tag": mv.tags.get("bento_tag"),
        "gate_decision": mv.tags.get("gate.decision"), "gate_reasons": mv.tags.get("gate.reasons", "").splitlines(),
        "evaluated_against": mv.tags.get("gate.champion_version"),
        "split": {k.removeprefix("split."): v for k, v in run.data.params.items() if k.startswith("split.")},
        "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith(("eval_", "test_", "baseline_"))},
    }


def _aliases_by_version(client, model_name: str) -> dict[str, list[str]]:
    """Version -> its aliases. Model versions from a search do not carry their aliases on every
    backend; the registered model does."""
    held: dict[str, list[str]] = {}
    for alias, version in sorted((client.get_registered_model(model_name).aliases or {}).items()):
        held.setdefault(str(version), []).append(alias)
    return held


def list_versions(paths: StatePaths, model_name: str | None = None) -> list[dict]:
    """Every registered version with its aliases, status, gate decision and dataset version."""
    from mlflow.exceptions import MlflowException

    client = _client(paths)
    out = []
    for name in [model_name] if model_name else MODELS:
        try:
            aliases = _aliases_by_version(client, name)
        except MlflowException:
            continue  # not registered yet
        for mv in client.search_model_versions(f"name = '{name}'"):
            out.append({"model": name, "version": int(mv.version), "aliases": aliases.get(str(mv.version), []),
                        "status": mv.tags.get("status"), "gate": mv.tags.get("gate.decision"),
                        "dataset_version": (mv.tags.get("dataset_version") or "")[:12], "run_id": mv.run_id,
                        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc)
                        .isoformat(timespec="seconds")})
    return sorted(out, key=lambda r: (r["model"], r["version"]))


@dataclass
class GateOutcome:
    decision: Decision
    version: str
    promoted: bool


def evaluate_gate_register(paths: StatePaths, model_name: str, run_id: str, policy: Policy | None = None,
                           by: str = "pipeline") -> GateOutcome:
    """The whole path after training: evaluate, gate, register, and for a passed candidate package
    and smoke-test its Bento (policy ``require_smoke_test``), then promote it.

    The promotion names the champion the candidate was evaluated against, so a champion that
    moved meanwhile (another run won a race) makes this one fail with ``ChampionMoved``.
    """
    policy = policy or load_policy(model_name)
    evaluate_candidate(paths, model_name, run_id)
    decision = gate_candidate(paths, model_name, run_id, policy)
    mv = register_candidate(paths, model_name, run_id)
    if decision.passed:
        if policy.require_smoke_test:
            from pipeline.serving.package import package

            package(paths, model_name, str(mv.version))
        promote(paths, model_name, mv.version, expected_champion=decision.champion_version or NO_CHAMPION,
                by=by, reason="passed the gate and the smoke test" if policy.require_smoke_test else
                "passed the gate", policy=policy)
    return GateOutcome(decision, str(mv.version), decision.passed)
