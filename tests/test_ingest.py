"""Ingestion: typing, quarantine with reasons, de-duplication, idempotent reruns, clear errors."""

from __future__ import annotations

import csv
import hashlib
from datetime import datetime, timezone

import polars as pl
import pytest

from conftest import write_csv
from pipeline.core.schema import EVENTS_SCHEMA, PARTITION_FILE
from pipeline.data.ingest import IngestError, Interval, ingest_events

# The fast layer (`make test-fast`): no training, no servers, no Airflow runs.
pytestmark = pytest.mark.fast

DAY = "2026-11-02"
HEADER = "event_time,user_id,session_id,item_id,event_type,price,quantity\n"
GOOD = """
2026-11-02T10:00:00Z,u1,s1,i1,view,10.5,1
2026-11-02T10:01:00.250Z,u1,s1,i1,add_to_cart,10.5,1
2026-11-02T10:05:00+02:00,u1,s1,i1,purchase,10.5,2
2026-11-02 11:00:00,u2,s2,i2,view,,1
"""
MALFORMED = """
yesterday,u1,s1,i1,view,10.5,1
2026-11-02T10:02:00Z,u1,s1,i1,teleport,10.5,1
2026-11-02T10:03:00Z,u1,s1,i1,view,-3,1
2026-11-02T10:04:00Z,,s1,i1,view,3,1
2026-11-02T10:05:00Z,u1,s1,i1,purchase,abc,1
2026-11-02T10:06:00Z,u1,s1,i2,purchase,10.5,0
"""


def _landing(state, body: str, day: str = DAY):
    path = write_csv(state.landing / "events" / f"events-{day}.csv", HEADER + body.lstrip("\n"))
    write_csv(
        state.landing / "catalog" / f"catalog-{day}.csv",
        "item_id,category,brand,price\ni1,home.decor,acme,10.5\ni2,home.decor,acme,3.0\n",
    )
    return path


def _ingest(state, day: str = DAY, **kw):
    kw.setdefault("catalog_source", "landing/catalog/catalog-{date}.csv")
    return ingest_events(Interval.for_day(day), "landing/events/events-{date}.csv", state, **kw)


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _staged(state, day: str = DAY):
    return state.staging / "events" / f"event_date={day}" / PARTITION_FILE


def test_good_rows_are_typed_in_utc(state):
    _landing(state, GOOD)
    result = _ingest(state)
    assert (result.rows_read, result.rows_accepted, result.rows_quarantined) == (4, 4, 0)
    frame = pl.read_parquet(_staged(state))
    assert dict(frame.schema) == EVENTS_SCHEMA
    times = frame["event_time"].to_list()
    assert datetime(2026, 11, 2, 8, 5, tzinfo=timezone.utc) in times  # +02:00 converted to UTC
    assert datetime(2026, 11, 2, 10, 1, 0, 250000, tzinfo=timezone.utc) in times
    assert frame.filter(pl.col("user_id") == "u2")["price"].to_list() == [None]
    assert frame.filter(pl.col("event_type") == "purchase")["quantity"].to_list() == [2]


def test_malformed_rows_go_to_quarantine_with_file_row_column_value_and_reason(state):
    source = _landing(state, GOOD + MALFORMED.lstrip("\n"))
    result = _ingest(state)
    assert result.rows_accepted == 4
    assert result.quarantine_reasons == {
        "unparseable event_time": 1,
        "unknown event_type": 1,
        "negative price": 1,
        "missing user_id": 1,
        "unparseable price": 1,
        "non-positive quantity": 1,
    }
    rows = _read_csv(result.quarantine_files[0])
    found = {(r["_source_row"], r["_column"], r["_value"], r["_reason"]) for r in rows}
    assert found == {
        ("5", "event_time", "yesterday", "unparseable event_time"),
        ("6", "event_type", "teleport", "unknown event_type"),
        ("7", "price", "-3", "negative price"),
        ("8", "user_id", "", "missing user_id"),
        ("9", "price", "abc", "unparseable price"),
        ("10", "quantity", "0", "non-positive quantity"),
    }
    assert {r["_source_file"] for r in rows} == {str(source)}


def test_exact_duplicates_are_dropped_and_other_days_are_left_alone(state):
    _landing(state, GOOD + GOOD + "2026-11-03T00:00:00Z,u3,s3,i1,view,1,1\n")
    result = _ingest(state)
    assert (result.rows_read, result.rows_accepted, result.rows_duplicate) == (9, 4, 4)
    assert result.rows_outside_interval == 1
    assert result.rows_quarantined == 0


