"""Every row read is accounted for exactly once: accepted, duplicate, outside the interval (clean or
not) or quarantined; the counts add up to the rows read, for generated input (Hypothesis)."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_csv
from pipeline.core.schema import PARTITION_FILE
from pipeline.data.ingest import Interval, ingest_events

pytestmark = pytest.mark.fast

HEADER = "event_time,user_id,session_id,item_id,event_type,price,quantity\n"
DAY0 = datetime(2026, 11, 2, tzinfo=timezone.utc)


def _ingest(state, body: str, days: int):
    write_csv(state.landing / "events" / "events-2026-11-02.csv", HEADER + body)
    write_csv(state.landing / "catalog" / "catalog-2026-11-02.csv", "item_id,category,brand,price\ni1,c,b,1.0\n")
    interval = Interval(DAY0, DAY0 + timedelta(days=days))
    return ingest_events(
        interval, "landing/events/events-{date}.csv", state, catalog_source="landing/catalog/catalog-{date}.csv"
    )


def _quarantined_rows(result) -> int:
    total = 0
    for path in result.quarantine_files:
        with open(path, newline="") as fh:
            total += sum(1 for _ in csv.DictReader(fh))
    return total


def _staged_rows(state, result) -> int:
    return sum(
        pl.read_parquet(state.staging / "events" / f"event_date={d}" / PARTITION_FILE).height
        for d in result.staged_days
    )


def _check_accounting(state, result) -> None:
    assert (
        result.rows_accepted + result.rows_duplicate + result.rows_outside_interval + result.rows_quarantined
    ) == result.rows_read, result
    assert _quarantined_rows(result) == result.rows_quarantined
    assert _staged_rows(state, result) == result.rows_accepted


def test_a_defective_row_of_another_day_is_counted_as_outside(state):
    """The issue's case: 3 rows read used to give 1 accepted and nothing else."""
    body = (
        "2026-11-02T10:00:00Z,u1,s1,i1,view,1,1\n"
        "2026-11-05T10:00:00Z,u1,s1,i1,teleport,1,1\n"  # another day, and a defect
        "2026-11-05T10:00:00Z,,s1,i1,view,1,1\n"
    )
    result = _ingest(state, body, days=1)
    assert (result.rows_read, result.rows_accepted, result.rows_outside_interval, result.rows_quarantined) == (
        3,
        1,
        2,
        0,
    )
    assert result.rows_outside_with_defects == 2
    assert "2 outside the interval (2 with defects)" in result.summary()


def test_a_row_without_time_is_quarantined_once_in_a_multi_day_interval(state):
    body = (
        "2026-11-02T10:00:00Z,u1,s1,i1,view,1,1\n2026-11-03T10:00:00Z,u1,s1,i1,view,1,1\nnot a time,u1,s1,i1,view,1,1\n"
    )
    result = _ingest(state, body, days=2)
    assert (result.rows_accepted, result.rows_quarantined) == (2, 1)
    assert len(result.quarantine_files) == 1 and "event_date=2026-11-02" in result.quarantine_files[0]
    _check_accounting(state, result)


GOOD_ROW = st.fixed_dictionaries(
    {
        "day": st.integers(-2, 3),  # days from the interval's start
        "second": st.integers(0, 86_399),
        "user": st.sampled_from(["u1", "u2", "u3"]),
        "item": st.sampled_from(["i1", "i2"]),
        "type": st.sampled_from(["view", "add_to_cart", "purchase"]),
        "defect": st.sampled_from([None, None, None, "time", "user", "type", "price", "quantity", "negative"]),
        "copies": st.integers(1, 3),  # exact duplicates
    }
)


def _line(row) -> str:
    t = DAY0 + timedelta(days=row["day"], seconds=row["second"])
    time, user, etype, price, qty = t.strftime("%Y-%m-%dT%H:%M:%SZ"), row["user"], row["type"], "2.5", "1"
    match row["defect"]:
        case "time":
            time = "yesterday"
        case "user":
            user = ""
        case "type":
            etype = "teleport"
        case "price":
            price = "abc"
        case "quantity":
            qty = "1.5"
        case "negative":
            price = "-1"
    return f"{time},{user},s-{user},{row['item']},{etype},{price},{qty}\n"


@given(rows=st.lists(GOOD_ROW, min_size=1, max_size=40), days=st.integers(1, 3))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_counts_add_up_to_the_rows_read_for_generated_input(state, rows, days):
    body = "".join(_line(r) for r in rows for _ in range(r["copies"]))
    result = _ingest(state, body, days)
    _check_accounting(state, result)
    in_interval = [r for r in rows if 0 <= r["day"] < days or r["defect"] == "time"]
    assert result.rows_quarantined == sum(r["copies"] for r in in_interval if r["defect"])
    assert result.rows_outside_interval == sum(r["copies"] for r in rows if r not in in_interval)
