"""Register -> promote -> roll back, through the MLflow model registry.

Registered model names are the model names (``next_item``, ``purchase_propensity``). Aliases:

* ``challenger``: the newest version that passed the gate, waiting for packaging;
* ``champion``: the version that serves.

Every version is registered, passed or not, tagged with its dataset version, git commit, gate
decision and reasons, and its evaluation metrics. A promotion is a compare-and-set: it names the
champion the candidate was evaluated against and fails if the champion moved meanwhile, under a
lock, so two racing promotions leave exactly one champion, and never a candidate that was not
compared with the model it replaces. Each change of champion is recorded (who, why, when) on the
registered model; ``rollback`` moves the champion back to the one before.

Each step reads what it needs from MLflow, so the DAG's tasks can run on different workers. The
evaluation is ``pipeline.lifecycle.evaluate``, the gate ``pipeline.lifecycle.gate``, and the order
of the steps ``pipeline.lifecycle.steps``.
"""

from __future__ import annotations

import getpass
import json
import logging
from datetime import datetime, timezone

from pipeline import families
from pipeline.core.faults import kill_point
from pipeline.core.hints import command
from pipeline.core.integrity import DIGEST_TAG
from pipeline.core.locks import shared_lock
from pipeline.core.settings import StatePaths
from pipeline.core.tracking import (
    CHALLENGER,
    CHAMPION,
    NO_CHAMPION,
    NotRegistered,
    RegistryError,
    alias_version,
    logged_model_uri,
    mlflow_client,
)
from pipeline.lifecycle.gate import Policy, load_policy

log = logging.getLogger(__name__)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "NO_CHAMPION",
    "ChampionMoved",
    "RegistryError",
    "alias_version",
    "champion_history",
    "lineage",
    "list_versions",
    "promote",
    "register_candidate",
    "rollback",
]

# One registered-model tag per change of champion, ``champion_history.000001`` and on: MLflow stores a
# tag value in VARCHAR(5000) on PostgreSQL, which one growing JSON list outgrows after about twenty
# promotions, while one entry (its reason cut to REASON_MAX characters) always fits.
HISTORY_PREFIX = "champion_history."
LEGACY_HISTORY_TAG = "champion_history"  # the single JSON list of earlier releases, still read
REASON_MAX = 2000


class ChampionMoved(RegistryError):
    """The champion changed between the candidate's evaluation and its promotion."""


def _check_model(model_name: str) -> None:
    try:
        families.get(model_name)
    except families.UnknownFamily as exc:
        raise RegistryError(str(exc)) from None


# Registry ----------------------------------------------------------------------------------------


def register_candidate(paths: StatePaths, model_name: str, run_id: str):
    """Register the run's model as a version with lineage tags; ``challenger`` if it passed the gate.

    Idempotent: a run already registered returns its existing version (a retried task never
    registers a model twice), with any tag a killed attempt did not write completed.
    """
    import mlflow

    _check_model(model_name)
    client = mlflow_client(paths)
    run = client.get_run(run_id)
    decision = run.data.tags.get("gate.decision")
    if decision is None:
        raise RegistryError(f"run {run_id} has no gate decision; run the gate first")
    existing = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    mv = existing[0] if existing else mlflow.register_model(logged_model_uri(client, run_id), model_name)
    kill_point("register.created")
    # Written on every call, not only when the version is created: a task killed between the two
    # leaves a version without them, and its retry completes it.
    tags = {
        "dataset_version": run.data.tags.get("dataset_version", ""),
        "git_commit": run.data.tags.get("git_commit", ""),
        "run_id": run_id,
        "gate.decision": decision,
        "gate.reasons": run.data.tags.get("gate.reasons", ""),
        "gate.champion_version": run.data.tags.get("eval.champion_version", NO_CHAMPION),
        # Beside the decision: the digest every later load checks the model's files against.
        DIGEST_TAG: run.data.tags.get(DIGEST_TAG, ""),
    }
    if mv.tags.get("status") in (None, "", "challenger", "rejected"):  # never demote a champion or retiree
        tags["status"] = "challenger" if decision == "passed" else "rejected"
    tags.update({k: f"{v:.6g}" for k, v in run.data.metrics.items() if k.startswith(("eval_", "test_"))})
    for key, value in tags.items():
        if mv.tags.get(key) != value:
            client.set_model_version_tag(model_name, mv.version, key, value)
    kill_point("register.tagged")
    if decision == "passed":
        client.set_registered_model_alias(model_name, CHALLENGER, mv.version)
    log.info("%s version %s registered from run %s (gate %s)", model_name, mv.version, run_id, decision)
    return client.get_model_version(model_name, mv.version)


