"""``dvc repro`` rebuilds the dataset from params.yaml in a copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO


def _copy_repo(target: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    subprocess.run(["git", "init", "-q"], cwd=target, check=True)  # as a clone would be


def test_dvc_repro_builds_and_versions_the_dataset(tmp_path):
    repo = tmp_path / "repo"
    _copy_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["generate"].update(days=2, events_per_day=3000, initial_users=800, initial_items=600)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **os.environ,
        "SHOPML_HOME": str(repo / ".state"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("SHOPML_DVC_REMOTE", None)
    dvc = [sys.executable, "-m", "dvc"]

    first = subprocess.run([*dvc, "repro", "version"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    current = json.loads((repo / ".state" / "dataset" / "versions" / "current.json").read_text())
    assert current["published_days"] == ["2026-11-02"]
    assert sorted(p.name for p in (repo / ".state" / "dataset" / "canonical" / "events").iterdir()) == [
        "event_date=2026-11-01",
        "event_date=2026-11-02",
    ]

    again = subprocess.run([*dvc, "repro", "version"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "Data and pipelines are up to date" in again.stdout

    # A changed suite re-validates and re-publishes the same data: same dataset version.
    suite = repo / "expectations" / "catalog.json"
    data = json.loads(suite.read_text())
    data["meta"]["description"] += " (edited)"
    suite.write_text(json.dumps(data, indent=2))
    third = subprocess.run([*dvc, "repro", "version"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "Running stage 'validate'" in third.stdout and "Running stage 'ingest'" not in third.stdout
    rerun = json.loads((repo / ".state" / "dataset" / "versions" / "current.json").read_text())
    assert rerun["version"] == current["version"]
