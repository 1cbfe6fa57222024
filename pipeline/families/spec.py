"""What the pipeline needs to know about a model family, in one object.

A family is a kind of model the pipeline trains, evaluates, gates, packages and serves (next-item
recommendation, purchase propensity). Every stage asks the family's ``ModelSpec`` for the part it
needs and never imports a family's modules nor switches on its name, so a new family is one folder
that builds a spec plus one row in ``pipeline.families.FAMILIES`` (or a ``register`` call);
``tests/test_layout.py`` checks both.

Each field that is a function is typed by a Protocol below: the call the pipeline makes, with its
arguments in order (positional, so a family may name its parameters as it likes). A type checker
(``make typecheck``) then catches a family whose function takes or returns the wrong thing.

Standard library only at run time: DAG files import the family table when Airflow parses them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # for the checker only: none of these is imported when a DAG file is parsed
    import numpy as np
    import pandas as pd
    import polars as pl

    from pipeline.core.params import Params
    from pipeline.core.settings import StatePaths
    from pipeline.data.dataset import Dataset, TimeSplit
    from pipeline.data.drift import FeatureDrift, FeatureSkew
    from pipeline.families.base import ModelScores, TestSet
    from pipeline.families.training import TrainOutcome

# post(endpoint, json body) -> (answer as JSON, milliseconds): a smoke test's HTTP call.
Post = Callable[[str, Any], tuple[Any, float]]


@dataclass(frozen=True)
class ParityOutcome:
    """Served answers compared with the offline evaluation's, request by request."""

    mismatches: int
    max_abs_diff: float
    times_ms: list[float]
    examples: list[str]


class Snapshot(Protocol):
    """A loaded feature snapshot (``pipeline.serving.snapshot.FeatureSnapshot``), as families read it."""

    meta: dict
    tables: dict[str, pl.DataFrame]

    @property
    def cutoff(self) -> datetime: ...

    def rows(self, name: str, values: pl.DataFrame, /) -> pl.DataFrame: ...

    def view(self, kind: Any, /) -> Any: ...


class CutPoints(Protocol):
    """A family's split as the feature set's manifest records it: ``TimeSplit`` (start, train_end,
    valid_end, end), or one with more cut points (the fraud split's label-maturity gaps)."""

    def to_dict(self) -> dict[str, str]: ...


class WriteFeatures(Protocol):
    def __call__(self, folder: Path, dataset: Dataset, params: Any, /) -> tuple[dict[str, Any], CutPoints]: ...


class Train(Protocol):
    def __call__(
        self,
        paths: StatePaths,
        params: Any,
        tags: dict[str, str] | None = None,
        /,
        *,
        features: Path | None = None,
        dataset_version: str | None = None,
    ) -> TrainOutcome: ...


class MakeTestSet(Protocol):
    def __call__(self, dataset: Dataset, split: TimeSplit, run_params: dict[str, str], /) -> TestSet: ...


class Score(Protocol):
    def __call__(self, model: Any, test: TestSet, /) -> ModelScores: ...


class Baselines(Protocol):
    def __call__(self, client: Any, run_id: str, test: TestSet, workdir: Path, /) -> dict[str, ModelScores]: ...


class Parity(Protocol):
    def __call__(self, post: Post, expected: pd.DataFrame, /) -> ParityOutcome: ...


class SmokeChecks(Protocol):
    def __call__(self, post: Post, /) -> list[str]: ...


class ServingStates(Protocol):
    def __call__(self, python_model: Any, snapshot: Snapshot, out: Path, /) -> dict[str, Any]: ...


class UserParity(Protocol):
    def __call__(self, post: Post, python_model: Any, dataset: Dataset, n: int, /) -> ParityOutcome: ...


class FloorModel(Protocol):
    def __call__(
        self,
        name: str,
        dataset: Dataset,
        split: TimeSplit,
        run_params: dict[str, str],
        workdir: Path,
        client: Any,
        run_id: str,
        /,
    ) -> dict[str, Any]: ...


class GateStatistic(Protocol):
    def __call__(
        self, metric: str, rows: pd.DataFrame, /
    ) -> tuple[str, Callable[[np.ndarray, np.ndarray], float]] | None: ...


