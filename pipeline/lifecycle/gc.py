"""Nothing kept for ever: ``shopml gc`` removes the dataset versions, Bentos, models, prediction logs
and reports nothing refers to any more.

Kept, always:

* every dataset version, Bento and Bento model a registered version refers to (its
  ``dataset_version`` and ``bento_tag`` tags, whatever its status: delete a version in MLflow to
  let its files go), and the models each kept Bento packs;
* the dataset version and Bentos of a *pinned* run: a run tagged ``shopml.pinned`` = ``true`` (for
  an audit, say: ``MlflowClient().set_tag(run_id, "shopml.pinned", "true")``);
* the current dataset version, and whatever was made in the last ``keep_days`` days (dataset
  versions, Bentos, prediction-log days, reports).

Removed: the other versions' manifests and restored snapshots, then their files from the DVC cache
and remote (``dvc gc`` over the kept versions' ``.dvc`` files: DVC's own collector, which keeps an
object any kept version shares), the other Bentos and models from the Bento store
(``bentoml.bentos.delete``), prediction-log day folders and reports older than the window.

``plan`` only reads; ``collect`` removes what a plan lists. ``shopml gc --dry-run`` prints the plan.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from pipeline import families
from pipeline.core.settings import StatePaths

log = logging.getLogger(__name__)

PIN_TAG = "shopml.pinned"


@dataclass
class Plan:
    keep_days: int
    keep_versions: dict[str, str] = field(default_factory=dict)  # dataset version -> why kept
    remove_versions: list[str] = field(default_factory=list)
    keep_bentos: dict[str, str] = field(default_factory=dict)
    remove_bentos: list[str] = field(default_factory=list)
    remove_models: list[str] = field(default_factory=list)
    remove_prediction_days: list[str] = field(default_factory=list)
    remove_reports: list[str] = field(default_factory=list)
    cache_objects: tuple[int, int] = (0, 0)  # (unused, all) objects of the local DVC cache

    def lines(self) -> list[str]:
        out = [f"keep dataset version {v[:12]}: {why}" for v, why in sorted(self.keep_versions.items())]
        out += [f"remove dataset version {v[:12]} (manifest, snapshot)" for v in self.remove_versions]
        out += [f"keep Bento {t}: {why}" for t, why in sorted(self.keep_bentos.items())]
        out += [f"remove Bento {t}" for t in self.remove_bentos]
        out += [f"remove Bento model {t}" for t in self.remove_models]
        out += [f"remove prediction log {d}" for d in self.remove_prediction_days]
        out += [f"remove report {r}" for r in self.remove_reports]
        unused, total = self.cache_objects
        out.append(f"DVC cache: {unused} of {total} objects unused once the removed versions are gone")
        return out


def _referenced(paths: StatePaths) -> tuple[dict[str, str], dict[str, str]]:
    """Dataset versions and Bento tags the registry's versions and the pinned runs refer to."""
    from pipeline.core.tracking import mlflow_client

    client = mlflow_client(paths)
    versions: dict[str, str] = {}
    bentos: dict[str, str] = {}
    for name in families.names():
        # A model never registered has no versions; a registry that cannot answer stops gc (it
        # must not read as "nothing refers to anything").
        for mv in client.search_model_versions(f"name = '{name}'"):
            why = f"{name} version {mv.version} ({mv.tags.get('status') or 'registered'})"
            if mv.tags.get("dataset_version"):
                versions.setdefault(mv.tags["dataset_version"], why)
            if mv.tags.get("bento_tag"):
                bentos.setdefault(mv.tags["bento_tag"], why)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if experiments:
        for run in client.search_runs(experiments, f"tags.`{PIN_TAG}` = 'true'"):
            why = f"pinned run {run.info.run_id}"
            if run.data.tags.get("dataset_version"):
                versions.setdefault(run.data.tags["dataset_version"], why)
            if run.data.tags.get("bento_tag"):
                bentos.setdefault(run.data.tags["bento_tag"], why)
    return versions, bentos


def _manifests(paths: StatePaths) -> dict[str, dict]:
    folder = paths.dataset_repo / "versions"
    out = {}
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        if path.name == "current.json":
            continue
        manifest = json.loads(path.read_text())
        out[manifest["version"]] = manifest
    return out


def _recent(stamp: str, cutoff: datetime) -> bool:
    try:
        when = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return True  # a time that cannot be read is not a reason to delete
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)) >= cutoff


