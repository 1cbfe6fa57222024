"""The strongest floor serves when no learned candidate clears the floors and there is no champion.

A shop must never end with no model for a family, and the rule a learned model failed to beat is
a model too (co-occurrence, the logistic regression). ``floor_run`` logs the baseline the gate
named (``Decision.strongest_floor``) as the family's own pyfunc (``ModelSpec.floor_model``) in a
run of its own, beside the candidate's: the candidate's dataset version, split and parameters, its
baselines' artifacts, and tags that say which candidate's gate made it the floor. That run is then
evaluated like any candidate (same rows, same baselines) and carries the gate's evidence as its
decision, so registration, packaging, the smoke test and promotion treat it like a model that
passed. A later learned candidate is compared with it as the champion, and with the floors, and
must beat both.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from pipeline import families
from pipeline.core.integrity import baseline_folder, record_model_digest
from pipeline.core.settings import StatePaths

FLOOR_TAG, FLOOR_OF_TAG = "shopml.floor", "shopml.floor_of_run"
# The floor's run takes over the candidate's tags (its dataset, features and code) but those of MLflow
# itself, of the candidate's own training, evaluation and gate, and of its DAG run (a rerun of the DAG
# run's training task must find the candidate, not the floor).
NOT_COPIED = ("mlflow.", "gate.", "eval.", "train.", "resume", "airflow.", "model.sha256", "baseline.sha256")


def floor_run(paths: StatePaths, model_name: str, candidate_run_id: str, floor: str, reasons: list[str]) -> str:
    """The run serving baseline ``floor`` instead of the rejected candidate ``candidate_run_id``:
    logged, evaluated and tagged as passed with the candidate's gate ``reasons`` as evidence. A
    retried call returns the run a first call finished."""
    import mlflow

    from pipeline.core.tracking import mlflow_client
    from pipeline.data.version import open_dataset
    from pipeline.lifecycle.evaluate import evaluate_candidate, run_data

    spec = families.get(model_name)
    if spec.floor_model is None:
        raise ValueError(f"model family {model_name!r} cannot serve a floor (ModelSpec.floor_model)")
    client = mlflow_client(paths)
    candidate = client.get_run(candidate_run_id)
    found = client.search_runs(
        [candidate.info.experiment_id],
        f"tags.`{FLOOR_OF_TAG}` = '{candidate_run_id}' and tags.`{FLOOR_TAG}` = '{floor}'",
    )
    done = [r for r in found if r.data.tags.get("gate.decision") == "passed"]
    if done:
        return done[0].info.run_id
    params, tags = dict(candidate.data.params), candidate.data.tags
    version, split = run_data(candidate)
    dataset = open_dataset(paths, version)
    with tempfile.TemporaryDirectory() as tmp:
        args = spec.floor_model(floor, dataset, split, params, Path(tmp), client, candidate_run_id)
        with mlflow.start_run(
            experiment_id=candidate.info.experiment_id, run_name=f"floor-{floor}-{version[:8]}"
        ) as run:
            mlflow.log_params({k: v for k, v in params.items() if k.startswith(("split.", "data."))})
            mlflow.set_tags(
                {
                    **{k: v for k, v in tags.items() if not k.startswith(NOT_COPIED)},
                    FLOOR_TAG: floor,
                    FLOOR_OF_TAG: candidate_run_id,
                }
            )
            mlflow.log_dict(split.to_dict(), "split.json")
            # The baselines the family's evaluation reads from a run (e.g. the propensity floors' files).
            if client.list_artifacts(candidate_run_id, "baseline"):  # none where baselines need no files
                baseline = baseline_folder(client, candidate_run_id, Path(tmp) / "copied")
                mlflow.log_artifacts(baseline, "baseline")
            mlflow.pyfunc.log_model(name="model", **args)
            run_id = run.info.run_id
    record_model_digest(client, run_id)
    evaluation = evaluate_candidate(paths, model_name, run_id)
    evidence = [
        f"PASS floor serves: {floor} is the strongest floor, and the learned candidate (run "
        f"{candidate_run_id}) did not clear it with confidence; it serves until a candidate beats it",
        *[f"  candidate {r}" for r in reasons],
    ]
    client.set_tag(run_id, "gate.decision", "passed")
    client.set_tag(run_id, "gate.reasons", "\n".join(evidence)[:4900])
    client.log_metric(run_id, "gate_passed", 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decision.json"
        path.write_text(
            json.dumps(
                {
                    "passed": True,
                    "floor": floor,
                    "candidate_run_id": candidate_run_id,
                    "reasons": evidence,
                    "metrics": evaluation.candidate.metrics,
                },
                indent=2,
                default=float,
            )
        )
        client.log_artifact(run_id, str(path), artifact_path="evaluation")
    return run_id
