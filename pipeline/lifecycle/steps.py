"""The lifecycle of a model, one function per step, for every caller.

``features -> train -> evaluate -> gate -> register -> package -> promote``

The Airflow tasks (``dags/retrain_models.py``) and the command line (``python -m pipeline
retrain``, or one step at a time) call these same functions, so the two can never diverge. Each
step takes what the step before returned (a small JSON-able dict: an XCom, typed below as
that step's ``TypedDict``) and returns it with what it adds; each prints the lines a person
reads in the task log or the terminal.

Each step works on the references it is handed: the dataset version (resolved once, by the first
step or by the caller), the run, the model version. Nothing reads "the current" anything after
the first step, so a rerun of any step does what it did the first time.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import NotRequired, TypedDict

from pipeline import families
from pipeline.core.hints import command
from pipeline.core.settings import StatePaths
from pipeline.core.tracking import NO_CHAMPION


class CandidateRejected(Exception):
    """The gate rejected the candidate: packaging and promotion do not apply."""


# What each step hands the next (an Airflow XCom): each adds its keys to the one before's.


class Built(TypedDict):
    model: str
    features: str  # the feature set's folder
    features_rel: str  # the same, relative to SHOPML_HOME (for a worker with another home)
    dataset_version: str


class Trained(Built):
    run_id: str


class Evaluated(Trained):
    champion_version: str | None


class Gated(Evaluated):
    passed: bool
    reasons: list[str]
    candidate_run_id: NotRequired[str]  # the strongest floor serves: the rejected candidate's run
    floor: NotRequired[str]  # ... and the floor's name (run_id is then the floor's run)


class Registered(Gated):
    version: str


class Packaged(Registered):
    bento_tag: str


class Promoted(Packaged):
    champion: str
    waiting_for_online_evidence: NotRequired[bool]


# Dataset version of a scheduled run ------------------------------------------------------------------


def pinned_dataset_version(paths: StatePaths, dag_id: str, run_id: str, announced: str | None = None) -> str:
    """The dataset version a DAG run works on, fixed the first time it is asked.

    ``announced`` is the version the run's triggering Asset event carries (``ingest_events``
    publishes it); a run with none (the weekly schedule, a manual trigger) takes the current version.
    Either is written to ``$SHOPML_HOME/runs/<dag>/<run>.json`` once; every later call for the same
    run (a retry, a cleared and rerun task, after newer days were published) returns it.

    Raises:
        FileNotFoundError: no event names a version and none has been published yet.
    """
    from pipeline.data.version import resolve_dataset_version

    pin = paths.home / "runs" / dag_id / (re.sub(r"[^A-Za-z0-9_.+-]", "_", run_id) + ".json")
    if pin.exists():
        return json.loads(pin.read_text())["dataset_version"]
    version = resolve_dataset_version(paths, announced).version
    pin.parent.mkdir(parents=True, exist_ok=True)
    tmp = pin.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps(
            {
                "dag_id": dag_id,
                "run_id": run_id,
                "dataset_version": version,
                "source": "asset event" if announced else "current at the run's first task",
            }
        )
    )
    try:
        os.link(tmp, pin)  # first writer wins; a concurrent one reads the winner's
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return json.loads(pin.read_text())["dataset_version"]


# The steps -----------------------------------------------------------------------------------------


def features(paths: StatePaths, params, model: str, dataset_version: str | None = None) -> Built:
    """Build (or reuse) the model's feature set of ``dataset_version`` (default: the current one)."""
    from pipeline.families.featureset import build_features

    spec = families.get(model)
    fs = build_features(paths, model, spec.params(params), dataset_version)
    print(f"{'reused' if fs.reused else 'built'} the {model} feature set of dataset {fs.dataset_version}: {fs.path}")
    return Built(
        model=model,
        features=str(fs.path),
        features_rel=str(fs.path.relative_to(paths.home)),
        dataset_version=fs.dataset_version,
    )


