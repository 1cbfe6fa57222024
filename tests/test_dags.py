"""DAG integrity and end-to-end runs with ``airflow dags test`` on SQLite.

Airflow reads its configuration at import, so everything Airflow runs in a subprocess with the
project's Airflow environment (``pipeline.core.settings.airflow_env``) and a state folder of its own.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from conftest import REPO, demo_shop
from pipeline.core.settings import airflow_env, get_state_paths

DAGS = REPO / "dags"
HEAVY = ("torch", "pandas", "polars", "mlflow", "great_expectations", "dvc", "bentoml", "sklearn", "pyarrow")

INTEGRITY = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])  # as Airflow does for its DAGs folder
import importlib.util
import airflow.sdk  # Airflow's own import cost is paid once per process, not per DAG file
report = {}
for path in sorted(__import__("pathlib").Path(sys.argv[1]).glob("*.py")):
    start = time.perf_counter()
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report[path.name] = {"seconds": time.perf_counter() - start}
heavy = [m for m in sys.argv[2].split(",") if m in sys.modules]
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dags = {}
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "tasks": {t.task_id: {"retries": t.retries,
                              "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                              "downstream": sorted(t.downstream_task_ids), "pool": t.pool,
                              "queue": t.queue, "operator": type(t).__name__,
                              "outlets": [getattr(o, "name", str(o)) for o in t.outlets]} for t in dag.tasks},
        "doc": bool(dag.doc_md),
        "schedule": type(dag.timetable).__name__,
        "max_active_runs": dag.max_active_runs,
        "assets": sorted(a.name for a in getattr(getattr(dag.timetable, "asset_condition", None), "objects", ())),
    }
errors = {k: str(v) for k, v in bag.import_errors.items()}
print(json.dumps({"files": report, "heavy": heavy, "import_errors": errors, "dags": dags}))
"""


def _env(home: Path) -> dict[str, str]:
    """The environment of a fresh deployment in ``home``: nothing inherited from the caller's
    SHOPML_*, AIRFLOW* or MLFLOW_* settings (make exports SHOPML_HOME, a developer may have
    AIRFLOW_HOME; ``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI, so a test that trained
    earlier in the same pytest worker pointed these DAG runs at its registry, where fraud had a
    champion: the monitor DAG then found nothing to request for it)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPML_", "AIRFLOW", "MLFLOW_"))}
    return airflow_env(get_state_paths({"SHOPML_HOME": str(home)}), DAGS, env=clean)


def _airflow(home: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "airflow", *args],
        env=_env(home),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.fast
def test_dag_integrity(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", INTEGRITY, str(DAGS), ",".join(HEAVY)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["import_errors"] == {}
    assert report["heavy"] == [], f"DAG files import heavy modules at parse time: {report['heavy']}"
    for name, file in report["files"].items():
        assert file["seconds"] < 1.0, f"{name} took {file['seconds']:.2f}s to import"
    assert set(report["dags"]) == {
        "ingest_events",
        "retrain_next_item",
        "retrain_purchase_propensity",
        "retrain_price",
        "retrain_fraud",
        "promote_model",
        "rollback_model",
        "monitor_models",
        "collect_garbage",
    }
    ingest = report["dags"]["ingest_events"]["tasks"]
    assert set(ingest) == {"ingest_events", "validate_batch", "version_dataset"}
    assert ingest["ingest_events"]["downstream"] == ["validate_batch"]
    assert ingest["validate_batch"]["downstream"] == ["version_dataset"]
    for model in ("next_item", "purchase_propensity"):
        retrain = report["dags"][f"retrain_{model}"]
        steps = [
            f"{step}_{model}" for step in ("features", "train", "evaluate", "gate", "register", "package", "promote")
        ]
        assert set(retrain["tasks"]) == set(steps)
        for upstream, downstream in itertools.pairwise(steps):
            assert retrain["tasks"][upstream]["downstream"] == [downstream]
        # On a retrain request from monitoring, or weekly at the latest; one run at a time; one training per GPU.
        assert retrain["schedule"] == "AssetOrTimeSchedule" and retrain["max_active_runs"] == 1
        assert retrain["assets"] == [f"shopml://retrain/{model}"]
        monitor = report["dags"]["monitor_models"]["tasks"]
        assert monitor[f"monitor_{model}"]["downstream"] == [f"request_retrain_{model}"]
        assert monitor[f"request_retrain_{model}"]["outlets"] == [f"shopml://retrain/{model}"]
        assert retrain["tasks"][f"train_{model}"]["pool"] == "shopml_training"
        assert retrain["tasks"][f"train_{model}"]["operator"] == "_PythonDecoratedOperator"
    for dag_id, dag in report["dags"].items():
        assert dag["doc"], f"{dag_id} has no doc_md"
        for task_id, task in dag["tasks"].items():
            assert task["retries"] >= 1, f"{dag_id}.{task_id} has no retries"
            assert task["timeout"] and task["timeout"] > 0, f"{dag_id}.{task_id} has no execution timeout"


ANNOUNCED = r"""
import json, sys
from datetime import datetime, timezone
from types import SimpleNamespace
sys.path.insert(0, sys.argv[1])
import retrain_models
event = lambda version, hour: SimpleNamespace(extra={"version": version} if version else {},
                                              timestamp=datetime(2026, 11, 6, hour, tzinfo=timezone.utc))
