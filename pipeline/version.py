"""Publish a validated day into the canonical dataset and version it with DVC.

The canonical dataset lives in a DVC repository of its own inside the state folder
(``$SHOPML_HOME/dataset``, initialised with ``--no-scm``): it works wherever the state folder is, and
on workers that have no git checkout of this project. After each publish the dataset directory is
``dvc add``-ed and pushed to the remote (a local folder by default, ``s3://...`` through
``SHOPML_DVC_REMOTE``). The DVC directory hash is the dataset version; a manifest per version
(``dataset/versions/<hash>.json``) keeps the ``.dvc`` file that restores it (``dvc checkout`` or
``dvc pull`` with it), and ``dataset/versions/current.json`` names the newest one for later stages.

Publishing swaps whole partition folders by rename under a lock, so a reader sees the old day or the
new day, never half of one, and two runs never version at the same time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml
from filelock import FileLock

from pipeline.ingest import Interval
from pipeline.schema import partition_dir_name
from pipeline.settings import StatePaths
from pipeline.validate import validation_report_path

log = logging.getLogger(__name__)

TABLES = ("events", "catalog")


@dataclass(frozen=True)
class DatasetVersion:
    """A reference to one state of the canonical dataset."""

    version: str
    path: str
    remote: str
    published_days: list[str]
    files: int
    size_bytes: int
    created_at: str

    def to_dict(self) -> dict:
        return asdict(self)


def _repo(paths: StatePaths):
    from dvc.repo import Repo

    root = paths.dataset_repo
    if not (root / ".dvc").exists():
        root.mkdir(parents=True, exist_ok=True)
        Repo.init(str(root), no_scm=True)
    repo = Repo(str(root))
    with repo.config.edit("local") as cfg:
        cfg["remote"]["shopml"] = {"url": paths.dvc_remote_url}
        cfg["core"]["remote"] = "shopml"
        # Hard links keep one copy of each file on disk; partitions are replaced, never edited.
        cfg["cache"]["type"] = "reflink,hardlink,copy"
    return Repo(str(root))


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (or, across file systems, copy) every file of ``source`` into a new ``target``."""
    target.mkdir(parents=True)
    for item in source.iterdir():
        try:
            os.link(item, target / item.name)
        except OSError:
            shutil.copy2(item, target / item.name)


class NotValidated(RuntimeError):
    """A staged day has no passing validation newer than its staged data."""


def _require_passed_validation(paths: StatePaths, day: str) -> None:
    staged = paths.staging / "events" / partition_dir_name(day)
    report = validation_report_path(paths, day)
    if not staged.exists():
        raise FileNotFoundError(f"no staged partition at {staged}; run ingest and validate first")
    if not report.exists():
        raise NotValidated(f"{day} was staged but never validated ({report} is missing); run validate first")
    if report.stat().st_mtime < max(f.stat().st_mtime for f in staged.iterdir()):
        raise NotValidated(f"{day} was staged again after its last validation; run validate first")
    if not json.loads(report.read_text())["success"]:
        raise NotValidated(f"{day} failed validation; see {report}")


def publish_partition(interval: Interval, paths: StatePaths) -> list[str]:
    """Put the staged partitions of ``interval`` into the canonical dataset, replacing old ones.

    The staged files stay where they are (hard links, not copies), so validation and publishing can
    be rerun, as ``dvc repro`` does when only a suite changed.

    Returns:
        The days published.

    Raises:
        FileNotFoundError: nothing was staged for a day of the interval.
        NotValidated: a day has no passing validation newer than its staged data.
    """
    published = []
    for day in interval.days:
        _require_passed_validation(paths, day)
        for table in TABLES:
            staged = paths.staging / table / partition_dir_name(day)
            target = paths.canonical / table / partition_dir_name(day)
            if not staged.exists():
                continue  # only a catalog: multi-day intervals stage one, on their first day
            incoming = target.with_name(target.name + ".incoming")
            old = target.with_name(target.name + ".replaced")
            for leftover in (incoming, old):
                if leftover.exists():
                    shutil.rmtree(leftover)
            _link_tree(staged, incoming)
            if target.exists():
                target.rename(old)
            incoming.rename(target)
            if old.exists():
                shutil.rmtree(old)
        published.append(day)
    return published


def version_dataset(interval: Interval, paths: StatePaths, push: bool = True) -> DatasetVersion:
    """Publish the validated ``interval`` and record the new dataset version with DVC.

    Args:
        interval: the validated interval whose staged partitions are published.
        paths: where state lives (the DVC remote included).
        push: push the new version to the DVC remote.

    Returns:
        The dataset version (the DVC hash of the canonical directory) and where it lives.
    """
    paths.dataset_repo.mkdir(parents=True, exist_ok=True)
    with FileLock(str(paths.dataset_repo / ".publish.lock"), timeout=600):
        days = publish_partition(interval, paths)
        repo = _repo(paths)
        repo.add(str(paths.canonical))
        if push:
            repo.push()
        dvc_file = paths.dataset_repo / "canonical.dvc"
        out = yaml.safe_load(dvc_file.read_text())["outs"][0]
        version = out["md5"].removesuffix(".dir")
        result = DatasetVersion(
            version=version,
            path=str(paths.canonical),
            remote=paths.dvc_remote_url if push else "",
            published_days=days,
            files=int(out.get("nfiles", 0)),
            size_bytes=int(out.get("size", 0)),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        versions = paths.dataset_repo / "versions"
        versions.mkdir(exist_ok=True)
        manifest = {**result.to_dict(), "dvc_file": dvc_file.read_text()}
        (versions / f"{version}.json").write_text(json.dumps(manifest, indent=2))
        tmp = versions / "current.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.replace(versions / "current.json")
    return result


def current_dataset_version(paths: StatePaths) -> DatasetVersion | None:
    """The newest dataset version, or None before the first publish."""
    current = paths.dataset_repo / "versions" / "current.json"
    if not current.exists():
        return None
    data = json.loads(current.read_text())
    data.pop("dvc_file", None)
    return DatasetVersion(**data)