def train(
    paths: StatePaths, params, model: str, built: Built, tags: dict[str, str] | None = None, nproc: int = 1
) -> Trained:
    """Train on the feature set ``built`` names. With ``tags`` (the DAG run's), a finished run that
    carries them is returned instead of training a second model for the same DAG run; a killed one
    resumes from its checkpoint. ``nproc`` > 1 trains with torchrun (DDP)."""
    from pipeline.families.training import finished_run, train_distributed

    spec = families.get(model)
    outcome = finished_run(paths, model, tags) if tags else None
    if outcome is not None:
        print(f"this DAG run already trained run {outcome.run_id}; reusing it")
    elif nproc > 1:
        print(f"training with torchrun on {nproc} processes")
        outcome = train_distributed(paths, model, nproc, Path(built["features"]), tags)
    else:
        outcome = spec.train(paths, spec.params(params), tags, features=Path(built["features"]))
    _ensure_digest(paths, outcome.run_id)
    print(f"run {outcome.run_id} on dataset {outcome.dataset_version}: model {outcome.model_uri}")
    for name, value in sorted(outcome.metrics.items()):
        print(f"  {name} = {value:.4f}")
    return Trained(**{**built, "run_id": outcome.run_id, "dataset_version": outcome.dataset_version})


def _ensure_digest(paths: StatePaths, run_id: str) -> None:
    """The digest every later load checks (``pipeline.core.integrity``), for a family whose training
    does not record it itself (the families here do, in ``tracked_training``)."""
    from pipeline.core.integrity import DIGEST_TAG, record_model_digest
    from pipeline.core.tracking import mlflow_client

    client = mlflow_client(paths)
    if not client.get_run(run_id).data.tags.get(DIGEST_TAG):
        record_model_digest(client, run_id)