events = {"shopml://dataset/canonical": [event("older", 1), event("newest", 3), event(None, 4), event("mid", 2)]}
print(json.dumps([retrain_models._announced_version({"triggering_asset_events": events}),
                  retrain_models._announced_version({"triggering_asset_events": {}}),
                  retrain_models._announced_version({})]))
"""


@pytest.mark.fast
def test_a_retrain_triggered_by_new_data_takes_the_version_of_the_newest_event(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", ANNOUNCED, str(DAGS)], env=_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["newest", None, None]


POD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import airflow.sdk
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
import airflow.providers.cncf.kubernetes.operators.pod  # the provider's own import, once per process
provider_seconds = time.perf_counter() - start
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1] + "/retrain_models.py")
seconds = time.perf_counter() - start
if bag.import_errors:
    print(json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}}))
    raise SystemExit(0)
t = bag.dags["retrain_next_item"].get_task("train_next_item")
pod = t.build_pod_request_obj()
c = pod.spec.containers[0]
print(json.dumps({
    "seconds": seconds, "provider_seconds": provider_seconds, "operator": type(t).__name__, "pool": t.pool,
    "upstream": sorted(t.upstream_task_ids),
    "downstream": sorted(t.downstream_task_ids), "image": c.image, "cmd": c.command, "args": c.args,
    "limits": c.resources.limits, "requests": c.resources.requests, "node_selector": pod.spec.node_selector,
    "tolerations": [tol.key for tol in pod.spec.tolerations or []], "namespace": pod.metadata.namespace,
    "env": {e.name: e.value for e in c.env}, "mounts": {m.name: m.mount_path for m in c.volume_mounts},
    "claims": [v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim],
    "xcom": t.do_xcom_push, "timeout": t.execution_timeout.total_seconds()}))
"""


