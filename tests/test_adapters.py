"""Each adapter on real public data (../shared/data) or, where none ships here, on rows in its layout.

Expected counts are computed independently with the csv module, not with the code under test.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from conftest import need_sample, write_csv
from pipeline.core.schema import PARTITION_FILE
from pipeline.data.adapters import get_adapter
from pipeline.data.ingest import Interval, ingest_events

# The fast layer (`make test-fast`): no training, no servers, no Airflow runs.
pytestmark = pytest.mark.fast


def _events(state, day: str) -> pl.DataFrame:
    return pl.read_parquet(state.staging / "events" / f"event_date={day}" / PARTITION_FILE)


def _catalog(state, day: str) -> pl.DataFrame:
    return pl.read_parquet(state.staging / "catalog" / f"event_date={day}" / PARTITION_FILE)


UCI_DAYS = ("2010-12-01", "2011-06-01")  # a winter (GMT) and a summer (BST) day


@pytest.fixture(scope="module")
def uci_rows(shared_data):
    """The UCI rows of UCI_DAYS, read once with the csv module, times converted independently."""
    source = need_sample(shared_data / "uci_online_retail" / "online_retail_by_day_concat.csv")
    london = ZoneInfo("Europe/London")
    rows = {day: [] for day in UCI_DAYS}
    with open(source, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["InvoiceDate"][:10] not in rows:
                continue  # the shop's hours keep every invoice on its UTC date
            local = datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=london)
            rows[row["InvoiceDate"][:10]].append((local.astimezone(timezone.utc), row))
    return source, rows


@pytest.mark.parametrize("day", UCI_DAYS)
def test_uci_online_retail_real_file(state, uci_rows, day):
    source, rows = uci_rows
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    expected, returned, anonymous = set(), set(), 0
    for utc, row in rows[day]:
        assert start <= utc < start + timedelta(days=1)
        if not row["CustomerID"]:
            anonymous += 1
        elif row["InvoiceNo"].startswith("C"):  # a cancelled invoice: its units come back
            returned.add((row["InvoiceNo"], row["StockCode"], -int(row["Quantity"])))
        elif int(row["Quantity"]) > 0 and float(row["UnitPrice"]) >= 0:
            expected.add(
                (
                    utc,
                    row["CustomerID"].removesuffix(".0"),
                    row["InvoiceNo"],
                    row["StockCode"],
                    float(row["UnitPrice"]),
                    int(row["Quantity"]),
                )
            )
    assert expected, f"no rows on {day} in the sample"

    result = ingest_events(Interval.for_day(day), str(source), state, adapter_name="uci_online_retail")
    frame = _events(state, day)
    purchases, returns = (
        frame.filter(pl.col("event_type") == "purchase"),
        frame.filter(pl.col("event_type") == "return"),
    )
    got = {
        (r["event_time"], r["user_id"], r["session_id"], r["item_id"], r["price"], r["quantity"])
        for r in purchases.iter_rows(named=True)
    }
    assert got == expected
    assert set(returns.select("session_id", "item_id", "quantity").rows()) == returned
    assert result.rows_accepted == len(expected) + len(returned)
    assert result.quarantine_reasons.get("missing user_id", 0) == anonymous
    assert set(frame["event_type"].unique()) <= {"purchase", "return"}
    catalog = _catalog(state, day)
    assert set(catalog["item_id"]) == {e[3] for e in expected} | {r[1] for r in returned}
    assert catalog["category"].null_count() < catalog.height  # product type taken from the description


def test_uci_online_retail_summer_times_are_converted_from_london_time(state, uci_rows):
    source, _ = uci_rows
    ingest_events(Interval.for_day("2011-06-01"), str(source), state, adapter_name="uci_online_retail")
    frame = _events(state, "2011-06-01")
    row = frame.filter((pl.col("session_id") == "555156") & (pl.col("item_id") == "23299"))
    # 2011-06-01 07:37 in London (BST, UTC+1) is 06:37 UTC.
    assert row["event_time"].to_list() == [datetime(2011, 6, 1, 6, 37, tzinfo=timezone.utc)]


def test_uci_online_retail_ii_column_names_are_accepted(state):
    path = write_csv(
        state.landing / "uci2.csv",
        """
Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country
489434,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,12,2009-12-01 07:45:00,6.95,13085.0,United Kingdom
C489449,22087,PAPER BUNTING WHITE LACE,-12,2009-12-01 10:33:00,2.95,16321.0,Australia
""",
    )
    result = ingest_events(Interval.for_day("2009-12-01"), str(path), state, adapter_name="uci_online_retail")
    assert result.rows_accepted == 2
    assert result.quarantine_reasons == {}
    events = _events(state, "2009-12-01").sort("event_time")
    # The cancelled invoice is a return of its 12 units, not a purchase and not a lost row.
    assert events.select("user_id", "event_type", "quantity").rows() == [
        ("13085", "purchase", 12),
        ("16321", "return", 12),
    ]


def test_yoochoose_real_clicks(state, shared_data):
    source = need_sample(shared_data / "raw_samples" / "yoochoose_clicks_100k" / "yoochoose-clicks-100k_train_full.txt")
    day = "2014-04-02"
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    expected = set()
    with open(source, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            t = datetime.fromtimestamp(round(float(row["Time"]) * 1e6) / 1e6, tz=timezone.utc)
            if start <= t < start + timedelta(days=1):
                expected.add((t, row["SessionId"], row["ItemId"]))
    result = ingest_events(Interval.for_day(day), str(source), state, adapter_name="yoochoose")
    frame = _events(state, day)
    got = {(r["event_time"], r["session_id"], r["item_id"]) for r in frame.iter_rows(named=True)}
    assert got == expected and result.rows_quarantined == 0
    assert (frame["user_id"] == "anon-" + frame["session_id"]).all()
    assert set(frame["event_type"]) == {"view"}


def test_diginetica_real_views(state, shared_data):
    source = need_sample(shared_data / "raw_samples" / "diginetica_sample" / "sample_train-item-views.csv")
    day = "2016-05-31"
    expected = set()
    with open(source, newline="") as fh:
        for row in csv.DictReader(fh, delimiter=";"):
            t = datetime.fromisoformat(row["eventdate"]).replace(tzinfo=timezone.utc) + timedelta(
                milliseconds=int(row["timeframe"])
            )
            if t.date().isoformat() == day:
                user = row["user_id"] if row["user_id"] not in ("NA", "") else f"anon-{row['session_id']}"
                expected.add((t, user, row["session_id"], row["item_id"]))
    result = ingest_events(Interval.for_day(day), str(source), state, adapter_name="diginetica")
    got = {
        (r["event_time"], r["user_id"], r["session_id"], r["item_id"])
        for r in _events(state, day).iter_rows(named=True)
    }
    assert len(expected) > 100 and got == expected
    assert result.rows_quarantined == 0


REES46 = """
event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session
2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde-8bb3-4e00-8c23-a032dfed738c
2019-10-01 00:00:01 UTC,cart,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,554748717,9333dfbd-b87a-4708-9857-6336556b0fcc
2019-10-01 00:00:04 UTC,remove_from_cart,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,554748717,9333dfbd-b87a-4708-9857-6336556b0fcc
2019-10-01 00:00:09 UTC,purchase,17200506,2053013559792632471,furniture.living_room.sofa,,543.10,519107250,566511c2-e2e3-422b-b695-cf8e6e792ca8
2019-10-01 00:00:10 UTC,wishlist,17200506,2053013559792632471,furniture.living_room.sofa,,543.10,519107250,566511c2-e2e3-422b-b695-cf8e6e792ca8
"""


def test_rees46_multi_category_store_layout(state):
    path = write_csv(state.landing / "2019-Oct.csv", REES46)
    result = ingest_events(Interval.for_day("2019-10-01"), str(path), state, adapter_name="rees46")
    frame = _events(state, "2019-10-01").sort("event_time")
    assert frame["event_type"].to_list() == ["view", "add_to_cart", "remove_from_cart", "purchase"]
    assert frame["session_id"][0] == "72d76fde-8bb3-4e00-8c23-a032dfed738c"
    assert frame["event_time"][0] == datetime(2019, 10, 1, tzinfo=timezone.utc)
    assert result.quarantine_reasons == {"unknown event_type": 1}
    catalog = {r["item_id"]: r for r in _catalog(state, "2019-10-01").iter_rows(named=True)}
    assert catalog["44600062"]["category"] == "2103807459595387724"  # no code: the category id
    assert catalog["3900821"]["category"] == "appliances.environment.water_heater"
    assert catalog["17200506"]["brand"] is None and catalog["17200506"]["price"] == 543.10


RETAILROCKET = """
timestamp,visitorid,event,itemid,transactionid
1433221332117,257597,view,355908,
1433221400000,257597,addtocart,355908,
1433221500000,257597,transaction,355908,4000
1433230000000,257597,view,248676,
1433224214164,992329,view,248676,
"""


def test_retailrocket_layout_with_derived_sessions(state):
    path = write_csv(state.landing / "events.csv", RETAILROCKET)
    ingest_events(Interval.for_day("2015-06-02"), str(path), state, adapter_name="retailrocket")
    frame = _events(state, "2015-06-02").sort("user_id", "event_time")
    visitor = frame.filter(pl.col("user_id") == "257597")
    assert visitor["event_type"].to_list() == ["view", "add_to_cart", "purchase", "view"]
    # The last view comes more than 30 minutes later: a new session.
    sessions = visitor["session_id"].to_list()
    assert sessions[0] == sessions[1] == sessions[2] != sessions[3]
    assert frame["event_time"][0] == datetime(2015, 6, 2, 5, 2, 12, 117000, tzinfo=timezone.utc)


# The public e-commerce fraud layout (rows of its shape, written here; the data set itself is not
# in ../shared). 732758368.8 is 43.173.1.96 as a dotted quad.
FRAUD_ORDERS = """
user_id,signup_time,purchase_time,purchase_value,device_id,source,browser,sex,age,ip_address,class
22058,2015-02-24 22:55:49,2015-04-18 02:47:11,34,QVPSPJUOCKZAR,SEO,Chrome,M,39,732758368.8,0
333320,2015-04-18 01:56:11,2015-04-18 01:56:12,16,EOGFQPIZPYXFZ,Ads,Chrome,F,53,350311387.9,1
1359,2015-04-17 21:08:03,2015-04-18 09:20:31,15,YSSKYOSJHPPLJ,SEO,Opera,M,53,2621473820.0,1
150084,2015-04-18 10:00:00,2015-04-18 11:00:00,-5,ZZZ,SEO,Safari,M,30,1000.0,0
221365,2015-04-18 12:00:00,2015-04-18 12:30:00,44,YYY,Ads,Safari,F,25,2000.0,yes
"""


def test_fraud_orders_layout_gives_signups_purchases_and_chargebacks(state):
    path = write_csv(state.landing / "Fraud_Data.csv", FRAUD_ORDERS)
    result = ingest_events(Interval.for_day("2015-04-18"), str(path), state, adapter_name="fraud_orders")
    frame = _events(state, "2015-04-18").sort("event_time", "event_type")
    kinds = frame.group_by("event_type").len().sort("event_type")
    # Signups dated 2015-04-18 (three of the five accounts; the other two signed up earlier, counted
    # outside the interval) and three accepted purchases, two of them fraud.
    assert dict(kinds.iter_rows()) == {"chargeback": 2, "purchase": 3, "signup": 3}
    assert result.rows_outside_interval == 2
    first = frame.filter(pl.col("user_id") == "22058", pl.col("event_type") == "purchase").row(0, named=True)
    assert first["item_id"] == "order" and first["price"] == 34.0 and first["device_id"] == "QVPSPJUOCKZAR"
    assert first["ip"] == "43.173.1.96" and first["event_time"] == datetime(2015, 4, 18, 2, 47, 11, tzinfo=timezone.utc)
    charged = frame.filter(pl.col("event_type") == "chargeback")
    assert sorted(charged["user_id"]) == ["1359", "333320"] and charged["item_id"].null_count() == 2
    # The chargeback names its order: the purchase's session.
    orders = frame.filter(pl.col("event_type") == "purchase").select("user_id", "session_id")
    assert set(charged.select("user_id", "session_id").iter_rows()) <= set(orders.iter_rows())
    # A negative amount and a label that is not 0 or 1 are quarantined, naming the column.
    assert result.quarantine_reasons == {"negative price": 1, "class must be 0 (genuine) or 1 (fraud)": 1}
    assert _catalog(state, "2015-04-18")["item_id"].to_list() == ["order"]


def test_unknown_adapter_lists_the_known_ones():
    with pytest.raises(ValueError, match="known adapters: canonical, rees46"):
        get_adapter("shopify")