def evaluate(paths: StatePaths, model: str, trained: Trained, dataset_version: str | None = None) -> Evaluated:
    """Score the run's model, the champion and the baselines on the run's own test rows (cut from
    ``dataset_version`` instead, at the run's split points, when given)."""
    from pipeline.lifecycle.evaluate import evaluate_candidate

    ev = evaluate_candidate(paths, model, trained["run_id"], dataset_version)
    print(f"champion: {'version ' + ev.champion_version if ev.champion_version else 'none yet'}")
    for side, scores in (("candidate", ev.candidate), ("champion", ev.champion), *ev.baselines.items()):
        if scores is not None:
            print(f"  {side}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(scores.metrics.items())))
    for side, figures in (ev.session_figures or {}).items():
        print(
            f"  {side}, online protocol on the test period's sessions: "
            + ", ".join(f"{k} {v:.4f}" for k, v in sorted(figures.items()))
        )
    return Evaluated(**{**trained, "champion_version": ev.champion_version})


def gate(paths: StatePaths, model: str, evaluated: Evaluated, policy=None) -> Gated:
    """Apply the policy (default: ``policy.yaml``'s section of the model) to the evaluation."""
    from pipeline.lifecycle.gate import gate_candidate

    decision = gate_candidate(paths, model, evaluated["run_id"], policy)
    print(f"{model} {decision.summary()}")
    state = Gated(**{**evaluated, "passed": decision.passed, "reasons": decision.reasons})
    if decision.strongest_floor and families.get(model).floor_model is not None:
        # No champion and a candidate that did not clear its floors: the strongest floor serves.
        from pipeline.lifecycle.floors import floor_run

        run_id = floor_run(paths, model, evaluated["run_id"], decision.strongest_floor, decision.reasons)
        print(
            f"{model} floor serves: {decision.strongest_floor} (run {run_id}) becomes the candidate instead of "
            f"run {evaluated['run_id']}, so the model has a champion; a learned candidate must beat it"
        )
        state.update(
            {
                "run_id": run_id,
                "passed": True,
                "candidate_run_id": evaluated["run_id"],
                "floor": decision.strongest_floor,
            }
        )
    return state


def register(paths: StatePaths, model: str, gated: Gated) -> Registered:
    """Register the run's model as a version (``challenger`` if it passed the gate); when the floor
    serves instead of a rejected candidate, the candidate first (rejected), then the floor."""
    from pipeline.lifecycle.registry import register_candidate

    if gated.get("candidate_run_id"):  # the floor serves: the rejected candidate is registered first, as such
        rejected = register_candidate(paths, model, gated["candidate_run_id"])
        print(f"{model} version {rejected.version}: {rejected.tags.get('status')}")
    mv = register_candidate(paths, model, gated["run_id"])
    print(f"{model} version {mv.version}: {mv.tags.get('status')}")
    return Registered(**{**gated, "version": str(mv.version)})


def package(
    paths: StatePaths,
    model: str,
    registered: Registered,
    requests: int | None = None,
    dataset_version: str | None = None,
    policy=None,
) -> Packaged:
    """Package the registered version (``registered["version"]``; None: the ``challenger``) as a
    Bento with the feature snapshot of the dataset version it was trained on (or
    ``dataset_version``), then serve it and check parity with its evaluation, unless the policy
    says ``require_smoke_test: false`` (then the Bento is built, and not started).

    Raises:
        CandidateRejected: the gate rejected the version in this chain (nothing to package).
    """
    from pipeline.lifecycle.gate import load_policy
    from pipeline.serving.package import PARITY_REQUESTS
    from pipeline.serving.package import package as package_version

    if registered.get("passed") is False:
        reasons = "\n  ".join(registered["reasons"])
        raise CandidateRejected(f"{model} version {registered['version']} rejected by the gate:\n  {reasons}")
    version = registered.get("version")
    smoke = (policy or load_policy(model)).require_smoke_test
    packaged = package_version(
        paths,
        model,
        None if version is None else str(version),
        requests=requests or PARITY_REQUESTS,
        dataset_version=dataset_version,
        smoke=smoke,
    )
    if smoke and packaged.smoke is not None:
        for check in packaged.smoke.checks:
            print(f"  {check}")
        print(f"{model} version {packaged.version}: Bento {packaged.bento_tag} passed its smoke test")
    else:
        print(
            f"{model} version {packaged.version}: Bento {packaged.bento_tag} built; smoke test skipped "
            f"(policy require_smoke_test: false)"
        )
    return Packaged(**{**registered, "version": packaged.version, "bento_tag": packaged.bento_tag})


def promote(paths: StatePaths, model: str, packaged: Packaged, by: str = "pipeline", policy=None) -> Promoted:
    """Make the packaged version champion, provided the champion is still the one it was evaluated
    against (else ``ChampionMoved``)."""
    from pipeline.lifecycle.monitor import load_monitoring_policy
    from pipeline.lifecycle.registry import promote as promote_version

    if packaged["champion_version"] and load_monitoring_policy(model).require_online_evidence:
        # The challenger stays challenger until its online figures say it is not worse (monitor).
        print(
            f"{model}: version {packaged['version']} is the challenger and waits for online evidence; serve "
            f"it beside the champion (`{command('serve', '--model', model, '--challenger-mode', 'shadow')}`), "
            f"then `{command('monitor', '--model', model, '--date', 'YYYY-MM-DD')}` each day it served, "
            f"`{command('online-gate', '--model', model, '--dates', 'YYYY-MM-DD,YYYY-MM-DD')}` and "
            f"`{command('promote', '--model', model)}`"
        )
        return Promoted(
            **{**packaged, "champion": str(packaged["champion_version"]), "waiting_for_online_evidence": True}
        )
    mv = promote_version(
        paths,
        model,
        packaged["version"],
        expected_champion=packaged["champion_version"] or NO_CHAMPION,
        by=by,
        reason=f"passed the gate and packaging as {packaged['bento_tag']} (run {packaged['run_id']})",
        policy=policy,
    )
    print(f"{model}: champion is now version {mv.version}, served by Bento {packaged['bento_tag']}")
    return Promoted(**{**packaged, "champion": str(mv.version)})


def after_training(
    paths: StatePaths, model: str, trained: Trained, policy=None, by: str = "pipeline"
) -> Registered | Promoted:
    """Evaluate, gate, register, package and promote a trained run (``trained["run_id"]``), in that
    order; a candidate the gate rejects stops after register, with the reasons printed."""
    state = register(paths, model, gate(paths, model, evaluate(paths, model, trained), policy))
    try:
        state = package(paths, model, state, policy=policy)
    except CandidateRejected as rejected:
        print(
            str(rejected).splitlines()[0].rstrip(":")
            + "; the champion stays "
            + (f"version {state['champion_version']}" if state["champion_version"] else "unset")
        )
        return state
    return promote(paths, model, state, by, policy)


def retrain(
    paths: StatePaths,
    params,
    model: str,
    dataset_version: str | None = None,
    policy=None,
    tags: dict[str, str] | None = None,
    by: str = "pipeline",
) -> Registered | Promoted:
    """Every step in order, as the retrain DAG runs them, on ``dataset_version`` (default: the
    current one, resolved once by the features step)."""
    trained = train(paths, params, model, features(paths, params, model, dataset_version), tags)
    return after_training(paths, model, trained, policy, by)
