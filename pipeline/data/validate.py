"""Validate a staged partition with the Great Expectations suites in ``expectations/``.

Suites are data: JSON files in GX's own format, loaded at each run into a file-backed GX context in
the state folder, which keeps every validation result and renders the data docs (HTML). Each
expectation carries a GX ``severity``: a failed ``critical`` expectation stops the pipeline
(:class:`ValidationFailed`, whose message is a one-line summary naming the failed expectations and
the data docs page); a failed ``warning`` is logged and the batch goes on.

Distribution rules need context that a single batch lacks, passed as suite parameters:
``min_daily_rows``/``max_daily_rows`` come from the median volume of the recent published days,
``interval_start``/``interval_end`` from the interval, the rest from ``params.yaml``.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from pipeline.core.errors import BadInput, Refused
from pipeline.core.params import ValidateParams
from pipeline.core.schema import PARTITION_FILE, partition_day, partition_dir_name, partition_files
from pipeline.core.settings import StatePaths
from pipeline.data.ingest import Interval

log = logging.getLogger(__name__)

SUITES_DIR = Path(__file__).resolve().parents[2] / "expectations"
DATASOURCE = "shopml"


class ValidationFailed(Refused):
    """A critical expectation failed; the batch must not be published."""

    def __init__(self, outcome: ValidationOutcome) -> None:
        super().__init__(outcome.summary)
        self.outcome = outcome


@dataclass(frozen=True)
class Finding:
    """One expectation that did not hold."""

    suite: str
    expectation: str
    column: str | None
    severity: str
    rule: str
    observed: Any

    def describe(self) -> str:
        where = f"({self.column})" if self.column else ""
        return f"{self.suite}.{self.expectation}{where} [{self.rule}] observed {self.observed}"


@dataclass(frozen=True)
class ValidationOutcome:
    """The verdict on one staged day."""

    day: str
    success: bool
    events_rows: int
    catalog_rows: int
    failures: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    data_docs: str = ""

    @property
    def summary(self) -> str:
        if self.success:
            head = f"validation of {self.day} passed ({self.events_rows} events, {self.catalog_rows} catalog items)"
            if self.warnings:
                head += f" with {len(self.warnings)} warning(s): " + "; ".join(w.describe() for w in self.warnings)
            return head
        return (
            f"validation of {self.day} FAILED {len(self.failures)} critical expectation(s): "
            + "; ".join(f.describe() for f in self.failures)
            + f" -- data docs: {self.data_docs}"
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["summary"] = self.summary
        return out


def validation_report_path(paths: StatePaths, day: str) -> Path:
    """Where the verdict on a staged day is written; publishing reads it back."""
    return paths.reports / "validate" / f"{day}.json"


def load_suite_json(name: str, suites_dir: Path = SUITES_DIR) -> dict:
    """Read one suite file; errors name the file."""
    path = suites_dir / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"expectation suite not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not valid JSON: {exc}") from exc


def recent_daily_volumes(paths: StatePaths, day: str, history_days: int) -> list[int]:
    """Row counts of the published event partitions in the ``history_days`` days before ``day``."""
    d = date.fromisoformat(day)
    counts = []
    for i in range(1, history_days + 1):
        part = paths.canonical / "events" / partition_dir_name((d - timedelta(days=i)).isoformat()) / PARTITION_FILE
        if part.exists():
            counts.append(pq.read_metadata(part).num_rows)
    return counts


def _known_items(paths: StatePaths, day: str) -> pl.Series:
    """Item ids in the published catalog up to ``day`` plus the staged catalog of ``day``."""
    frames = []
    published = paths.canonical / "catalog"
    if published.exists():
        for part in partition_files(published):
            if partition_day(part) <= day:
                frames.append(pl.scan_parquet(part).select("item_id"))
    staged = paths.staging / "catalog" / partition_dir_name(day) / PARTITION_FILE
    if staged.exists():
        frames.append(pl.scan_parquet(staged).select("item_id"))
    if not frames:
        return pl.Series("item_id", [], dtype=pl.String)
    return pl.concat(frames).unique().collect()["item_id"]


def suite_parameters(paths: StatePaths, interval: Interval, params: ValidateParams) -> dict[str, Any]:
    """Values for the ``$PARAMETER`` placeholders of the suites."""
    day = interval.days[0]
    history = recent_daily_volumes(paths, day, params.history_days)
    if history:
        median = statistics.median(history)
        low, high = int(median * params.volume_band[0]), int(median * params.volume_band[1]) + 1
    else:
        low, high = 0, None  # no history yet: the band starts with the second published day
    return {
        "interval_start": interval.start.isoformat(),
        "interval_end": interval.end.isoformat(),
        "min_daily_rows": low,
        "max_daily_rows": high,
        "min_purchase_rate": params.purchase_rate[0],
        "max_purchase_rate": params.purchase_rate[1],
        "min_known_item_share": 1.0 - params.max_unknown_item_share,
        "history_days_found": len(history),
    }


def _context(paths: StatePaths):
    import great_expectations as gx

    paths.gx_root.mkdir(parents=True, exist_ok=True)
    return gx.get_context(mode="file", project_root_dir=str(paths.gx_root))


def _run_suite(context, suite_json: dict, frame, parameters: dict[str, Any], run_name: str):
    """Validate ``frame`` against one suite through a checkpoint that stores results and data docs."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.core.run_identifier import RunIdentifier

    name = suite_json["name"]
    try:
        source = context.data_sources.get(DATASOURCE)
    except (KeyError, ValueError):
        source = context.data_sources.add_pandas(DATASOURCE)
    try:
        asset = source.get_asset(name)
    except LookupError:
        asset = source.add_dataframe_asset(name)
    try:
        batch = asset.get_batch_definition("partition")
    except (KeyError, ValueError):
        batch = asset.add_batch_definition_whole_dataframe("partition")
    suite = context.suites.add_or_update(
        gx.ExpectationSuite(name=name, expectations=suite_json["expectations"], meta=suite_json.get("meta", {}))
    )
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=f"{name}_partition", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=f"{name}_checkpoint",
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="update_data_docs")],
            result_format={"result_format": "SUMMARY"},
        )
    )
    result = checkpoint.run(
        batch_parameters={"dataframe": frame},
        expectation_parameters=parameters,
        run_id=RunIdentifier(run_name=run_name),
    )
    return next(iter(result.run_results.values()))


