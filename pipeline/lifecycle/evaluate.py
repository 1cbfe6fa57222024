"""Evaluate a candidate and the current champion on the same frozen test rows; log it to the run.

The test rows are cut from the candidate run's own dataset version at the run's own split points
(``build_test_set``), so an evaluation rerun next week, after new days were published, scores the
same rows. Both models are scored through their pyfunc (``ModelSpec.score``), beside the family's
baselines (``ModelSpec.baselines``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from pipeline.core.settings import StatePaths
from pipeline.core.tracking import (
    CHAMPION,
    NO_CHAMPION,
    PREDICTIONS,
    RegistryError,
    alias_version,
    logged_model_uri,
    mlflow_client,
)
from pipeline.data.dataset import TimeSplit
from pipeline.data.version import open_dataset
from pipeline.families import get as get_family
from pipeline.families.base import ModelScores, TestSet
from pipeline.lifecycle.monitor import SESSION_PREFIX, load_monitoring_policy

SESSION_ROWS = "session_rows.parquet"  # the online protocol's outcomes per request, under evaluation/


@dataclass
class Evaluation:
    model_name: str
    run_id: str
    champion_version: str | None
    candidate: ModelScores
    champion: ModelScores | None
    baselines: dict[str, ModelScores]
    model_mb: float
    test_start: str = ""  # the candidate's test period starts here (its split's valid_end)
    champion_data_end: str = ""  # the champion's data ends here (its split's valid_end); "" without one
    # The online protocol run offline on the test period (``Monitoring.offline``): its outcomes per
    # request, for the candidate (role ``candidate``) and the floors (role ``floor``).
    session: pl.DataFrame | None = None
    session_figures: dict[str, dict[str, float]] | None = None
    # The host's 1-minute load average just after the candidate's latency was measured, and its
    # cores: the gate names them beside a latency over its limit (``gate.latency_context``).
    host_load: float = float("nan")
    host_cpus: int = 0


def host_load() -> float:
    """The host's 1-minute load average (``nan`` where the OS has none)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return float("nan")


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def build_test_set(paths: StatePaths, model_name: str, run, dataset_version: str | None = None) -> TestSet:
    """The frozen test rows of a training run: its own dataset version (the ``dataset_version`` tag;
    ``dataset_version`` instead when given), cut at its own split points (the ``split.*`` params, as
    in its ``split.json``), never today's data or today's calendar.

    Raises:
        RegistryError: the run records no dataset version or no split.
        UnknownDatasetVersion: that version cannot be restored.
    """
    version, split = run_data(run)
    return get_family(model_name).test_set(open_dataset(paths, dataset_version or version), split, run.data.params)


def run_data(run) -> tuple[str, TimeSplit]:
    """A training run's dataset version (its ``dataset_version`` tag) and split (its ``split.*`` params).

    Raises:
        RegistryError: the run records no dataset version or no split.
    """
    params, version = run.data.params, run.data.tags.get("dataset_version")
    cut = {k: params.get(f"split.{k}") for k in ("start", "train_end", "valid_end", "end")}
    if not version or None in cut.values():
        raise RegistryError(
            f"run {run.info.run_id} records no dataset version or no split (tag dataset_version, "
            f"params split.*); it was not trained by this pipeline"
        )
    return version, TimeSplit.from_dict(cut)


def evaluate_candidate(
    paths: StatePaths, model_name: str, run_id: str, dataset_version: str | None = None
) -> Evaluation:
    """Score the run's model, the champion and the baselines on the same test rows; log to the run.

    The candidate run receives metrics ``eval_*`` (candidate), ``eval_champion_*`` and
    ``eval_baseline_<name>_*``, and artifacts under ``evaluation/``: ``summary.json`` (all metrics,
    per slice too), ``rows.parquet`` (per-row values for the gate's bootstrap) and plots.
    """
    import mlflow

    from pipeline.core.integrity import DIGEST_TAG, download_checked

    spec = get_family(model_name)
    client = mlflow_client(paths)
    run = client.get_run(run_id)
    test = build_test_set(paths, model_name, run, dataset_version)
    champion_mv = alias_version(client, model_name, CHAMPION)
    score = spec.score
    with tempfile.TemporaryDirectory() as tmp:
        local = download_checked(
            logged_model_uri(client, run_id),
            run.data.tags.get(DIGEST_TAG),
            Path(tmp) / "model",
            f"{model_name} run {run_id}'s model",
        )
        loaded = mlflow.pyfunc.load_model(local)
        candidate = score(loaded, test)
        load = host_load()
        session, figures = None, None
        if spec.monitoring is not None and spec.monitoring.offline is not None:
            version, split = run_data(run)
            monitoring = load_monitoring_policy(model_name)
            session = spec.monitoring.offline(
                loaded,
                open_dataset(paths, dataset_version or version),
                split,
                monitoring,
                {"client": client, "run": run},
            )
            figures = session_figures(spec.monitoring, session, monitoring)
        model_mb = _dir_mb(Path(local))
        champion, champion_end = None, ""
        if champion_mv is not None:
            champion_local = download_checked(
                champion_mv.source,  # its logged model: a download by name gains a file of MLflow's own
                champion_mv.tags.get(DIGEST_TAG),
                Path(tmp) / "champion",
                f"{model_name} version {champion_mv.version} (the champion)",
            )
            champion = score(mlflow.pyfunc.load_model(champion_local), test)
            champion_end = client.get_run(champion_mv.run_id).data.params.get("split.valid_end", "")
        baselines = spec.baselines(client, run_id, test, Path(tmp))
    evaluation = Evaluation(
        model_name,
        run_id,
        str(champion_mv.version) if champion_mv else None,
        candidate,
        champion,
        baselines,
        model_mb,
        run.data.params["split.valid_end"],
        champion_end,
        session,
        figures,
        load,
        os.cpu_count() or 0,
    )
    _log_evaluation(client, evaluation, test)
    return evaluation


