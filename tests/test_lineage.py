"""Every stage works on the dataset version it is handed: restoring a version, the features stage on
an older one, the version a DAG run pins, and the test rows an evaluation cuts from a run's own
version at the run's own split points.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from pipeline.cli import main as cli
from pipeline.core.params import GenerateParams
from pipeline.core.settings import get_state_paths
from pipeline.data.generate import generate_shop_data
from pipeline.data.version import UnknownDatasetVersion, current_dataset_version, restore_dataset

# The fast layer (`make test-fast`): no training, no servers, no Airflow runs.
pytestmark = pytest.mark.fast

DAYS = [f"2026-11-0{d}" for d in range(1, 7)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """Six generated days; the first five published one at a time. Yields the state paths and the
    dataset version after each published day."""
    home = tmp_path_factory.mktemp("lineage")
    mp = pytest.MonkeyPatch()
    mp.setenv("SHOPML_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        paths = get_state_paths()
        generate_shop_data(
            GenerateParams(
                seed=5, start_date=DAYS[0], days=6, events_per_day=1500, initial_users=400, initial_items=200
            ),
            paths.landing,
        )
        versions = []
        for day in DAYS[:5]:
            assert cli(["run", "--date", day]) == 0
            versions.append(current_dataset_version(paths).version)
        yield paths, versions
    finally:
        mp.undo()


def _days(folder) -> list[str]:
    return sorted(p.name.removeprefix("event_date=") for p in (folder / "events").iterdir())


def test_each_published_version_is_restored_as_it_was(shop):
    paths, versions = shop
    assert len(set(versions)) == 5
    for i, version in enumerate(versions):
        folder = restore_dataset(paths, version[:8])  # a unique prefix names a version too
        assert _days(folder) == DAYS[: i + 1]
    # The files are those that were published: the newest version is today's canonical folder.
    newest = restore_dataset(paths, versions[-1])
    for part in (paths.canonical / "events").iterdir():
        assert (newest / "events" / part.name / "part-0.parquet").read_bytes() == (part / "part-0.parquet").read_bytes()
    with pytest.raises(UnknownDatasetVersion, match=r"'deadbeef00' is not published .*newest: " + versions[-1][:12]):
        restore_dataset(paths, "deadbeef00")


@pytest.mark.fast
def test_a_version_that_is_not_a_hash_is_refused_before_any_path_is_built(tmp_path):
    """``../x`` resolved outside ``versions/`` and was checked out with force; now nothing that is
    not hex digits reaches a path, even when the file it would name exists."""
    from pipeline.core.settings import StatePaths
    from pipeline.data.version import InvalidDatasetVersion, dataset_version

    paths = StatePaths(tmp_path, str(tmp_path / "remote"))
    (paths.dataset_repo / "versions").mkdir(parents=True)
    (paths.dataset_repo / "x.json").write_text("{}")  # what ../x would have read
    for bad in ("../x", "..", "/etc/passwd", "abc", "ABCDEF12", "deadbeef/../x", ""):
        with pytest.raises(InvalidDatasetVersion, match="is not a hash"):
            dataset_version(paths, bad)
        with pytest.raises(InvalidDatasetVersion):
            restore_dataset(paths, bad)


def test_a_version_missing_from_the_cache_is_pulled_and_a_lost_one_is_a_clear_error(shop, tmp_path):
    paths, versions = shop
    copy = get_state_paths({"SHOPML_HOME": str(tmp_path / "home")})
    shutil.copytree(paths.home, copy.home, symlinks=True)
    shutil.rmtree(copy.dataset_repo / ".dvc" / "cache")
    shutil.rmtree(copy.dataset_repo / "snapshots", ignore_errors=True)
    assert _days(restore_dataset(copy, versions[1])) == DAYS[:2]  # from the DVC remote
    shutil.rmtree(copy.dataset_repo / ".dvc" / "cache")
    shutil.rmtree(copy.dataset_repo / "snapshots")
    shutil.rmtree(copy.home / "dvc-remote")
    with pytest.raises(UnknownDatasetVersion, match=f"dataset version {versions[2]} cannot be restored.*dvc pull"):
        restore_dataset(copy, versions[2])


def test_the_features_stage_builds_on_the_version_it_is_given(shop, capsys):
    paths, versions = shop
    older = versions[3]  # four days: too few for 2 validation + 2 test + training days
    assert cli(["features", "--model", "next_item", "--dataset-version", older]) == 2
    assert "too few" in capsys.readouterr().err  # four days cannot hold 2 + 2 days and training
    assert cli(["features", "--model", "next_item", "--dataset-version", versions[4][:10]]) == 0
    report = json.loads((paths.reports / "features" / "next_item.json").read_text())
    manifest = json.loads((paths.home / report["path"] / "manifest.json").read_text())
    assert report["dataset_version"] == manifest["dataset_version"] == versions[4]
    assert manifest["split"]["end"].startswith("2026-11-06")

    assert cli(["features", "--model", "next_item", "--dataset-version", "0123456789abcdef"]) == 3  # not found
    err = capsys.readouterr().err
    assert "dataset version '0123456789abcdef' is not published" in err and "dvc pull" in err


def test_a_dag_run_keeps_the_version_it_started_with_and_evaluation_keeps_the_runs_split(shop):
    from pipeline.data.dataset import TimeSplit
    from pipeline.data.version import open_dataset
    from pipeline.families import get
    from pipeline.lifecycle.evaluate import build_test_set
    from pipeline.lifecycle.steps import pinned_dataset_version

    paths, versions = shop
    assert pinned_dataset_version(paths, "retrain_next_item", "manual__A") == versions[4]
    assert pinned_dataset_version(paths, "retrain_next_item", "asset_B", announced=versions[2][:8]) == versions[2]
    # A run trained on the day-5 version, with its split as the run recorded it.
    split = TimeSplit.from_dict(
        {
            "start": "2026-11-01T00:00:00+00:00",
            "train_end": "2026-11-02T00:00:00+00:00",
            "valid_end": "2026-11-04T00:00:00+00:00",
            "end": "2026-11-06T00:00:00+00:00",
        }
    )
    run = SimpleNamespace(
        info=SimpleNamespace(run_id="r1"),
        data=SimpleNamespace(
            tags={"dataset_version": versions[4]}, params={f"split.{k}": v for k, v in split.to_dict().items()}
        ),
    )
    before = build_test_set(paths, "next_item", run)

    assert cli(["run", "--date", DAYS[5]]) == 0  # day 6 is published meanwhile
    newest = current_dataset_version(paths).version
    assert newest not in versions
    # The run keeps its version; a new run gets the new one.
    assert pinned_dataset_version(paths, "retrain_next_item", "manual__A") == versions[4]
    assert pinned_dataset_version(paths, "retrain_next_item", "manual__C") == newest
    # The evaluation cuts the same rows: the run's version at the run's cut points.
    after = build_test_set(paths, "next_item", run)
    assert after.inputs.equals(before.inputs) and list(after.targets) == list(before.targets)
    direct = get("next_item").test_set(open_dataset(paths, versions[4]), split, {})
    assert list(direct.targets) == list(after.targets) and len(after.targets) > 50
    # Counting the same 2 + 2 days on today's data, as evaluation did before, cuts another period.
    from pipeline.data.dataset import split_by_time

    assert split_by_time(open_dataset(paths, newest).events(), 2, 2).valid_end > split.valid_end


def test_a_run_without_lineage_cannot_be_evaluated(shop):
    from pipeline.core.tracking import RegistryError
    from pipeline.lifecycle.evaluate import build_test_set

    paths, _ = shop
    run = SimpleNamespace(info=SimpleNamespace(run_id="r0"), data=SimpleNamespace(tags={}, params={}))
    with pytest.raises(RegistryError, match="run r0 records no dataset version or no split"):
        build_test_set(paths, "next_item", run)