class SnapshotTables(Protocol):
    def __call__(
        self, events: pl.DataFrame, catalog: pl.DataFrame, cutoff: datetime, /
    ) -> dict[str, tuple[pl.DataFrame, list[str]]]: ...


class Outcomes(Protocol):
    def __call__(self, answers: pl.DataFrame, events: pl.DataFrame, policy: Any, /) -> pl.DataFrame: ...


class Figures(Protocol):
    def __call__(self, outcomes: pl.DataFrame, policy: Any, /) -> dict[str, float]: ...


class Drift(Protocol):
    def __call__(
        self,
        events: pl.DataFrame,
        catalog: pl.DataFrame,
        start: datetime,
        end: datetime,
        champion: dict[str, Any],
        policy: Any,
        /,
    ) -> list[FeatureDrift]: ...


class Skew(Protocol):
    def __call__(
        self, snapshot: Snapshot, events: pl.DataFrame, catalog: pl.DataFrame, answers: pl.DataFrame, /
    ) -> list[FeatureSkew]: ...


class Requests(Protocol):
    def __call__(
        self, events: pl.DataFrame, /
    ) -> Sequence[tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], str]]: ...


class Statistic(Protocol):
    def __call__(self, outcomes: pl.DataFrame, /) -> Callable[[np.ndarray, np.ndarray], float]: ...


class References(Protocol):
    def __call__(
        self,
        answers: pl.DataFrame,
        events: pl.DataFrame,
        champion: dict[str, Any],
        snapshot: Snapshot | None,
        policy: Any,
        /,
    ) -> pl.DataFrame: ...


class OfflineProtocol(Protocol):
    def __call__(self, pyfunc: Any, dataset: Dataset, split: TimeSplit, policy: Any, run: dict, /) -> pl.DataFrame: ...