def plan(paths: StatePaths, keep_days: int = 30, now: datetime | None = None) -> Plan:
    """What ``collect`` would remove, and why the rest stays (reads only)."""
    from pipeline.data.version import current_dataset_version
    from pipeline.serving.package import use_bento_home

    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=keep_days)
    result = Plan(keep_days)
    versions, bentos = _referenced(paths)
    current = current_dataset_version(paths)
    manifests = _manifests(paths)
    for version, manifest in manifests.items():
        if version in versions:
            result.keep_versions[version] = versions[version]
        elif current is not None and version == current.version:
            result.keep_versions[version] = "the current version"
        elif _recent(manifest.get("created_at", ""), cutoff):
            result.keep_versions[version] = f"made in the last {keep_days} days"
        else:
            result.remove_versions.append(version)

    use_bento_home(paths)
    import bentoml

    keep_models: set[str] = set()
    for bento in bentoml.bentos.list():
        tag = str(bento.tag)
        if tag in bentos:
            result.keep_bentos[tag] = bentos[tag]
        elif _recent(bento.info.creation_time.isoformat(), cutoff):
            result.keep_bentos[tag] = f"built in the last {keep_days} days"
        else:
            result.remove_bentos.append(tag)
            continue
        keep_models.update(str(m.tag) for m in bento.info.models)
        keep_models.update(str(v) for v in (bento.info.args or {}).values() if isinstance(v, str) and ":" in v)
    for model in bentoml.models.list():
        tag = str(model.tag)
        if tag not in keep_models and not _recent(model.info.creation_time.isoformat(), cutoff):
            result.remove_models.append(tag)

    from pipeline.data.predictions import default_root

    root = default_root()
    if root and "://" not in root and Path(root).exists():
        for day_dir in sorted(Path(root).glob("*/date=*")):
            day = day_dir.name.removeprefix("date=")
            try:
                old = date.fromisoformat(day) < cutoff.date()
            except ValueError:
                continue
            if old:
                result.remove_prediction_days.append(str(day_dir))
    reports = paths.home / "reports"
    if reports.exists():
        for path in sorted(p for p in reports.rglob("*") if p.is_file()):
            if datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) < cutoff:
                result.remove_reports.append(str(path))
    result.cache_objects = _cache_usage(paths, [manifests[v] for v in result.keep_versions if v in manifests])
    return result


def _dir_hash(manifest: dict) -> str:
    import yaml

    return yaml.safe_load(manifest["dvc_file"])["outs"][0]["md5"]


def _cache_usage(paths: StatePaths, kept: list[dict]) -> tuple[int, int]:
    """(objects no kept version refers to, all objects) in the local DVC cache."""
    cache = paths.dataset_repo / ".dvc" / "cache" / "files" / "md5"
    if not cache.exists():
        return 0, 0
    objects = {p.parent.name + p.name for p in cache.glob("*/*") if p.is_file()}
    used: set[str] = set()
    workspace = paths.dataset_repo / "canonical.dvc"
    dir_hashes = [_dir_hash(m) for m in kept]
    if workspace.exists():
        import yaml

        dir_hashes.append(yaml.safe_load(workspace.read_text())["outs"][0]["md5"])
    for dir_hash in dir_hashes:
        used.add(dir_hash)
        listing = cache / dir_hash[:2] / dir_hash[2:]
        if listing.exists():
            used.update(entry["md5"] for entry in json.loads(listing.read_text()))
    return len(objects - used), len(objects)


def collect(paths: StatePaths, todo: Plan) -> Plan:
    """Remove what ``todo`` lists; the kept versions' files stay in the DVC cache and remote."""
    import bentoml

    from pipeline.data.version import checked_version, gc_unreferenced

    repo_root = paths.dataset_repo
    manifests = _manifests(paths)
    for version in todo.remove_versions:
        checked_version(version)
        shutil.rmtree(repo_root / "snapshots" / version, ignore_errors=True)
        (repo_root / "snapshots" / f"{version}.lock").unlink(missing_ok=True)
        (repo_root / "versions" / f"{version}.json").unlink(missing_ok=True)
    # A kept version restorable later: its .dvc file in the workspace, where `dvc gc` looks.
    for version in todo.keep_versions:
        if version not in manifests:
            continue
        folder = repo_root / "snapshots" / checked_version(version)
        if not (folder / "canonical.dvc").exists():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "canonical.dvc").write_text(manifests[version]["dvc_file"])
    if todo.remove_versions:
        gc_unreferenced(paths)
    for tag in todo.remove_bentos:
        bentoml.bentos.delete(tag)
    for tag in todo.remove_models:
        bentoml.models.delete(tag)
    for day_folder in todo.remove_prediction_days:
        shutil.rmtree(day_folder, ignore_errors=True)
    for report in todo.remove_reports:
        Path(report).unlink(missing_ok=True)
    log.info(
        "gc: removed %d dataset versions, %d Bentos, %d models, %d prediction-log days, %d reports",
        len(todo.remove_versions),
        len(todo.remove_bentos),
        len(todo.remove_models),
        len(todo.remove_prediction_days),
        len(todo.remove_reports),
    )
    return todo
