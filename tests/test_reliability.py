"""Fault injection: SIGKILL at every named point of publish, `dvc add`/`push`, register and promote
(``pipeline.core.faults.KILL_POINTS``), then the same command again; after each, the invariants:
no row lost or duplicated, no half-written partition visible to readers, a dataset version that
matches its files, one model version per run with all its tags, one champion, and a history whose
replay gives the alias. ``make test-reliability`` runs it and prints what it tried.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import polars as pl
import pytest
from killing import run_worker

from pipeline.core.faults import KILL_POINTS

pytestmark = pytest.mark.reliability

SUMMARY: dict[str, list[str]] = {"tried": [], "held": []}


def _run(home: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    return run_worker(home, *args, kill_at=kill_at)


def _killed(result: subprocess.CompletedProcess, point: str) -> None:
    assert result.returncode == -signal.SIGKILL, (
        f"the worker was not killed at {point} (exit {result.returncode}):\n{result.stderr[-3000:]}"
    )


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """Three generated days, the first two published."""
    from pipeline.core.params import GenerateParams
    from pipeline.data.generate import generate_shop_data

    home = tmp_path_factory.mktemp("reliability") / "state"
    mp = pytest.MonkeyPatch()
    mp.setenv("SHOPML_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        from pipeline.core.settings import get_state_paths

        paths = get_state_paths()
        generate_shop_data(
            GenerateParams(
                seed=5, start_date="2026-11-01", days=3, events_per_day=800, initial_users=200, initial_items=100
            ),
            paths.landing,
        )
        for day in ("2026-11-01", "2026-11-02"):
            _ok(_run(home, "publish", day))
        yield home, paths
    finally:
        mp.undo()


def _dataset_invariants(paths, expected_rows: dict[str, int]) -> None:
    """Every day's rows once, nothing half-written visible, the current version = the files."""
    from pipeline.data.dataset import load_events

    events = load_events(paths.canonical)
    per_day = events.group_by(pl.col("event_time").dt.date().cast(pl.String)).len()
    assert dict(per_day.iter_rows()) == expected_rows
    assert events.is_duplicated().sum() == 0


def _dataset_clean(paths) -> None:
    from pipeline.data.version import _repo

    leftovers = [
        p.name
        for t in ("events", "catalog")
        for p in (paths.canonical / t).iterdir()
        if not p.name.startswith("event_date=") or "." in p.name.removeprefix("event_date=")[10:]
    ]
    assert not leftovers, leftovers
    current = json.loads((paths.dataset_repo / "versions" / "current.json").read_text())
    status = _repo(paths).status()
    assert status == {}, status  # the files are exactly the recorded version
    out = (paths.dataset_repo / "canonical.dvc").read_text()
    assert current["version"] in out


PUBLISH_POINTS = [p for p in KILL_POINTS if p.startswith(("publish.", "version."))]


def test_a_publish_killed_anywhere_is_finished_by_the_rerun(shop):
    home, paths = shop
    day = "2026-11-03"
    _ok(_run(home, "publish", day))  # published once: later kills replace it
    from pipeline.data.dataset import load_events

    expected = dict(
        load_events(paths.canonical).group_by(pl.col("event_time").dt.date().cast(pl.String)).len().iter_rows()
    )
    assert len(expected) == 3
    for point in PUBLISH_POINTS:
        SUMMARY["tried"].append(point)
        _killed(_run(home, "publish", day, kill_at=point), point)
        _dataset_invariants(paths, expected)  # what readers see right after the kill
        _ok(_run(home, "publish", day))
        _dataset_invariants(paths, expected)
        _dataset_clean(paths)
        SUMMARY["held"].append(point)


def _fake_run(paths, decision: str = "passed") -> str:
    """An MLflow run with a logged model and a gate decision, as training and the gate leave it."""
    import mlflow

    from pipeline.core.tracking import mlflow_client, use_experiment

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    mlflow_client(paths)
    experiment = use_experiment(paths, "next_item")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.pyfunc.log_model(name="model", python_model=Constant())
        mlflow.set_tags(
            {
                "gate.decision": decision,
                "gate.reasons": "PASS floor popularity",
                "dataset_version": "0" * 32,
                "eval.champion_version": "none",
            }
        )
        mlflow.log_metric("eval_ndcg_at_20", 0.1)
    return run.info.run_id


def _registry_invariants(paths) -> None:
    from pipeline.core.tracking import mlflow_client
    from pipeline.lifecycle import registry

    client = mlflow_client(paths)
    versions = client.search_model_versions("name = 'next_item'")
    runs = [v.run_id for v in versions]
    assert len(runs) == len(set(runs)), "a run registered twice"
    for v in versions:
        assert {"gate.decision", "dataset_version", "run_id", "status"} <= set(v.tags), (v.version, v.tags)
    champion = registry.alias_version(client, "next_item", registry.CHAMPION)
    champions = [v.version for v in versions if v.tags.get("status") == "champion"]
    stack = registry._stack(registry.champion_history(client, "next_item"))
    if champion is None:
        assert not stack and not champions
    else:
        assert stack[-1] == str(champion.version) and champions == [champion.version], (stack, champions)


def test_register_and_promote_killed_anywhere_are_finished_by_the_rerun(shop):
    from pipeline.core.tracking import mlflow_client
    from pipeline.lifecycle import registry

    home, paths = shop
    client = mlflow_client(paths)
    champion = "none"
    for point in [p for p in KILL_POINTS if p.startswith(("register.", "promote."))]:
        SUMMARY["tried"].append(point)
        run_id = _fake_run(paths)
        if point.startswith("register."):
            _killed(_run(home, "register", run_id, kill_at=point), point)
        _ok(result := _run(home, "register", run_id))
        version = result.stdout.strip().splitlines()[-1]
        client.set_model_version_tag("next_item", version, "smoke_test", "passed")
        if point.startswith("promote."):
            _killed(_run(home, "promote", version, champion, kill_at=point), point)
            # Right after the kill: the champion is the old one or the new one, nothing else.
            held = registry.alias_version(client, "next_item", registry.CHAMPION)
            assert (str(held.version) if held else "none") in (champion, version)
        _ok(_run(home, "promote", version, champion))
        _registry_invariants(paths)
        assert str(registry.alias_version(client, "next_item", registry.CHAMPION).version) == version
        champion = version
        SUMMARY["held"].append(point)
    # The promotions left one entry each, in order, and a rollback walks back through them.
    history = registry.champion_history(client, "next_item")
    assert [h["version"] for h in history] == [str(v) for v in range(1, len(history) + 1)]
    registry.rollback(paths, "next_item", reason="test")
    _registry_invariants(paths)


def test_summary():
    """Printed by `make test-reliability` (with -s)."""
    own = [p for p in KILL_POINTS if not p.startswith("package.")]  # package.*: tests/test_fuzz.py
    print(
        f"\nkill points tried: {len(SUMMARY['tried'])} of the {len(own)} of publish, dvc, register and "
        f"promote; invariants held after the rerun: {len(SUMMARY['held'])}: {', '.join(SUMMARY['held'])}"
    )
    assert SUMMARY["tried"] == SUMMARY["held"] == own