@pytest.mark.fast
def test_training_is_routed_to_a_gpu_pod_by_configuration_alone(tmp_path):
    env = {
        **_env(tmp_path),
        "SHOPML_TRAIN_RUNNER": "kubernetes_pod",
        "SHOPML_TRAIN_GPUS": "2",
        "SHOPML_TRAIN_IMAGE": "registry.shop.example/shopml-train:1.2",
        "SHOPML_STATE_PVC": "shopml-state",
        "MLFLOW_TRACKING_URI": "http://mlflow.shopml:5000",
        "KUBECONFIG": str(tmp_path / "kubeconfig"),
    }
    # Building the pod's spec reads a cluster's configuration; nothing connects to it.
    (tmp_path / "kubeconfig").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "gpu",
                "clusters": [{"name": "gpu", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "contexts": [{"name": "gpu", "context": {"cluster": "gpu", "user": "u"}}],
                "users": [{"name": "u", "user": {}}],
            }
        )
    )
    out = subprocess.run([sys.executable, "-c", POD, str(DAGS)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    pod = json.loads(out.stdout.strip().splitlines()[-1])
    assert "import_errors" not in pod, pod
    assert pod["operator"] == "KubernetesPodOperator" and pod["pool"] == "shopml_training"
    assert pod["upstream"] == ["features_next_item"] and pod["downstream"] == ["evaluate_next_item"]
    assert pod["image"] == "registry.shop.example/shopml-train:1.2" and pod["namespace"] == "shopml"
    assert pod["limits"] == pod["requests"] == {"nvidia.com/gpu": "2"}
    assert pod["node_selector"] == {"nvidia.com/gpu.present": "true"} and pod["tolerations"] == ["nvidia.com/gpu"]
    assert pod["claims"] == ["shopml-state"] and pod["mounts"]["state"] == pod["env"]["SHOPML_HOME"]
    assert pod["env"]["MLFLOW_TRACKING_URI"] == "http://mlflow.shopml:5000"
    assert pod["cmd"] == ["torchrun", "--standalone", "--nproc-per-node=2", "-m", "pipeline"]  # one rank per GPU
    args = pod["args"]
    assert args[:3] == ["train", "--model", "next_item"] and "--reuse-finished" in args
    assert args[args.index("--output") + 1] == "/airflow/xcom/return.json" and pod["xcom"]
    assert "airflow.dag_run_id={{ run_id }}" in args
    assert "features_rel" in args[args.index("--features") + 1]
    assert pod["timeout"] == 7200
    # The provider's import (about 1 s, the Kubernetes clients) is paid once per parsing process;
    # the DAG file itself stays within the budget.
    print(f"cncf.kubernetes provider import {pod['provider_seconds']:.2f}s, DAG file {pod['seconds']:.2f}s")
    assert pod["seconds"] < 1.0, f"the DAG file took {pod['seconds']:.2f}s to parse with the pod runner"

    env["SHOPML_TRAIN_RUNNER"] = "spark"
    out = subprocess.run([sys.executable, "-c", POD, str(DAGS)], env=env, capture_output=True, text=True, timeout=300)
    errors = json.loads(out.stdout.strip().splitlines()[-1])["import_errors"]
    assert "SHOPML_TRAIN_RUNNER='spark': expected one of task, kubernetes_pod" in next(iter(errors.values()))


@pytest.fixture(scope="module")
def dag_home(tmp_path_factory):
    """A state folder with two generated days; the Airflow DB is created on first use."""
    home = tmp_path_factory.mktemp("airflow-e2e")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "generate",
            "--days",
            "2",
            "--events-per-day",
            "4000",
            "--start-date",
            "2026-11-01",
        ],
        env=_env(home),
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return home


def test_ingest_dag_runs_end_to_end(dag_home):
    # The run of 2026-11-02 covers the data interval [2026-11-01, 2026-11-02).
    out = _airflow(dag_home, "dags", "test", "ingest_events", "2026-11-02")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    log = out.stdout + out.stderr
    assert "validation of 2026-11-01 passed" in log
    paths = get_state_paths({"SHOPML_HOME": str(dag_home)})
    part = paths.canonical / "events" / "event_date=2026-11-01" / "part-0.parquet"
    assert pl.read_parquet(part).height > 3000
    current = json.loads((paths.dataset_repo / "versions" / "current.json").read_text())
    assert current["published_days"] == ["2026-11-01"]
    assert f"dataset version {current['version']}" in log


def test_validation_failure_stops_the_dag_without_retries(dag_home):
    paths = get_state_paths({"SHOPML_HOME": str(dag_home)})
    landing = paths.landing / "events" / "events-2026-11-01.csv"
    good = landing.read_text()
    accepted = (paths.canonical / "events" / "event_date=2026-11-01" / "part-0.parquet").read_bytes()
    try:
        pl.read_csv(landing).with_columns(pl.lit("ghost").alias("item_id")).write_csv(landing)
        out = _airflow(dag_home, "dags", "test", "ingest_events", "2026-11-02")
    finally:
        landing.write_text(good)
    log = out.stdout + out.stderr
    assert out.returncode != 0
    assert "validation of 2026-11-01 FAILED" in log and "share of unknown items" in log
    assert "[DAG TEST] starting task_id=version_dataset" not in log
    assert log.count("[DAG TEST] starting task_id=validate_batch") == 1  # no retry of bad data
    assert (paths.canonical / "events" / "event_date=2026-11-01" / "part-0.parquet").read_bytes() == accepted
    # The failure callback left one summary for whoever is on call, naming the problem.
    reports = list((paths.reports / "failures" / "ingest_events").glob("*/validate_batch.json"))
    assert len(reports) == 1, reports
    summary = json.loads(reports[0].read_text())
    assert summary["task_id"] == "validate_batch" and "share of unknown items" in summary["error"]


def test_monitor_dag_requests_a_retrain_once_per_cooldown_through_the_retrain_asset(dag_home):
    """No model has a champion yet: each model's request task updates its retrain Asset with the
    reason (what schedules its retrain DAG); a second run inside the cool-down is skipped."""
    import sqlite3

    assert _airflow(dag_home, "dags", "test", "ingest_events", "2026-11-02").returncode == 0
    events = []
    for run in ("2026-11-03", "2026-11-04"):
        out = _airflow(dag_home, "dags", "test", "monitor_models", run)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
        with sqlite3.connect(dag_home / "airflow" / "airflow.db") as db:
            events.append(
                db.execute(
                    "select a.name, e.extra from asset_event e join asset a on a.id = e.asset_id "
                    "where a.name like 'shopml://retrain/%' order by a.name"
                ).fetchall()
            )
        log = out.stdout + out.stderr
        assert "has no champion: nothing is served to monitor" in log
    first, second = events
    from pipeline import families

    # One request per family of the table (the DAG's MODELS), none missing, none twice.
    assert [name for name, _ in first] == [f"shopml://retrain/{m}" for m in sorted(families.names())]
    assert "shopml://retrain/price" in {name for name, _ in first}
    assert all(json.loads(extra)["reason"] == "no champion yet" for _, extra in first)
    assert second == first  # the second run's requests were held back by the cool-down
    assert "held back by the cool-down" in log


@pytest.mark.slow  # about 5 minutes: make test-slow (not in CI)
def test_ingest_three_days_rerun_one_then_retrain_promote_and_reject_a_retrain_on_the_same_data(tmp_path):
    home = tmp_path / "home"
    env = _env(home)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train_recommender"].update(epochs=10, patience=3)  # params.yaml's model, fewer epochs
    params["train_propensity"].update(epochs=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env["SHOPML_PARAMS"] = str(tmp_path / "params.yaml")
    # A shop dense enough (users and items per event) for the sequential model to beat popularity.
    for args in (
        demo_shop(10),
        ["run", "--start", "2026-11-01", "--days", "7"],
    ):
        subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=REPO, check=True, capture_output=True)
    paths = get_state_paths({"SHOPML_HOME": str(home)})

    def ingest(run_date: str) -> None:
        out = subprocess.run(
            [sys.executable, "-m", "pipeline", "airflow", "dags", "test", "ingest_events", run_date],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]

    # The last three days through the ingest DAG, one data interval per run (after the DAG's start date).
    for run_date in ("2026-11-09", "2026-11-10", "2026-11-11"):
        ingest(run_date)
    assert len(list((paths.canonical / "events").iterdir())) == 10
    current = json.loads((paths.dataset_repo / "versions" / "current.json").read_text())
    partition = paths.canonical / "events" / "event_date=2026-11-09" / "part-0.parquet"
    before = pl.read_parquet(partition)
    # Rerunning a day (a cleared run) gives the same partition and the same dataset version.
    ingest("2026-11-10")
    assert pl.read_parquet(partition).equals(before)
    assert json.loads((paths.dataset_repo / "versions" / "current.json").read_text())["version"] == current["version"]

    def run_dag(*models: str) -> str:
        logs = []
        for model in models:
            out = subprocess.run(
                [sys.executable, "-m", "pipeline", "airflow", "dags", "test", f"retrain_{model}"],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=600,
            )
            logs.append(out.stdout + out.stderr)
            assert out.returncode == 0, logs[-1][-4000:]
        return "\n".join(logs)

    def models() -> str:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", "models"], env=env, cwd=REPO, check=True, capture_output=True, text=True
        ).stdout

    first = {model: run_dag(model) for model in ("next_item", "purchase_propensity")}
    assert all(f"on dataset {current['version']}" in log for log in first.values())
    assert "test_recall_at_20 = " in first["next_item"] and "baseline_popularity_recall_at_20 = " in first["next_item"]
    assert "test_auc = " in first["purchase_propensity"] and "baseline_logreg_auc = " in first["purchase_propensity"]
    assert "floor logistic_regression: auc" in first["purchase_propensity"]
    assert "floor lightgbm: auc" in first["purchase_propensity"]
    listing = models()
    for model, log in first.items():
        # Whatever the gate decided on this shop, each floor's verdict follows its interval, and the model
        # has a champion: the learned candidate, or the strongest floor when the candidate did not clear it.
        promoted = _gate_verdicts(log)
        assert "parity: " in log and "answers identical" in log
        if promoted:
            assert f"{model}: champion is now version 1, served by Bento " in log
        else:
            assert f"{model} floor serves: " in log and f"{model}: champion is now version 2, served by Bento" in log
        champion = "1" if promoted else "2"
        assert any(line.split()[:4] == [model, champion, "champion", "champion"] for line in listing.splitlines()), (
            listing
        )

    # Same data, same seed: the candidate equals the first one; the champion changes only on a PROMOTE
    # whose every interval lies above zero, and a rejected one skips package and promote, not fails.
    before = next(
        line.split()[1]
        for line in models().splitlines()
        if line.split()[:1] == ["next_item"] and line.split()[2] == "champion"
    )
    second = run_dag("next_item")
    if not _gate_verdicts(second):
        assert "rejected by the gate" in second
        after = next(
            line.split()[1]
            for line in models().splitlines()
            if line.split()[:1] == ["next_item"] and line.split()[2] == "champion"
        )
        assert after == before