def _lock(paths: StatePaths, model_name: str):
    """One promotion or rollback at a time per model, in the backend every worker shares
    (``pipeline.core.locks``: PostgreSQL or Redis in production, a file on one machine)."""
    return shared_lock(paths, f"registry-{model_name}")


def champion_history(client, model_name: str) -> list[dict]:
    """Every change of champion, oldest first: ``{action, version, previous, by, reason, at, ...}``."""
    tags = client.get_registered_model(model_name).tags
    history = json.loads(tags.get(LEGACY_HISTORY_TAG, "[]"))
    history += [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(HISTORY_PREFIX))]
    return history


def _stack(history: list[dict]) -> list[str]:
    """The champions a rollback walks back through, replayed from the history."""
    stack: list[str] = []
    for entry in history:
        if entry["action"] == "rollback":
            stack = stack[:-1]
        else:
            stack.append(str(entry["version"]))
    return stack


def _record(client, model_name: str, entry: dict) -> None:
    """Append ``entry`` to the history: one new tag, never a rewrite of the earlier ones."""
    tags = client.get_registered_model(model_name).tags
    numbers = [int(k.removeprefix(HISTORY_PREFIX)) for k in tags if k.startswith(HISTORY_PREFIX)]
    entry = {**entry, "reason": str(entry.get("reason", ""))[:REASON_MAX]}
    client.set_registered_model_tag(model_name, f"{HISTORY_PREFIX}{max(numbers, default=0) + 1:06d}", json.dumps(entry))