def session_figures(hooks, session: pl.DataFrame, policy) -> dict[str, dict[str, float]] | None:
    """The figures of each side of the online protocol run offline (``candidate`` and the floors' names)."""
    if session.height == 0:
        return None
    return {
        (version if role == "floor" else role): hooks.figures(part, policy)
        for (role, version), part in sorted(session.group_by("role", "model_version"), key=lambda g: g[0])
    }


def _log_evaluation(client, ev: Evaluation, test: TestSet) -> None:
    metrics = {f"eval_{k}": v for k, v in ev.candidate.metrics.items()}
    metrics["eval_latency_ms_p95"] = ev.candidate.latency_ms_p95
    metrics["eval_model_mb"] = ev.model_mb
    metrics["eval_host_load_1m"] = ev.host_load
    if ev.champion is not None:
        metrics.update({f"eval_champion_{k}": v for k, v in ev.champion.metrics.items()})
    for name, scores in ev.baselines.items():
        metrics.update({f"eval_baseline_{name}_{k}": v for k, v in scores.metrics.items()})
    for side, figures in (ev.session_figures or {}).items():
        metrics.update({f"{SESSION_PREFIX}{side}.{k}": v for k, v in figures.items()})
    for key, value in metrics.items():
        if np.isfinite(value):
            client.log_metric(ev.run_id, key, float(value))
    client.set_tag(ev.run_id, "eval.champion_version", ev.champion_version or NO_CHAMPION)

    summary = {
        "model": ev.model_name,
        "champion_version": ev.champion_version,
        "rows": len(test.users),
        "users": int(pd.unique(test.users).size),
        "model_mb": ev.model_mb,
        "latency_ms_p95": ev.candidate.latency_ms_p95,
        "host_load_1m": ev.host_load,
        "host_cpus": ev.host_cpus,
        "test_start": ev.test_start,
        "champion_data_end": ev.champion_data_end or None,
        "session": ev.session_figures,
        "candidate": {"metrics": ev.candidate.metrics, "slices": ev.candidate.slices},
        "champion": None if ev.champion is None else {"metrics": ev.champion.metrics, "slices": ev.champion.slices},
        "baselines": {n: {"metrics": s.metrics, "slices": s.slices} for n, s in ev.baselines.items()},
    }
    rows = pd.DataFrame({"user_id": test.users.astype(str)})
    if test.labels is not None:
        rows["label"] = test.labels
    for name, values in test.columns.items():
        rows[name] = values
    sides: list[tuple[str, ModelScores | None]] = [
        ("candidate", ev.candidate),
        ("champion", ev.champion),
        *ev.baselines.items(),
    ]
    for side, side_scores in sides:
        if side_scores is not None:
            for name, values in side_scores.values.items():
                rows[f"{side}.{name}"] = values
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "evaluation"
        out.mkdir()
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        rows.to_parquet(out / "rows.parquet", index=False)
        if ev.session is not None and ev.session.height:
            ev.session.write_parquet(out / SESSION_ROWS)
        # What the candidate was asked and answered, for the serving stage's parity check.
        assert ev.candidate.predictions is not None  # the candidate is always scored with its answers
        answers = ev.candidate.predictions.reset_index(drop=True).add_prefix("predicted_")
        pd.concat(
            [pd.DataFrame({"user_id": test.users.astype(str)}), test.inputs.reset_index(drop=True), answers], axis=1
        ).to_parquet(out / PREDICTIONS, index=False)
        _plots(ev, test, out)
        client.log_artifacts(ev.run_id, str(out), artifact_path="evaluation")


def _plots(ev: Evaluation, test: TestSet, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = get_family(ev.model_name).plot_metric
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
    if test.labels is not None and "probability" in ev.candidate.values:
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