def _gate_verdicts(log: str) -> bool:
    """Whether the log's gate promoted; asserts each floor and significance verdict follows its interval."""
    import re

    checks = re.findall(
        r"^  (PASS|FAIL) (floor \w+|significance): .*?interval[^\[]*\[([-+][\d.]+), ([-+][\d.]+)\]", log, flags=re.M
    )
    assert checks, log[-3000:]
    for verdict, name, low, _ in checks:
        assert (verdict == "PASS") == (float(low) > 0), f"{name}: {verdict} with lower bound {low}"
    return "gate decision: PROMOTE" in log


def _json_tail(text: str):
    """The JSON list at the end of a command's output (Airflow prints warnings before it); no list
    of objects (Airflow's "No data found") is an empty one."""
    return json.loads(text[text.index("[{") :].strip()) if "[{" in text else []


@pytest.mark.slow
def test_a_week_backfills_through_the_scheduler(tmp_path):
    """``airflow backfill create`` for seven days, run by a real scheduler (``airflow standalone``:
    scheduler, DAG processor, API server, LocalExecutor), one data interval per run, in order."""
    import signal
    import socket
    import time

    home = tmp_path / "home"
    env = _env(home)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.update(
        {
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
        }
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "generate",
            "--days",
            "7",
            "--events-per-day",
            "3000",
            "--start-date",
            "2026-11-01",
        ],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
    )

    def airflow(*args: str) -> str:
        for _ in range(10):  # SQLite allows one writer; the scheduler holds it for moments
            out = subprocess.run(
                [sys.executable, "-m", "pipeline", "airflow", *args],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if out.returncode == 0:
                return out.stdout
            if "database is locked" not in out.stdout + out.stderr:
                break
            time.sleep(2)
        raise AssertionError(f"airflow {' '.join(args)}: {(out.stdout + out.stderr)[-3000:]}")

    airflow("db", "check")  # creates the metadata database and the training pool first
    with open(tmp_path / "standalone.log", "wb") as log:
        standalone = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "airflow", "standalone"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while "ingest_events" not in airflow("dags", "list"):
            assert standalone.poll() is None and time.monotonic() < deadline, (tmp_path / "standalone.log").read_text()[
                -3000:
            ]
            time.sleep(3)
        # Logical dates are data-interval starts: 2026-11-01 .. 2026-11-07, the generated week.
        airflow(
            "backfill",
            "create",
            "--dag-id",
            "ingest_events",
            "--from-date",
            "2026-11-01",
            "--to-date",
            "2026-11-07",
            "--max-active-runs",
            "1",
        )
        airflow("dags", "unpause", "ingest_events")  # the scheduler runs no run of a paused DAG
        deadline = time.monotonic() + 600
        while True:
            runs = [
                r
                for r in _json_tail(airflow("dags", "list-runs", "ingest_events", "-o", "json"))
                if r["run_id"].startswith("backfill__")
            ]
            states = sorted(r["state"] for r in runs)
            assert "failed" not in states, runs
            if len(runs) == 7 and set(states) == {"success"}:
                break
            assert time.monotonic() < deadline, runs
            time.sleep(5)
    finally:
        os.killpg(standalone.pid, signal.SIGTERM)
        standalone.wait(timeout=60)
    paths = get_state_paths({"SHOPML_HOME": str(home)})
    days = sorted(p.name for p in (paths.canonical / "events").iterdir())
    assert days == [f"event_date=2026-11-0{d}" for d in range(1, 8)]


RUN_A = r"""
import sys
from datetime import datetime, timezone
sys.path.insert(0, sys.argv[1])  # as Airflow does for its DAGs folder
from airflow.dag_processing.dagbag import DagBag
# `airflow dags test` names its run after the wall clock; a fixed run_after gives run A's id again, and
# Airflow then replaces that DAG run with a fresh one of the same id: what clearing it does.
when = datetime(2026, 11, 7, tzinfo=timezone.utc)
dag = DagBag(dag_folder=sys.argv[1]).get_dag("retrain_next_item")
run = dag.test(run_after=when, logical_date=when)
print(f"run {run.run_id} ended {run.state}")
"""


@pytest.mark.slow  # about 3 minutes: make test-slow (not in CI)
def test_a_cleared_retrain_reruns_on_its_own_dataset_version_and_packages_its_snapshot(tmp_path):
    """Publish days 1-5, run retrain_next_item (run A), publish day 6, clear and rerun run A: it works
    on the day-5 version, and packaging its version afterwards serves the day-5 snapshot."""
    import httpx

    from pipeline.serving.package import served

    home = tmp_path / "home"
    env = _env(home)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train_recommender"].update(epochs=2, max_len=20, dim=32, layers=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env["SHOPML_PARAMS"] = str(tmp_path / "params.yaml")

    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "pipeline", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
        return out.stdout + out.stderr

    def run_a() -> str:
        out = subprocess.run(
            [sys.executable, "-c", RUN_A, str(DAGS)], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
        )
        log = out.stdout + out.stderr
        assert out.returncode == 0 and "ended success" in log, log[-4000:]
        return log

    cli(
        "generate",
        "--days",
        "6",
        "--events-per-day",
        "3000",
        "--start-date",
        "2026-11-01",
        "--initial-users",
        "1000",
        "--initial-items",
        "600",
        "--seed",
        "11",
    )
    cli("run", "--start", "2026-11-01", "--days", "5")
    cli("airflow", "db", "check")  # creates the metadata database
    paths = get_state_paths({"SHOPML_HOME": str(home)})
    day5 = json.loads((paths.dataset_repo / "versions" / "current.json").read_text())["version"]

    first = run_a()
    run_id = first.split("run ")[-1].split(" ended")[0]
    assert f"DAG run {run_id} works on dataset version {day5}" in first and f"on dataset {day5}" in first
    cli("run", "--date", "2026-11-06")
    day6 = json.loads((paths.dataset_repo / "versions" / "current.json").read_text())["version"]
    assert day6 != day5
    again = run_a()
    assert f"DAG run {run_id} works on dataset version {day5}" in again and day6 not in again
    assert "this DAG run already trained run" in again
    lineage = json.loads(cli("lineage", "--model", "next_item", "--version", "1"))
    assert lineage["dataset_version"] == day5
    assert "next_item    2" not in cli("models")  # the rerun registered no second version

    packaged = cli("package", "--model", "next_item", "--version", "1")
    tag = next(line.split("Bento ")[1].split()[0] for line in packaged.splitlines() if "passed its smoke test" in line)
    with served(paths, tag) as url:
        meta = httpx.post(f"{url}/metadata", json={}).json()
    assert meta["version"] == "1" and meta["dataset_version"] == day5 and meta["features_dataset_version"] == day5
    assert meta["features_as_of"].startswith("2026-11-06")  # the end of day 5, not of day 6
