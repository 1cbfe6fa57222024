"""Fuzzing: Schemathesis against the OpenAPI document of each served Bento (both services), and
Hypothesis against the landing-file parsers; and packaging SIGKILLed at its kill points.
Expected: a 2xx or a 4xx naming the field, never a 5xx, never a crash, nothing already accepted
changed, no server left behind by a kill. ``make test-reliability`` prints the figures (cases per
endpoint, responses by status class, parser cases, kill points)."""

from __future__ import annotations

import collections
import dataclasses
import hashlib

import httpx
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from conftest import published_shop, write_csv

pytestmark = pytest.mark.reliability

CASES_PER_ENDPOINT = 100  # per generation mode: valid requests, then invalid ones
FIGURES: dict[str, dict] = {}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A small published shop; a recommender, a propensity model and a fraud scorer, registered (one
    epoch each: this is about the HTTP layer, not the models)."""
    from pipeline.core.params import GenerateParams, TrainFraudParams, TrainPropensityParams, TrainRecommenderParams
    from pipeline.families.fraud.train import train as train_fraud
    from pipeline.families.next_item.train import train as train_recommender
    from pipeline.families.purchase_propensity.train import train as train_propensity
    from pipeline.lifecycle import registry
    from pipeline.lifecycle.evaluate import evaluate_candidate
    from pipeline.lifecycle.gate import gate_candidate, load_policy

    with published_shop(
        tmp_path_factory.mktemp("fuzz"),
        GenerateParams(
            seed=3,
            start_date="2026-10-01",
            days=6,
            events_per_day=1500,
            initial_users=300,
            initial_items=200,
            fraud_rate=0.1,
            chargeback_days=(0.1, 0.4),  # labels within the shop's days, for the fraud scorer
        ),
    ) as paths:
        runs = {
            "next_item": train_recommender(
                paths,
                TrainRecommenderParams(valid_days=1, test_days=1, max_len=20, dim=16, layers=1, epochs=1, blend=False),
            ).run_id,
            "purchase_propensity": train_propensity(
                paths, TrainPropensityParams(valid_days=1, test_days=1, horizon_days=1, lookback_days=1, epochs=1)
            ).run_id,
            "fraud": train_fraud(
                paths, TrainFraudParams(maturity_days=0, valid_days=1, test_days=2, min_train_days=2, epochs=1)
            ).run_id,
        }
        versions = {}
        for model, run_id in runs.items():
            evaluate_candidate(paths, model, run_id)
            gate_candidate(
                paths, model, run_id, dataclasses.replace(load_policy(model), floors=(), bootstrap_samples=100)
            )
            versions[model] = str(registry.register_candidate(paths, model, run_id).version)
        yield paths, versions


def _fuzz_operation(url: str, operation, mode, counts: collections.Counter, failures: list[str]):
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import status_code_conformance

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=CASES_PER_ENDPOINT, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(base_url=url, timeout=30)
        counts[f"{response.status_code // 100}xx"] += 1
        counts["cases"] += 1
        try:
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
        except AssertionError as exc:  # collected, so every endpoint is fuzzed before failing
            failures.append(f"{operation.path}: {str(exc)[:500]}")

    return run


def _fuzz(url: str, name: str) -> dict[str, collections.Counter]:
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{url}/docs.json")
    by_endpoint: dict[str, collections.Counter] = {}
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() != "POST":
            continue
        counts = by_endpoint.setdefault(operation.path, collections.Counter())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):  # valid requests, then invalid ones
            _fuzz_operation(url, operation, mode, counts, failures)()
    FIGURES[name] = by_endpoint
    assert not failures, "\n".join(failures[:5])
    return by_endpoint


def test_schemathesis_on_the_next_item_bento(shop):
    from pipeline.serving.package import build_bento, served

    paths, versions = shop
    bento = build_bento(paths, "next_item", versions["next_item"])
    with served(paths, bento.bento_tag) as url:
        # The packaging test's check for servers left behind sees this session's own.
        assert _bentoml_servers("shopml-next-item"), bento.bento_tag
        user = pl.read_parquet(sorted((paths.canonical / "events").glob("event_date=*/part-0.parquet"))[0])["user_id"][
            0
        ]
        before = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 5}, timeout=30).json()
        counts = _fuzz(url, "next_item")
        assert set(counts) == {"/recommend", "/metadata"}, counts
        assert counts["/recommend"]["4xx"] > 0 and counts["/recommend"]["5xx"] == 0
        # The fuzzing findings, one by one.
        multipart = httpx.post(
            f"{url}/recommend",
            content=b'{"user_id":"u1009"}',
            timeout=30,
            headers={"content-type": "multipart/form-data"},
        )
        assert multipart.status_code == 415, multipart.text
        cold = httpx.post(f"{url}/recommend", json={}, timeout=30).json()
        assert cold["source"] == "popularity" and cold["reason"] == "no user_id and no history were sent"
        extra = httpx.post(f"{url}/metadata", json={"user_id": "u1"}, timeout=30)
        assert extra.status_code == 400 and extra.json()["detail"][0]["loc"] == ["body", "user_id"]
        # Nothing the fuzzing sent changed what a known user gets.
        after = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 5}, timeout=30).json()
        assert after == before


def _bentoml_servers(tag: str) -> list[int]:
    """Pids of the processes of a `bentoml serve <tag>[:version]` of this session's Bento store: its
    workers (`_bentoml_impl.worker.service <tag>:<version>`) and its arbiter (the `bentoml serve`
    process, which retitles itself `circusd` and names no tag: any arbiter of the store counts).
    Another suite on the machine (`make test-system` runs the integration suite beside this one)
    packages and smoke-tests Bentos of the same name from its own store; this session's is the
    `BENTOML_HOME` its servers inherit."""
    import os
    from pathlib import Path

    store = f"BENTOML_HOME={os.environ['BENTOML_HOME']}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
                named = any(arg == tag.encode() or arg.startswith(f"{tag}:".encode()) for arg in cmd)
                if (named or cmd[0].startswith(b"circusd")) and store in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


PACKAGE_POINTS: list[str] = []


def test_packaging_killed_anywhere_is_finished_by_the_rerun(shop):
    """SIGKILL after the build, while the smoke test's server answers and after the smoke test: no
    server left behind (the killed task's `bentoml serve` dies with it), and the rerun records the
    Bento and the passed smoke test on the version, so it can be promoted."""
    import time

    from killing import run_worker

    from pipeline.core.faults import KILL_POINTS
    from pipeline.core.tracking import mlflow_client

    paths, versions = shop
    version = versions["next_item"]
    client = mlflow_client(paths)
    for point in [p for p in KILL_POINTS if p.startswith("package.")]:
        killed = run_worker(paths.home, "package", "next_item", version, kill_at=point)
        assert killed.returncode == -9, (point, killed.returncode, killed.stderr[-2000:])
        tags = client.get_model_version("next_item", version).tags
        assert tags.get("smoke_test") != "passed"  # nothing claims what was not recorded
        deadline = time.monotonic() + 60
        while (left := _bentoml_servers("shopml-next-item")) and time.monotonic() < deadline:
            time.sleep(1)
        assert not left, f"bentoml serve left running after a kill at {point}: {left}"
        done = run_worker(paths.home, "package", "next_item", version)
        assert done.returncode == 0, done.stderr[-3000:]
        tags = client.get_model_version("next_item", version).tags
        assert tags["smoke_test"] == "passed" and tags["bento_tag"] == done.stdout.strip().splitlines()[-1]
        client.delete_model_version_tag("next_item", version, "smoke_test")
        PACKAGE_POINTS.append(point)


def test_schemathesis_on_the_propensity_bento(shop):
    from pipeline.serving.package import build_bento, served

    paths, versions = shop
    bento = build_bento(paths, "purchase_propensity", versions["purchase_propensity"])
    with served(paths, bento.bento_tag) as url:
        counts = _fuzz(url, "purchase_propensity")
        assert set(counts) == {"/purchase_probability", "/metadata"}, counts
        assert counts["/purchase_probability"]["4xx"] > 0 and counts["/purchase_probability"]["5xx"] == 0


def test_schemathesis_on_the_fraud_bento(shop):
    """/score, /chargebacks, /signups and /sessions from the OpenAPI document: times without a zone,
    negative or infinite amounts, unknown fields, currencies and orders are 4xx, never 5xx; an order
    the schema allows is scored."""
    import httpx

    from pipeline.serving.package import build_bento, served

    paths, versions = shop
    bento = build_bento(paths, "fraud", versions["fraud"])
    with served(paths, bento.bento_tag) as url:
        counts = _fuzz(url, "fraud")
        assert set(counts) == {"/score", "/chargebacks", "/signups", "/sessions", "/metadata"}, counts
        for endpoint in ("/score", "/chargebacks", "/signups", "/sessions"):
            assert counts[endpoint]["4xx"] > 0 and counts[endpoint]["5xx"] == 0, (endpoint, counts)
        order = {"user_id": "u1", "order_time": "2026-10-07T10:00:00Z", "amount": 10.0}
        answer = httpx.post(f"{url}/score", json={"orders": [order]}, timeout=30)
        assert answer.status_code == 200 and answer.json()["scores"][0]["band"] in ("approve", "review", "block")


# -- the landing-file parsers ------------------------------------------------------------------

HEADER = "event_time,user_id,session_id,item_id,event_type,price,quantity\n"
GOOD = "2026-11-02T10:00:00Z,u1,s1,i1,view,1.5,1\n"
FIELD = st.one_of(
    st.text(max_size=12),  # any unicode, NUL and newlines included
    st.sampled_from(['"', '""', '"unterminated', 'a"b', ",", "\r", "\x00", "é", "\ufeff"]),
    st.text(min_size=5000, max_size=20000, alphabet="xyz"),  # huge fields
    st.sampled_from(
        [
            "2026-11-02T10:00:00+05:30",
            "2026-11-02 10:00:00",
            "2026-11-02T10:00:00-11:00",
            "2026-11-02T10:00:00",
            "1793613600",
            "2026-13-40T99:99:99Z",
        ]
    ),  # mixed time zones
)
LINE = st.lists(FIELD, min_size=1, max_size=9).map(lambda fields: ",".join(fields) + "\n")
ENCODING = st.sampled_from(["utf-8", "latin-1", "utf-16", "cp1252"])
PARSER_CASES = collections.Counter()


@given(lines=st.lists(LINE, max_size=20), encoding=ENCODING)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_landing_parser_never_crashes_and_never_touches_accepted_days(state, lines, encoding):
    from pipeline.data.ingest import IngestError, Interval, ingest_events

    # An accepted, published-looking neighbour day that no rerun of 2026-11-02 may change.
    other = state.staging / "events" / "event_date=2026-11-01" / "part-0.parquet"
    if not other.exists():
        other.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame({"x": [1]}).write_parquet(other)
    before = hashlib.sha256(other.read_bytes()).hexdigest()
    text = HEADER + GOOD + "".join(lines)
    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError:
        raw = text.encode("utf-8", errors="replace")
    path = state.landing / "events" / "events-2026-11-02.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    write_csv(state.landing / "catalog" / "catalog-2026-11-02.csv", "item_id,category,brand,price\ni1,c,b,1.0\n")
    PARSER_CASES["cases"] += 1
    try:
        result = ingest_events(
            Interval.for_day("2026-11-02"),
            "landing/events/events-{date}.csv",
            state,
            catalog_source="landing/catalog/catalog-{date}.csv",
        )
    except IngestError as exc:
        PARSER_CASES["refused with IngestError"] += 1
        assert "events-2026-11-02.csv" in str(exc)  # the error names the file
    else:
        PARSER_CASES["ingested"] += 1
        assert (
            result.rows_accepted + result.rows_duplicate + result.rows_outside_interval + result.rows_quarantined
        ) == result.rows_read
    assert hashlib.sha256(other.read_bytes()).hexdigest() == before


def test_under_load_a_promotion_and_restart_lose_nothing_outside_the_restart_window(shop):
    """64 clients ask for recommendations while a new version is promoted and the service is
    restarted on it (stop the old server, start the new Bento on the same port). Every answer is
    a full answer from the old or the new version, never a 5xx or a half-loaded model; the only
    failures are refused connections between the old server's stop and the new one's readiness
    (the restart window docs/development/reliability.md documents, which clients retry), and after it every answer
    comes from the new version."""
    import threading
    import time

    from pipeline.core.params import TrainRecommenderParams
    from pipeline.core.tracking import mlflow_client
    from pipeline.families.next_item.train import train as train_recommender
    from pipeline.lifecycle import registry
    from pipeline.serving.package import build_bento, free_port, served

    paths, versions = shop
    old = versions["next_item"]
    run_id = train_recommender(
        paths,
        TrainRecommenderParams(valid_days=1, test_days=1, max_len=20, dim=16, layers=1, epochs=1, blend=False, seed=7),
    ).run_id
    client = mlflow_client(paths)
    client.set_tag(run_id, "gate.decision", "passed")
    new = str(registry.register_candidate(paths, "next_item", run_id).version)
    bentos = {v: build_bento(paths, "next_item", v).bento_tag for v in (old, new)}
    user = pl.read_parquet(sorted((paths.canonical / "events").glob("event_date=*/part-0.parquet"))[0])["user_id"][0]
    port = free_port()
    log: list[tuple[float, str, str]] = []  # (time, outcome, model version)
    stop = threading.Event()

    def client_loop():
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": user, "k": 5})
                except httpx.TransportError as exc:
                    log.append((time.monotonic(), type(exc).__name__, ""))
                    time.sleep(0.05)
                    continue
                body = r.json() if r.status_code == 200 else {}
                full = r.status_code == 200 and len(body.get("items", [])) == 5
                log.append(
                    (
                        time.monotonic(),
                        str(r.status_code) if full or r.status_code != 200 else "partial",
                        body.get("model_version", ""),
                    )
                )

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(64)]
    with served(paths, bentos[old], port=port):
        for t in threads:
            t.start()
        time.sleep(20)
        registry.promote(paths, "next_item", new, force=True, by="load-test", reason="restart under load")
        stopping = time.monotonic()  # leaving the block stops the old server
    with served(paths, bentos[new], port=port):
        ready = time.monotonic()
        time.sleep(20)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    # Each entry is timed when its answer (or failure) came.
    outcomes = collections.Counter(o for _, o, _ in log)
    bad = sorted(round(t - stopping, 2) for t, o, _ in log if (o.startswith("5") and o != "503") or o == "partial")
    assert outcomes["200"] > 0 and not bad, (outcomes, f"window {ready - stopping:.2f} s; bad at", bad[:10], bad[-5:])
    assert {v for _, o, v in log if o == "200"} == {old, new}
    # Refused or cut connections, and 503s (requests past the batching deadline), only in the window.
    failed = [t for t, o, _ in log if o != "200"]
    assert all(stopping <= t <= ready for t in failed), (stopping, ready, sorted(failed)[:3], sorted(failed)[-3:])
    assert all(v == new for t, o, v in log if o == "200" and t > ready)
    assert all(v == old for t, o, v in log if o == "200" and t < stopping)
    # Printed here, not by test_summary: `make test-system` runs this test in the other lane.
    print(
        f"\nrestart under 64 clients: {outcomes['200']} answers, all full, from the old or the new version, "
        f"no 500; {len(failed)} failed requests ({outcomes['503']} of them 503, the rest refused or cut "
        f"connections), all inside the {ready - stopping:.1f} s restart window (old server stopping -> new "
        f"one ready)"
    )


def test_summary():
    """Printed by `make test-reliability` (with -s)."""
    for name, endpoints in FIGURES.items():
        for path, counts in sorted(endpoints.items()):
            classes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "cases")
            print(f"schemathesis {name} POST {path}: {counts['cases']} cases ({classes})")
    print(f"kill points of packaging tried, invariants held after the rerun: {', '.join(PACKAGE_POINTS)}")
    print(
        f"landing-file parser: {PARSER_CASES['cases']} generated files; {PARSER_CASES['ingested']} ingested "
        f"with counts adding up, {PARSER_CASES['refused with IngestError']} refused naming the file, 0 crashes"
    )
    assert PARSER_CASES["cases"] > 0