@dataclass(frozen=True)
class Monitoring:
    """How a family's served answers are judged and its inputs watched (``pipeline.lifecycle.monitor``).

    Attributes:
        outcomes: ``(answers, events, policy) -> frame``: the day's logged answers joined with what
            the users did next (one row per answer or served candidate, with ``user_id``,
            ``model_version``, ``role``, ``request_id`` and ``value_column``).
        figures: ``(outcomes, policy) -> {name: value}``: the online metrics, ``users`` included.
        headline: ``(policy) -> names``: the figures the first printed line shows, in order.
        drift: ``(events, catalog, day_start, day_end, champion, policy) -> [FeatureDrift]``: the
            input features of the day against the champion's training period; ``champion`` holds
            its ``split``, ``features_path`` and run ``params``.
        served_scores: ``(answers) -> array``: the scores whose distribution is watched.
        skew: ``(snapshot, events, catalog, answers) -> [FeatureSkew]``: the snapshot's lookups for
            the day's users against the same features recomputed offline.
        requests: ``(events) -> [(event time, body)]``: a day of raw sessions as requests (replay),
            to ``ModelSpec.endpoint``; ``(event time, body, endpoint)`` for another of the
            service's endpoints (fraud's ``signups``, reported between the orders as they came).
        value_column: the per-row value the online gate compares (``hit``, ``probability``).
        pair_keys: the columns pairing a shadow's rows with the champion's.
        statistic: ``(outcomes) -> (values, rows) -> float``: the statistic of ``value_column`` at
            the given rows of those outcomes, the same as ``figures``' (per user for a ranking), for
            the online gate's and the floors' bootstrap.
        references: ``(answers, events, champion, snapshot, policy) -> answers``: the floors'
            answers to the very requests the champion answered (role ``floor``, the floor's name as
            the version), scored online beside it; or None.
        offline: ``(pyfunc, dataset, split, policy, run) -> outcomes``: the online protocol run
            offline on the test period, the candidate's pyfunc (role ``candidate``) and the floors
            (role ``floor``) answering the same requests; ``run`` holds the candidate's MLflow
            ``client`` and ``run`` (its params, its fitted floors under ``baseline/``, as
            ``references``' ``champion`` does); the evaluation logs their figures, which the
            monitor prints beside the online ones, and the gate bootstraps its floors on them
            (policy ``online_protocol``); or None.
        protocol: ``(policy) -> words``: what the online figures measure.
        offline_protocol: what ``offline`` measures.
        in_order: each answer depends on the requests answered before it (fraud's velocity
            counts remember the orders scored), so a replay sends them one at a time, in time
            order; False: concurrently, as a shop's traffic comes.
    """

    outcomes: Outcomes
    figures: Figures
    headline: Callable[[Any], tuple[str, ...]]
    drift: Drift
    served_scores: Callable[[pl.DataFrame], np.ndarray]
    skew: Skew
    requests: Requests
    value_column: str
    pair_keys: tuple[str, ...]
    statistic: Statistic
    references: References | None = None
    offline: OfflineProtocol | None = None
    protocol: Callable[[Any], str] | None = None
    offline_protocol: str = ""
    in_order: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """One model family: its parameters, features, trainer, evaluation, serving and parity check.

    Attributes:
        name: the registered model name, the policy section and the MLflow experiment.
        params: picks the family's training section out of ``Params`` (``params.yaml``).
        feature_params: the training parameters that shape the features (they key the feature set).
        write_features: ``(folder, dataset, params) -> (counts, split)``: writes the family's feature
            files for one dataset version (``pipeline.data.dataset.Dataset``) into ``folder``; the
            split is any object with ``to_dict`` whose cut points include ``TimeSplit``'s (the
            training run logs them as ``split.*`` params, which evaluation reads back).
        train: ``(paths, params, tags, features) -> TrainOutcome``: trains on a feature set folder
            and logs one MLflow run with the model as a pyfunc.
        test_set: ``(dataset, split, run params) -> TestSet``: the frozen test rows, cut from the
            run's dataset version at the run's own cut points.
        score: ``(pyfunc model, test set) -> ModelScores``: a model scored through its pyfunc.
        baselines: ``(mlflow client, run id, test set, tmp dir) -> {name: ModelScores}``.
        plot_metric: the metric drawn per slice in the evaluation's plot.
        service: the BentoML service (``module:Class``) a Bento of this family serves.
        endpoint: its scoring endpoint (a malformed request to it must get a 4xx).
        parity: ``(post, offline predictions) -> ParityOutcome``: replays the offline evaluation's
            requests against a served Bento.
        parity_rows: offline rows per replayed request (candidates per request, 1 for one user).
        smoke_checks: ``(post) -> [check, ...]``: checks of the served Bento beyond parity; raise
            ``ValueError`` on a failure.
        snapshot_tables: ``(events, catalog, cutoff) -> {name: (table, key columns)}``: what the
            family's service looks up per request, cut from the dataset version a Bento is built on
            (``pipeline.serving.snapshot``), or None: nothing.
        serving_states: ``(python model, feature snapshot, folder) -> meta``: what the service
            precomputes per known user at packaging (``pipeline.families.next_item.states``), or None.
        user_parity: ``(post, python model, dataset, n) -> ParityOutcome``: replays requests by user
            id against answers computed offline from the training features of ``n`` users, or None.
        monitoring: how its served answers are judged (``Monitoring``), or None: not monitored.
        gate_statistic: ``(metric, evaluation rows) -> (value column, statistic)``: which per-row
            values the gate compares for ``metric`` (``evaluation/rows.parquet``: ``<side>.<column>``
            per side, ``label`` where the test set has labels) and how they add up, as
            ``statistic(values, row indices)`` (AUC needs the labels of the same rows; WAPE sums
            absolute errors over the same rows' actual units); None (or a None answer): the column
            named after the metric, averaged.
        floor_model: ``(baseline name, dataset, split, run params, folder, client, run id) ->
            log_model arguments``: a baseline as the family's pyfunc, so that the strongest floor
            serves when no learned candidate clears the floors and there is no champion
            (``pipeline.lifecycle.floors``), or None.
    """

    name: str
    params: Callable[[Params], Any]
    feature_params: tuple[str, ...]
    write_features: WriteFeatures
    train: Train
    test_set: MakeTestSet
    score: Score
    baselines: Baselines
    plot_metric: str
    service: str
    endpoint: str
    parity: Parity
    parity_rows: int = 1
    smoke_checks: SmokeChecks | None = None
    snapshot_tables: SnapshotTables | None = None
    serving_states: ServingStates | None = None
    user_parity: UserParity | None = None
    monitoring: Monitoring | None = None
    floor_model: FloorModel | None = None
    gate_statistic: GateStatistic | None = None
    # What a row of the test set is, in the gate's words ("users", "items"): the bootstrap's clusters.
    clusters: str = "users"
