"""What is loaded is what was trained: the SHA-256 of each logged model, recorded when training ends
and checked before every load.

A model here is an MLflow pyfunc, which MLflow unpickles (cloudpickle) when it loads it: whoever can
write the artifact store can make every process that loads a model run their code. So the training
run records the digest of its model's files as the run tag ``model.sha256`` as soon as the model is
logged (``record_model_digest``); registration copies it to the version's tags, beside the gate
decision; evaluation, packaging and serving each compute the digest of the files they are about to
load and refuse them when it differs (``IntegrityError``, naming both digests). The Bento carries
the digest in its model's metadata, and each service checks the files before loading them
(``pipeline.serving.common.load_pyfunc``).

A run's ``baseline/`` files (the floors the gate compares with, one of them a joblib pickle) are
recorded the same way (``baseline.sha256``) and read through ``baseline_file``.

The digest is of the folder: each file's path and the SHA-256 of its bytes, sorted by path, hashed
together, so a file changed, added, removed or renamed changes it. It does not protect against a
writer of the registry itself, who could change the tag too; MLflow's own authentication is that
protection.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.core.errors import Refused

DIGEST_TAG = "model.sha256"
BASELINE = "baseline"  # a run's floor files (artifacts), checked like its model
BASELINE_TAG = "baseline.sha256"
CHUNK = 1 << 20


class IntegrityError(Refused):
    """A model's files are not the files its training run recorded."""


def tree_digest(folder: Path | str) -> str:
    """The SHA-256 of a folder's files: each one's relative path and content digest, in path order."""
    folder = Path(folder)
    outer = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        inner = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                inner.update(chunk)
        outer.update(f"{path.relative_to(folder).as_posix()}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


def check_folder(folder: Path | str, expected: str | None, what: str) -> str:
    """``folder``'s digest when it is ``expected``; else ``IntegrityError`` naming ``what``."""
    if not expected:
        raise IntegrityError(
            f"{what}: no {DIGEST_TAG} is recorded for it, so its files cannot be checked and are not "
            "loaded; it was trained before digests were recorded: train it again"
        )
    found = tree_digest(folder)
    if found != expected:
        raise IntegrityError(
            f"{what}: its files at {folder} have sha256 {found}, but {expected} was recorded when it was "
            "trained; they were changed after training and are not loaded"
        )
    return found


def record_model_digest(client, run_id: str) -> str:
    """Tag the run with the digest of the model it logged (downloaded from the artifact store), and
    with that of its ``baseline/`` files when it has any (``BASELINE_TAG``)."""
    import tempfile

    import mlflow

    from pipeline.core.tracking import logged_model_uri

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(logged_model_uri(client, run_id), dst_path=str(Path(tmp) / "m"))
        digest = tree_digest(local)
        if client.list_artifacts(run_id, BASELINE):
            baseline = client.download_artifacts(run_id, BASELINE, str(Path(tmp) / "b"))
            client.set_tag(run_id, BASELINE_TAG, tree_digest(baseline))
    client.set_tag(run_id, DIGEST_TAG, digest)
    return digest


def baseline_file(client, run_id: str, name: str, dst: Path | str) -> str:
    """The local path of the run's ``baseline/<name>``, after the run's whole ``baseline/`` folder
    is downloaded and checked against the digest its training recorded. The floors' files are
    models too (LightGBM text, rules, a joblib pickle) and load like them: checked first."""
    return str(Path(baseline_folder(client, run_id, dst)) / name)


def baseline_folder(client, run_id: str, dst: Path | str) -> str:
    """The run's ``baseline/`` folder, downloaded into ``dst`` and checked (see ``baseline_file``)."""
    expected = client.get_run(run_id).data.tags.get(BASELINE_TAG)
    local = client.download_artifacts(run_id, BASELINE, str(dst))
    check_folder(local, expected, f"run {run_id}'s {BASELINE}/ files")
    return local


def download_checked(uri: str, expected: str | None, dst: Path | str, what: str) -> str:
    """The model at ``uri`` downloaded into ``dst`` and checked against ``expected``; its local path."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(dst))
    check_folder(local, expected, what)
    return local