def test_blank_lines_are_skipped_but_still_counted_in_row_numbers(state):
    _landing(state, GOOD + "\n" + MALFORMED.lstrip("\n"))
    result = _ingest(state)
    assert (result.rows_accepted, result.rows_quarantined) == (4, 6)
    rows = _read_csv(result.quarantine_files[0])
    assert min(int(r["_source_row"]) for r in rows) == 6


def test_rerunning_an_interval_replaces_it_with_identical_rows(state):
    _landing(state, GOOD + MALFORMED.lstrip("\n"))
    _ingest(state)
    first = hashlib.sha256(_staged(state).read_bytes()).hexdigest()
    result = _ingest(state)
    assert hashlib.sha256(_staged(state).read_bytes()).hexdigest() == first
    assert pl.read_parquet(_staged(state)).height == result.rows_accepted == 4
    quarantine = _read_csv(result.quarantine_files[0])
    assert len(quarantine) == 6  # replaced, not appended


def test_space_separated_time_with_offset_as_databases_export_it(state):
    _landing(state, "2026-11-02 12:00:00.5+01:00,u2,s2,i2,view,3,1\n")
    assert _ingest(state).rows_accepted == 1
    assert pl.read_parquet(_staged(state))["event_time"].to_list() == [
        datetime(2026, 11, 2, 11, 0, 0, 500000, tzinfo=timezone.utc)
    ]


def test_parquet_landing_files_with_typed_columns(state):
    frame = pl.DataFrame(
        {
            "event_time": [datetime(2026, 11, 2, 9, tzinfo=timezone.utc), datetime(2026, 11, 2, 23, 59)],
            "user_id": ["u1", "u2"],
            "session_id": ["s1", "s2"],
            "item_id": ["i1", "i2"],
            "event_type": ["view", "purchase"],
            "price": [1.5, -2.0],
            "quantity": [1, 1],
        }
    )
    path = state.landing / "events" / f"events-{DAY}.parquet"
    path.parent.mkdir(parents=True)
    frame.write_parquet(path)
    result = ingest_events(Interval.for_day(DAY), "landing/events/events-{date}.parquet", state)
    assert (result.rows_accepted, result.quarantine_reasons) == (1, {"negative price": 1})
    assert pl.read_parquet(_staged(state))["event_time"].to_list() == [datetime(2026, 11, 2, 9, tzinfo=timezone.utc)]


def test_missing_columns_name_the_file_and_the_columns(state):
    path = write_csv(
        state.landing / "events" / f"events-{DAY}.csv",
        "event_time,user_id,item_id,event_type\n2026-11-02T10:00:00Z,u1,i1,view\n",
    )
    with pytest.raises(IngestError) as err:
        _ingest(state)
    message = str(err.value)
    assert str(path) in message and "session_id" in message and "price" in message


def test_no_matching_file_is_a_clear_error(state):
    with pytest.raises(IngestError, match=r"no event files match .*events-2026-11-02\.csv"):
        _ingest(state)


def test_intervals_must_be_whole_utc_days():
    with pytest.raises(ValueError, match="not at midnight UTC"):
        Interval(datetime(2026, 11, 2, 6, tzinfo=timezone.utc), datetime(2026, 11, 3, tzinfo=timezone.utc))
    assert Interval.for_day("2026-11-02").days == ["2026-11-02"]


def test_catalog_rows_are_checked_too(state):
    _landing(state, GOOD)
    write_csv(
        state.landing / "catalog" / f"catalog-{DAY}.csv",
        "item_id,category,brand,price\ni1,home,acme,10.5\n,home,acme,2\ni2,home,acme,-1\ni1,home,acme,11\n",
    )
    result = _ingest(state)
    assert (result.catalog_items, result.catalog_rows_quarantined) == (1, 2)
    staged = pl.read_parquet(state.staging / "catalog" / f"event_date={DAY}" / PARTITION_FILE)
    assert staged.rows() == [("i1", "home", "acme", 11.0)]  # the later row of an item wins