def _findings(suite: str, result) -> tuple[list[Finding], list[Finding]]:
    failures, warnings = [], []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        observed = r.result.get("observed_value")
        if observed is None and "unexpected_count" in r.result:
            observed = (
                f"{r.result['unexpected_count']} unexpected of {r.result.get('element_count')}, "
                f"e.g. {r.result.get('partial_unexpected_list', [])[:5]}"
            )
        if r.exception_info and r.exception_info.get("raised_exception"):
            observed = f"error: {r.exception_info.get('exception_message')}"
        severity = getattr(cfg.severity, "value", str(cfg.severity)).lower()
        finding = Finding(
            suite, cfg.type, cfg.kwargs.get("column"), severity, (cfg.meta or {}).get("rule", ""), observed
        )
        (warnings if severity == "warning" else failures).append(finding)
    return failures, warnings


def validate_batch(
    interval: Interval,
    paths: StatePaths,
    params: ValidateParams,
    suites_dir: Path = SUITES_DIR,
) -> ValidationOutcome:
    """Validate the staged events and catalog of ``interval`` (one day).

    Args:
        interval: the day that was ingested.
        paths: where state lives.
        params: thresholds of the distribution rules.
        suites_dir: where the suite JSON files are.

    Returns:
        The outcome, with warnings, when no critical expectation failed.

    Raises:
        ValidationFailed: a critical expectation failed; the message is the one-line summary.
        FileNotFoundError: the day was not staged (run ingest first).
    """
    if len(interval.days) != 1:
        raise ValueError(f"validate one day at a time; got {interval.days}")
    day = interval.days[0]
    events_path = paths.staging / "events" / partition_dir_name(day) / PARTITION_FILE
    catalog_path = paths.staging / "catalog" / partition_dir_name(day) / PARTITION_FILE
    for p in (events_path, catalog_path):
        if not p.exists():
            raise FileNotFoundError(f"no staged partition at {p}; run ingest for {day} first")

    known = _known_items(paths, day)
    events = (
        pl.scan_parquet(events_path)
        .with_columns(
            (pl.col("event_type") == "purchase").cast(pl.Float64).alias("_is_purchase"),
            # An item-less event (a signup, a chargeback of a whole order) names no item to know.
            (pl.col("item_id").is_in(known.implode()) | pl.col("item_id").is_null())
            .cast(pl.Float64)
            .alias("_item_in_catalog"),
        )
        .collect()
        .to_pandas(use_pyarrow_extension_array=False)
    )
    catalog = pl.read_parquet(catalog_path).to_pandas()
    parameters = suite_parameters(paths, interval, params)

    context = _context(paths)
    run_name = f"{day}"
    failures, warnings = [], []
    for name, frame in (("events", events), ("catalog", catalog)):
        result = _run_suite(context, load_suite_json(name, suites_dir), frame, parameters, run_name)
        f, w = _findings(name, result)
        failures += f
        warnings += w
    docs = paths.gx_root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    outcome = ValidationOutcome(
        day=day,
        success=not failures,
        events_rows=len(events),
        catalog_rows=len(catalog),
        failures=failures,
        warnings=warnings,
        parameters=parameters,
        data_docs=str(docs),
    )
    report = validation_report_path(paths, day)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(outcome.to_dict(), indent=2, default=str))
    for w in warnings:
        log.warning("validation warning on %s: %s", day, w.describe())
    if failures:
        log.error(outcome.summary)
        raise ValidationFailed(outcome)
    log.info(outcome.summary)
    return outcome