def _finish_promotion(client, model_name: str, version: str, previous: str, by: str, reason: str, force: bool) -> None:
    """What follows the move of the alias: status tags and the history entry. Idempotent, so a
    promotion killed after moving the alias is completed by its retry."""
    history = champion_history(client, model_name)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    mv = client.get_model_version(model_name, version)
    if mv.tags.get("status") != "champion":
        client.set_model_version_tag(model_name, version, "status", "champion")
    # Every promotion stamps its own time and author (a version promoted again after a rollback
    # gets the new ones, as before this function existed).
    client.set_model_version_tag(model_name, version, "promoted_at", now)
    client.set_model_version_tag(model_name, version, "promoted_by", by)
    if previous != NO_CHAMPION and previous != version:
        client.set_model_version_tag(model_name, previous, "status", "retired")
    challenger = alias_version(client, model_name, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        client.delete_registered_model_alias(model_name, CHALLENGER)
    stack = _stack(history)
    if not stack or stack[-1] != version:
        _record(
            client,
            model_name,
            {
                "action": "promote",
                "version": version,
                "previous": previous,
                "by": by,
                "reason": reason,
                "at": now,
                "forced": force,
            },
        )


def promote(
    paths: StatePaths,
    model_name: str,
    version: str | None = None,
    expected_champion: str | None = "any",
    by: str | None = None,
    reason: str = "",
    force: bool = False,
    policy: Policy | None = None,
):
    """Make ``version`` (default: the ``challenger``) the champion.

    Args:
        expected_champion: the champion version the candidate was evaluated against (``"none"``
            when there was none); the promotion fails with ``ChampionMoved`` if the champion is
            another by now. ``"any"`` skips this check (a person promoting by hand).
        force: promote a version the gate rejected or whose Bento was not smoke-tested (a person
            overriding the gate; recorded).
        policy: the rules (default: the policy file); ``require_smoke_test`` is read from it.
    """
    _check_model(model_name)
    client = mlflow_client(paths)
    with _lock(paths, model_name):
        if version is None:
            challenger = alias_version(client, model_name, CHALLENGER)
            if challenger is None:
                raise NotRegistered(f"{model_name} has no challenger to promote; name a version")
            version = str(challenger.version)
        mv = client.get_model_version(model_name, str(version))
        if "gate.decision" not in mv.tags:
            raise RegistryError(
                f"{model_name} version {version} has no gate decision: its registration did not "
                f"finish; rerun `{command('register', '--model', model_name, '--run-id', mv.run_id)}`"
            )
        if mv.tags.get("gate.decision") != "passed" and not force:
            raise RegistryError(
                f"{model_name} version {version} was rejected by the gate "
                f"({mv.tags.get('gate.reasons', 'no reasons recorded')}); use --force to override"
            )
        if (
            (policy or load_policy(model_name)).require_smoke_test
            and mv.tags.get("smoke_test") != "passed"
            and not force
        ):
            state = mv.tags.get("smoke_test")
            why = (
                f"its smoke test failed: {mv.tags.get('smoke_test.reason', '')[:300]}"
                if state == "failed"
                else "it was never packaged and smoke-tested"
            )
            raise RegistryError(
                f"{model_name} version {version} cannot be champion: {why}; run "
                f"`{command('package', '--model', model_name, '--version', version)}` "
                f"(or --force to override)"
            )
        current = alias_version(client, model_name, CHAMPION)
        current_version = str(current.version) if current else NO_CHAMPION
        if (
            current is not None
            and str(current.version) != str(version)
            and not force
            and mv.tags.get("online_gate.decision") != "passed"
        ):
            from pipeline.lifecycle.monitor import load_monitoring_policy

            if load_monitoring_policy(model_name).require_online_evidence:
                why = mv.tags.get("online_gate.reasons") or "it has not been served beside the champion"
                hint = command("online-gate", "--model", model_name, "--dates", "YYYY-MM-DD")
                raise RegistryError(
                    f"{model_name} version {version} waits for online evidence (policy monitoring."
                    f"{model_name}.require_online_evidence): {why}; serve it in shadow or canary "
                    f"mode, then run `{hint}` (or --force to override)"
                )
        by, version = by or getpass.getuser(), str(version)
        if current_version == version:
            # Already champion. A retry of a promotion killed after it moved the alias finishes it
            # (the compare-and-set passed then: the alias moved from the champion it expected).
            stack = _stack(champion_history(client, model_name))
            if not stack or stack[-1] != version:
                _finish_promotion(
                    client,
                    model_name,
                    version,
                    stack[-1] if stack else NO_CHAMPION,
                    by,
                    reason or "recorded by a retry after an interrupted promotion",
                    force,
                )
            return client.get_model_version(model_name, version)
        if expected_champion != "any" and str(expected_champion) != current_version:
            raise ChampionMoved(
                f"{model_name}: the champion is version {current_version}, but version {version} "
                f"was evaluated against {expected_champion}; evaluate it again"
            )
        kill_point("promote.locked")
        client.set_registered_model_alias(model_name, CHAMPION, version)
        # Read back: a writer that bypassed the lock (a person in the MLflow UI) would show here.
        moved = alias_version(client, model_name, CHAMPION)
        if moved is None or str(moved.version) != version:
            raise ChampionMoved(
                f"{model_name}: the champion alias was set to {version} but reads "
                f"{moved.version if moved else 'nothing'}; another writer moved it"
            )
        kill_point("promote.alias_set")
        _finish_promotion(client, model_name, version, current_version, by, reason, force)
    log.info("%s: champion is now version %s (was %s)", model_name, version, current_version)
    return client.get_model_version(model_name, str(version))


def rollback(paths: StatePaths, model_name: str, by: str | None = None, reason: str = ""):
    """Move ``champion`` back to the version that was champion before the current one."""
    _check_model(model_name)
    client = mlflow_client(paths)
    with _lock(paths, model_name):
        current = alias_version(client, model_name, CHAMPION)
        stack = _stack(champion_history(client, model_name))
        if current is None or len(stack) < 2 or stack[-1] != str(current.version):
            raise NotRegistered(
                f"{model_name}: no previous champion to roll back to "
                f"(champion {current.version if current else 'none'}, history {stack})"
            )
        target = stack[-2]
        client.set_registered_model_alias(model_name, CHAMPION, target)
        by = by or getpass.getuser()
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        client.set_model_version_tag(model_name, current.version, "status", "rolled_back")
        client.set_model_version_tag(model_name, current.version, "rolled_back_by", by)
        client.set_model_version_tag(model_name, current.version, "rolled_back_reason", reason[:REASON_MAX])
        client.set_model_version_tag(model_name, target, "status", "champion")
        _record(
            client,
            model_name,
            {
                "action": "rollback",
                "version": target,
                "previous": str(current.version),
                "by": by,
                "reason": reason,
                "at": now,
            },
        )
    log.info("%s: rolled back from version %s to %s (%s)", model_name, current.version, target, reason)
    return client.get_model_version(model_name, target)


def lineage(paths: StatePaths, model_name: str, version: str | None = None, bento_tag: str | None = None) -> dict:
    """From a model version (default: the champion) or a Bento tag back to its run, data and code."""
    _check_model(model_name)
    client = mlflow_client(paths)
    if bento_tag is not None:
        found = client.search_model_versions(f"name = '{model_name}' and tags.bento_tag = '{bento_tag}'")
        if not found:
            raise NotRegistered(f"no {model_name} version was packaged as Bento {bento_tag}")
        mv = found[0]
    elif version is None:
        mv = alias_version(client, model_name, CHAMPION)
        if mv is None:
            raise NotRegistered(f"{model_name} has no champion; name a version")
    else:
        mv = client.get_model_version(model_name, str(version))
    run = client.get_run(mv.run_id)
    return {
        "model": model_name,
        "version": str(mv.version),
        "aliases": _aliases_by_version(client, model_name).get(str(mv.version), []),
        "status": mv.tags.get("status"),
        "run_id": mv.run_id,
        "experiment_id": run.info.experiment_id,
        "dataset_version": run.data.tags.get("dataset_version"),
        "dataset_path": run.data.tags.get("dataset_path"),
        "git_commit": run.data.tags.get("git_commit"),
        "bento_tag": mv.tags.get("bento_tag"),
        "gate_decision": mv.tags.get("gate.decision"),
        "gate_reasons": mv.tags.get("gate.reasons", "").splitlines(),
        "evaluated_against": mv.tags.get("gate.champion_version"),
        "split": {k.removeprefix("split."): v for k, v in run.data.params.items() if k.startswith("split.")},
        "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith(("eval_", "test_", "baseline_"))},
    }


def _aliases_by_version(client, model_name: str) -> dict[str, list[str]]:
    """Version -> its aliases. Model versions from a search do not carry their aliases on every
    backend; the registered model does."""
    held: dict[str, list[str]] = {}
    for alias, version in sorted((client.get_registered_model(model_name).aliases or {}).items()):
        held.setdefault(str(version), []).append(alias)
    return held


def list_versions(paths: StatePaths, model_name: str | None = None) -> list[dict]:
    """Every registered version with its aliases, status, gate decision and dataset version."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(paths)
    out = []
    for name in [model_name] if model_name else families.names():
        try:
            aliases = _aliases_by_version(client, name)
        except MlflowException:
            continue  # not registered yet
        for mv in client.search_model_versions(f"name = '{name}'"):
            out.append(
                {
                    "model": name,
                    "version": int(mv.version),
                    "aliases": aliases.get(str(mv.version), []),
                    "status": mv.tags.get("status"),
                    "gate": mv.tags.get("gate.decision"),
                    "dataset_version": (mv.tags.get("dataset_version") or "")[:12],
                    "run_id": mv.run_id,
                    "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(
                        timespec="seconds"
                    ),
                }
            )
    return sorted(out, key=lambda r: (r["model"], r["version"]))
