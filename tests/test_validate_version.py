"""Validation with the GX suites and dataset versioning with DVC."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import polars as pl
import pytest

from pipeline.cli import main as cli
from pipeline.core.params import GenerateParams, ValidateParams
from pipeline.core.schema import PARTITION_FILE
from pipeline.data.generate import generate_shop_data
from pipeline.data.ingest import Interval, ingest_events
from pipeline.data.validate import ValidationFailed, validate_batch
from pipeline.data.version import NotValidated, current_dataset_version, version_dataset

# The fast layer (`make test-fast`): no training, no servers, no Airflow runs.
pytestmark = pytest.mark.fast

PARAMS = GenerateParams(
    seed=3, start_date="2026-11-02", days=3, events_per_day=3000, initial_users=800, initial_items=600
)
SOURCE = "landing/events/events-{date}.csv"
CATALOG = "landing/catalog/catalog-{date}.csv"


@pytest.fixture
def shop(state):
    generate_shop_data(PARAMS, state.landing)
    return state


def _ingest(state, day):
    return ingest_events(Interval.for_day(day), SOURCE, state, catalog_source=CATALOG)


def _published(state, day) -> Path:
    return state.canonical / "events" / f"event_date={day}" / PARTITION_FILE


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_generated_days_pass_and_are_versioned(shop):
    versions = []
    for day in ("2026-11-02", "2026-11-03"):
        _ingest(shop, day)
        outcome = validate_batch(Interval.for_day(day), shop, ValidateParams())
        assert outcome.success and not outcome.failures
        versions.append(version_dataset(Interval.for_day(day), shop))
    assert versions[0].version != versions[1].version
    assert versions[1].published_days == ["2026-11-03"]
    assert current_dataset_version(shop).version == versions[1].version
    # The second day was checked against the first day's volume.
    assert outcome.parameters["history_days_found"] == 1
    assert outcome.parameters["min_daily_rows"] > 0
    # The remote holds the content: every file DVC knows is in it.
    remote_files = [p for p in Path(shop.dvc_remote_url).rglob("*") if p.is_file()]
    assert len(remote_files) >= versions[1].files
    assert Path(outcome.data_docs).is_file()


def test_same_data_gives_the_same_version(shop):
    _ingest(shop, "2026-11-02")
    validate_batch(Interval.for_day("2026-11-02"), shop, ValidateParams())
    first = version_dataset(Interval.for_day("2026-11-02"), shop)
    _ingest(shop, "2026-11-02")
    validate_batch(Interval.for_day("2026-11-02"), shop, ValidateParams())
    assert version_dataset(Interval.for_day("2026-11-02"), shop).version == first.version


def test_critical_failure_names_the_expectations_and_publishes_nothing(shop, capsys):
    assert cli(["run", "--date", "2026-11-02"]) == 0
    accepted = _digest(_published(shop, "2026-11-02"))
    version = current_dataset_version(shop).version

    # The same day arrives again, now full of items the catalog does not know.
    landing = shop.landing / "events" / "events-2026-11-02.csv"
    frame = pl.read_csv(landing)
    frame.with_columns(pl.concat_str(pl.lit("ghost-"), pl.col("item_id")).alias("item_id")).write_csv(landing)
    capsys.readouterr()
    assert cli(["run", "--date", "2026-11-02"]) == 4
    err = capsys.readouterr().err
    assert "validation of 2026-11-02 FAILED" in err
    assert "expect_column_mean_to_be_between(_item_in_catalog) [share of unknown items]" in err
    assert "data docs:" in err and "index.html" in err
    # What was accepted before is still there, byte for byte, and still the current version.
    assert _digest(_published(shop, "2026-11-02")) == accepted
    assert current_dataset_version(shop).version == version


def test_daily_volume_outside_the_band_of_recent_days_fails(shop):
    for day in ("2026-11-02", "2026-11-03"):
        assert cli(["run", "--date", day]) == 0
    landing = shop.landing / "events" / "events-2026-11-04.csv"
    pl.read_csv(landing).head(50).write_csv(landing)  # an upstream export that broke off
    _ingest(shop, "2026-11-04")
    with pytest.raises(ValidationFailed) as err:
        validate_batch(Interval.for_day("2026-11-04"), shop, ValidateParams())
    failed = {(f.expectation, f.rule) for f in err.value.outcome.failures}
    assert failed == {("expect_table_row_count_to_be_between", "daily volume within the band of recent days")}


def test_warnings_are_reported_but_do_not_stop_the_batch(shop):
    _ingest(shop, "2026-11-02")
    strict = dataclasses.replace(ValidateParams(), purchase_rate=(0.5, 0.9))
    outcome = validate_batch(Interval.for_day("2026-11-02"), shop, strict)
    assert outcome.success
    assert [w.rule for w in outcome.warnings] == ["purchase rate range"]
    assert "with 1 warning(s)" in outcome.summary


def test_validating_an_unstaged_day_says_what_to_do(state):
    with pytest.raises(FileNotFoundError, match="run ingest for 2026-11-09 first"):
        validate_batch(Interval.for_day("2026-11-09"), state, ValidateParams())


def test_only_validated_data_is_published(shop):
    _ingest(shop, "2026-11-02")
    with pytest.raises(NotValidated, match="never validated"):
        version_dataset(Interval.for_day("2026-11-02"), shop)
    validate_batch(Interval.for_day("2026-11-02"), shop, ValidateParams())
    _ingest(shop, "2026-11-02")  # staged again: the validation no longer covers it
    with pytest.raises(NotValidated, match="staged again"):
        version_dataset(Interval.for_day("2026-11-02"), shop)
    assert current_dataset_version(shop) is None