def test_any_fsspec_uri_is_a_source(state):
    """The remote path (fsspec open, then parse) is the one S3 or GCS sources take."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe(f"/shop-exports/events-{DAY}.csv", (HEADER + GOOD.lstrip("\n")).encode())
    fs.pipe(f"/shop-exports/catalog-{DAY}.csv", b"item_id,category,brand,price\ni1,home,acme,10.5\n")
    try:
        result = ingest_events(
            Interval.for_day(DAY),
            "memory://shop-exports/events-{date}.csv",
            state,
            catalog_source="memory://shop-exports/catalog-{date}.csv",
        )
    finally:
        fs.rm("/shop-exports", recursive=True)
    assert result.sources == [f"memory:///shop-exports/events-{DAY}.csv"]
    assert (result.rows_accepted, result.catalog_items) == (4, 1)


def test_broken_csv_quoting_is_a_clear_error_naming_the_file(state):
    """Found by fuzzing the parser: an unterminated quote was a polars ComputeError from deep inside."""
    path = _landing(state, GOOD + '"\n2026-11-02T10:00:00Z,u1,s1,i1,view,1,1\n')
    with pytest.raises(IngestError, match=rf"{path}: cannot be read as CSV: .*not properly escaped"):
        _ingest(state)


def test_only_allowed_sources_are_read(state, tmp_path, monkeypatch):
    """A DAG trigger names its source: without an allow-list it could make a worker read any file
    it reaches, or any URL, into the dataset. By default only the state folder's landing is read."""
    monkeypatch.delenv("SHOPML_INGEST_SOURCES")
    _landing(state, GOOD)
    assert _ingest(state).rows_accepted == 4
    outside = write_csv(tmp_path / "elsewhere" / f"events-{DAY}.csv", HEADER + GOOD.lstrip("\n"))
    (state.landing / "events" / "link.csv").symlink_to(outside)
    for source in (
        str(outside),
        "/etc/passwd",
        "landing/../../elsewhere/events-{date}.csv",
        "landing/events/link.csv",  # a link in the landing folder that leads out of it
        "memory://shop-exports/events-{date}.csv",
        "http://example.invalid/events.csv",
    ):
        with pytest.raises(IngestError, match="outside the allowed ingestion sources"):
            ingest_events(Interval.for_day(DAY), source, state, catalog_source="landing/catalog/catalog-{date}.csv")
    monkeypatch.setenv("SHOPML_INGEST_SOURCES", f"{state.landing},{tmp_path / 'elsewhere'}")
    assert (
        ingest_events(
            Interval.for_day(DAY), str(outside), state, catalog_source="landing/catalog/catalog-{date}.csv"
        ).rows_accepted
        == 4
    )
    monkeypatch.setenv("SHOPML_INGEST_SOURCES", "memory://shop-exports/")
    with pytest.raises(IngestError, match=r"'\.\.' in a URI"):
        ingest_events(Interval.for_day(DAY), "memory://shop-exports/../secrets/x.csv", state)


def test_a_file_over_the_size_limit_is_refused_stored_or_decompressed(state, monkeypatch):
    """A compressed source streams through a spool file, never whole in memory, and a small archive
    that inflates past the limit is stopped, not unpacked."""
    import gzip

    body = (HEADER + GOOD.lstrip("\n") * 200).encode()  # about 8 kB of CSV
    packed = state.landing / "events" / f"events-{DAY}.csv.gz"
    packed.parent.mkdir(parents=True, exist_ok=True)
    packed.write_bytes(gzip.compress(body))
    _landing(state, "")  # the catalog
    (state.landing / "events" / f"events-{DAY}.csv").unlink()
    source = "landing/events/events-{date}.csv.gz"
    catalog = "landing/catalog/catalog-{date}.csv"
    monkeypatch.setenv("SHOPML_INGEST_MAX_BYTES", str(len(body) + 1))
    assert ingest_events(Interval.for_day(DAY), source, state, catalog_source=catalog).rows_read > 0
    assert not list(state.staging.glob(".ingest-spool-*"))  # the spool is gone after the run
    monkeypatch.setenv("SHOPML_INGEST_MAX_BYTES", str(packed.stat().st_size + 10))
    with pytest.raises(IngestError, match="once decompressed"):
        ingest_events(Interval.for_day(DAY), source, state, catalog_source=catalog)
    monkeypatch.setenv("SHOPML_INGEST_MAX_BYTES", "100")
    with pytest.raises(IngestError, match="over the 100-byte limit per file"):
        ingest_events(Interval.for_day(DAY), source, state, catalog_source=catalog)
