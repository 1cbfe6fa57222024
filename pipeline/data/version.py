"""Publish a validated day into the canonical dataset and version it with DVC.

The canonical dataset lives in a DVC repository of its own inside the state folder
(``$SHOPML_HOME/dataset``, initialised with ``--no-scm``): it works wherever the state folder is, and
on workers that have no git checkout of this project. After each publish the dataset directory is
``dvc add``-ed and pushed to the remote (a local folder by default, ``s3://...`` through
``SHOPML_DVC_REMOTE``). The DVC directory hash is the dataset version; a manifest per version
(``dataset/versions/<hash>.json``) keeps the ``.dvc`` file that restores it (``dvc checkout`` or
``dvc pull`` with it), and ``dataset/versions/current.json`` names the newest one.

Later stages are handed a version (a hash) and read that version, never "whatever is current":
``restore_dataset`` checks the version's files out of the DVC cache (or pulls them from the remote)
into ``dataset/snapshots/<hash>/canonical``, by hard links, so a version published meanwhile
changes nothing under a stage that is running, and a rerun reads what the first run read.

Publishing swaps whole partition folders by rename under a lock, so a reader sees the old day or the
new day, never half of one, and two runs never version at the same time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml
from filelock import FileLock

from pipeline.core.errors import BadInput, NotFound, Refused
from pipeline.core.faults import kill_point
from pipeline.core.schema import partition_dir_name
from pipeline.core.settings import StatePaths
from pipeline.data.dataset import Dataset
from pipeline.data.ingest import Interval
from pipeline.data.validate import validation_report_path

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


DVCIGNORE = "*.incoming\n*.replaced\n"


def _repo(paths: StatePaths):
    from dvc.repo import Repo

    root = paths.dataset_repo
    if not (root / ".dvc").exists():
        root.mkdir(parents=True, exist_ok=True)
        Repo.init(str(root), no_scm=True)
    # A publish in progress (or killed) leaves these beside the partitions; they are never data.
    ignore = root / ".dvcignore"
    if not ignore.exists() or ignore.read_text() != DVCIGNORE:
        ignore.write_text(DVCIGNORE)
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


class NotValidated(Refused):
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


def _recover_partition(target: Path, incoming: Path, old: Path) -> None:
    """Finish or undo what a publish killed at any point left behind, before publishing again.

    Killed between moving the published partition aside and moving the new one in, ``target`` is
    missing and ``old`` holds the last published rows: they go back. Killed after the swap, ``old``
    is garbage. A leftover ``incoming`` was never visible; it is rebuilt from the staged files.
    Readers never see either (``schema.partition_files``), and DVC ignores them (``.dvcignore``).
    """
    if old.exists():
        if target.exists():
            shutil.rmtree(old)
        else:
            old.rename(target)
    if incoming.exists():
        shutil.rmtree(incoming)


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
            _recover_partition(target, incoming, old)
            _link_tree(staged, incoming)
            kill_point("publish.linked")
            if target.exists():
                target.rename(old)
                kill_point("publish.moved_aside")
            incoming.rename(target)
            kill_point("publish.swapped")
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
        kill_point("version.published")
        repo = _repo(paths)
        repo.add(str(paths.canonical))
        kill_point("version.added")
        if push:
            repo.push()
            kill_point("version.pushed")
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


class UnknownDatasetVersion(NotFound, ValueError):
    """A dataset version that was never published here, or whose files cannot be restored."""


class InvalidDatasetVersion(BadInput):
    """A dataset version that is not a hash (hex digits): refused before any path is built from it."""


VERSION_PATTERN = re.compile(r"[0-9a-f]{6,64}")


def checked_version(version: str) -> str:
    """``version`` when it is a hash or a prefix of one (6 to 64 lowercase hex digits).

    Raises:
        InvalidDatasetVersion: anything else (``../x``, a path, an empty string), named.
    """
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise InvalidDatasetVersion(
            f"dataset version {version!r} is not a hash: expected 6 to 64 lowercase hex digits (a DVC hash or a prefix)"
        )
    return version


def _manifest(path: Path) -> DatasetVersion:
    data = json.loads(path.read_text())
    data.pop("dvc_file", None)
    return DatasetVersion(**data)


def dataset_version(paths: StatePaths, version: str) -> DatasetVersion:
    """The published version ``version`` (a full hash, or a prefix of at least 6 characters that
    names one version).

    Raises:
        UnknownDatasetVersion: no published version matches; the message lists the newest ones.
    """
    return _manifest(_manifest_file(paths, version))


def _manifest_file(paths: StatePaths, version: str) -> Path:
    """``versions/<hash>.json`` of ``version`` (see ``dataset_version``)."""
    checked_version(version)
    versions = paths.dataset_repo / "versions"
    exact = versions / f"{version}.json"
    if len(version) >= 6 and "/" not in version and not exact.exists():
        found = [f for f in versions.glob(f"{version}*.json") if f.name != "current.json"]
        exact = found[0] if len(found) == 1 else exact
    if not exact.exists() or exact.name == "current.json":
        known = sorted(
            (f for f in versions.glob("*.json") if f.name != "current.json"),
            key=lambda f: f.stat().st_mtime,
            reverse=True,
        )
        raise UnknownDatasetVersion(
            f"dataset version {version!r} is not published under {versions} (newest: "
            f"{', '.join(f.stem[:12] for f in known[:5]) or 'none'}); a version from another state folder is "
            f"restored by copying its versions/<hash>.json there and running `dvc pull` in {paths.dataset_repo}"
        )
    return exact


def resolve_dataset_version(paths: StatePaths, version: str | None = None) -> DatasetVersion:
    """``version`` if given (see ``dataset_version``), else the current one, resolved once.

    Raises:
        FileNotFoundError: no version was given and none has been published yet.
        UnknownDatasetVersion: the given version is not published here.
    """
    if version:
        return dataset_version(paths, version)
    current = current_dataset_version(paths)
    if current is None:
        raise FileNotFoundError(f"no dataset version under {paths.dataset_repo}; run the ingest DAG first")
    return current


def restore_dataset(paths: StatePaths, version: str) -> Path:
    """A folder holding exactly the canonical dataset of ``version`` (``events/``, ``catalog/``).

    The files come from the DVC cache, or from the remote (``dvc pull``) when the cache lacks them,
    into ``dataset/snapshots/<hash>/canonical`` once; later calls return that folder. Restored
    files are hard links into the cache (``cache.type``): no copy of the data. Safe to call from
    several processes at once (a lock per version).

    Raises:
        UnknownDatasetVersion: the version was never published here, or its files are neither in
            the cache nor on the remote.
    """
    manifest = json.loads(_manifest_file(paths, version).read_text())
    dvc_text = manifest.pop("dvc_file")
    ref = DatasetVersion(**manifest)
    folder = paths.dataset_repo / "snapshots" / checked_version(ref.version)
    done = folder / ".restored"
    if done.exists():
        return folder / "canonical"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock", timeout=600):
        if done.exists():
            return folder / "canonical"
        # The version's own .dvc file, beside the folder it describes (its out path is `canonical`).
        dvc_file = folder / "canonical.dvc"
        dvc_file.write_text(dvc_text)
        repo = _repo(paths)
        try:
            repo.checkout(targets=[str(dvc_file)], force=True)
        except Exception as checkout_error:
            log.info(
                "dataset version %s is not complete in the DVC cache (%s); pulling it from %s",
                ref.version,
                checkout_error,
                paths.dvc_remote_url,
            )
            try:
                repo.pull(targets=[str(dvc_file)], force=True)
            except Exception as exc:
                raise UnknownDatasetVersion(
                    f"dataset version {ref.version} cannot be restored: its files are not in the DVC cache of "
                    f"{paths.dataset_repo} and `dvc pull` from {paths.dvc_remote_url} failed ({exc}); restore the "
                    f"remote (or the cache) and run again"
                ) from None
        if not (folder / "canonical" / "events").is_dir():
            raise UnknownDatasetVersion(
                f"dataset version {ref.version} restored to {folder / 'canonical'} holds no events/ folder"
            )
        done.write_text(ref.created_at)
    return folder / "canonical"


def gc_unreferenced(paths: StatePaths) -> None:
    """Remove from the DVC cache and the remote every object no ``.dvc`` file of the dataset
    folder refers to (the current version's and each ``snapshots/<hash>/canonical.dvc``):
    ``dvc gc --workspace --cloud``, DVC's own collector, so an object two versions share stays."""
    repo = _repo(paths)
    repo.gc(workspace=True, force=True)
    repo.gc(workspace=True, cloud=True, force=True)


def current_dataset_version(paths: StatePaths) -> DatasetVersion | None:
    """The newest dataset version, or None before the first publish."""
    current = paths.dataset_repo / "versions" / "current.json"
    if not current.exists():
        return None
    return _manifest(current)


def open_dataset(paths: StatePaths, version: str | None = None) -> Dataset:
    """The dataset version ``version`` (default: the current one, resolved once), restored.

    Raises:
        FileNotFoundError: no version was given and none has been published yet.
        UnknownDatasetVersion: the version is not published here or cannot be restored.
    """
    ref = resolve_dataset_version(paths, version)
    return Dataset(ref.version, restore_dataset(paths, ref.version))
