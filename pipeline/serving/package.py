"""Package a registry model version as a Bento, start it, check it, and record the result.

``package`` does, for one version (default: the ``challenger``):

1. imports the MLflow model into the Bento store (``bentoml.mlflow.import_model``) as
   ``<model>:v<version>-<run>``, and the feature snapshot of the dataset version the model was
   trained on (its run's ``dataset_version``) as ``shopml-features:<dataset hash>`` (both once: a
   retried task reuses them), so a version packaged after newer days were published still serves
   the features its model learned from; and what the family's service precomputes per known user
   (``ModelSpec.serving_states``: the recommender's user states) as
   ``shopml-user-states:<model version>.<snapshot>``;
2. builds the Bento ``shopml-<model>:v<version>-<run>`` with the service code (``pipeline/``,
   ``models/``) and a pinned Python environment: the serving packages and their dependencies at
   the versions installed here, which ``requirements.lock`` fixed;
3. smoke-tests it: ``bentoml serve`` on a free loopback port, readiness, metadata, a malformed request
   (must be a 4xx), the family's own checks (``ModelSpec.smoke_checks``), then the **parity check**
   (``ModelSpec.parity``): the offline evaluation's own
   requests (``evaluation/predictions.parquet`` of the version's run) replayed against the server,
   whose answers must match what was evaluated (the same top-k, probabilities within a tolerance),
   and, for families served by user id (``ModelSpec.user_parity``), requests by user id (snapshot
   lookups, packaged user states, the purchased-item filter) against the answers computed offline
   from the training features of the same users: a skewed snapshot fails here;
4. writes ``bento_tag`` and ``smoke_test`` (``passed`` or ``failed`` with the reason) to the model
   version. ``pipeline.lifecycle.registry.promote`` refuses a version whose smoke test did not pass (policy
   ``require_smoke_test``).

The Bento store lives in ``$BENTOML_HOME`` (default ``$SHOPML_HOME/bentoml``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import families
from pipeline.core.errors import Refused
from pipeline.core.faults import kill_point
from pipeline.core.hints import command
from pipeline.core.settings import PROCESS_DEFAULTS, StatePaths
from pipeline.core.tracking import (
    CHALLENGER,
    CHAMPION,
    PREDICTIONS,
    REPO_ROOT,
    NotRegistered,
    RegistryError,
    mlflow_client,
    model_version,
)

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per smoke-test request is noise

# What the served process imports; their dependencies are pinned with them.
# s3fs: a served container logs its answers to S3 (SHOPML_PREDICTION_LOG=s3://...), where monitoring reads them.
SERVING_PACKAGES = (
    "bentoml",
    "mlflow",
    "torch",
    "polars",
    "pandas",
    "numpy",
    "pyarrow",
    "pydantic",
    "pyyaml",
    "s3fs",
)
STATES_MODEL = "shopml-user-states"  # what a family's service precomputes per known user (ModelSpec.serving_states)
SCORE_TOLERANCE = 1e-4  # |served - evaluated| for scores and probabilities (float32 models)
PARITY_REQUESTS = 300  # offline requests replayed (all of them when fewer)


class ServingError(Refused):
    """Packaging, starting or checking a Bento failed; the message says what and where."""


class ParityError(ServingError):
    """The served model's answers differ from the offline evaluation's."""


def use_bento_home(paths: StatePaths) -> Path:
    """Point BentoML at the project's store (before BentoML is imported; an explicit
    ``BENTOML_HOME`` wins)."""
    os.environ.setdefault("BENTOML_HOME", str(paths.home / "bentoml"))
    return Path(os.environ["BENTOML_HOME"])


def bento_name(model_name: str) -> str:
    return "shopml-" + model_name.replace("_", "-")


# Build ---------------------------------------------------------------------------------------------


def pinned_requirements(roots: tuple[str, ...] = SERVING_PACKAGES) -> list[str]:
    """``name==version`` for the roots and everything they need, as installed (the lock file's pins).

    Not a resolver: the environment is already resolved; this walks its installed metadata.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in pins:
            continue
        try:
            dist = importlib_metadata.distribution(name)
        except importlib_metadata.PackageNotFoundError:
            continue  # an optional dependency that is not installed here
        pins[name] = dist.version.split("+")[0]  # torch 2.13.0+cpu -> 2.13.0, as in requirements.lock
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


# The locks a Bento's container installs from: PyPI's files by their hashes (torch's CUDA build and
# its runtime from requirements-torch.lock; the CPU build's lock names a file only this machine has).
LOCKS = ("requirements.lock", "requirements-torch.lock")


def lock_entries(path: Path) -> dict[str, tuple[str, str]]:
    """A hashed lock's entries: each package's normalised name -> (its locked version, its whole entry
    as the lock writes it: ``name==version [; marker] \\`` and its ``--hash`` lines)."""
    from packaging.utils import canonicalize_name

    entries: dict[str, tuple[str, str]] = {}
    for block in re.split(r"\n(?=\S)", path.read_text()):
        match = re.match(r"([A-Za-z0-9._-]+)==([^\s;\\]+)", block)
        if match:  # not the header's comments
            entries[canonicalize_name(match[1])] = (match[2], block.rstrip())
    return entries


def hashed_requirements(pins: list[str], root: Path = REPO_ROOT) -> str | None:
    """``pins`` (``name==version``) as the locks' hashed entries: a requirements file that puts pip in
    hash-checking mode, so the container installs these files or fails. With torch, its runtime
    (requirements-torch.lock's other entries, under their markers). None where the locks are not
    beside the code (a wheel install): then the Bento keeps the plain pins and the log says so.

    Not BentoML's own option: its requirements file gets an unhashed ``bentoml==`` line appended,
    which makes pip refuse the whole file in hash-checking mode; the file is written after the build.
    """
    from packaging.utils import canonicalize_name

    if not all((root / name).exists() for name in LOCKS):
        return None
    main, torch = (lock_entries(root / name) for name in LOCKS)
    locked = {**main, **torch}
    wanted = {canonicalize_name(pin.split("==")[0]): pin.split("==")[1] for pin in pins}
    missing = sorted(n for n in wanted if n not in locked)
    stale = sorted(f"{n} {v} (locked: {locked[n][0]})" for n, v in wanted.items() if n in locked and locked[n][0] != v)
    if missing or stale:
        raise ServingError(
            f"the serving environment differs from {LOCKS[0]}: not in it {missing}, other versions {stale}; "
            "run make install (or make lock after changing a dependency)"
        )
    names = sorted(set(wanted) | (set(torch) if "torch" in wanted else set()))
    header = f"# The serving packages by the hashes of {' and '.join(LOCKS)}: pip installs these files or fails.\n"
    return header + "\n".join(locked[n][1] for n in names) + "\n"


@dataclass
class Packaged:
    model_name: str
    version: str
    bento_tag: str
    model_tag: str
    snapshot_tag: str
    smoke: SmokeReport | None = None


def _import_model(model_name: str, mv, tag: str) -> None:
    import bentoml
    from bentoml.exceptions import NotFound

    from pipeline.core.integrity import DIGEST_TAG, check_folder, download_checked

    what = f"{model_name} version {mv.version}"
    try:
        existing = bentoml.models.get(tag)
        check_folder(Path(existing.path) / "mlflow_model", mv.tags.get(DIGEST_TAG), f"{what}, in the Bento store")
        return
    except NotFound:
        pass
    # The registry's files, checked against the digest its training run recorded, are what is imported.
    with tempfile.TemporaryDirectory() as tmp:
        # The version's source (its logged model), not models:/name/version: MLflow adds a file of
        # its own (registered_model_meta) to a download by name, which training never wrote.
        local = download_checked(mv.source, mv.tags.get(DIGEST_TAG), tmp, what)
        bentoml.mlflow.import_model(
            tag,
            local,
            labels={"registry_model": model_name, "registry_version": str(mv.version)},
            metadata={
                "run_id": mv.run_id,
                "dataset_version": mv.tags.get("dataset_version", ""),
                "model_sha256": mv.tags[DIGEST_TAG],
            },
        )
    check_folder(Path(bentoml.models.get(tag).path) / "mlflow_model", mv.tags[DIGEST_TAG], f"{what}, imported")


def _snapshot(paths: StatePaths, spec, dataset_version: str) -> tuple[str, str]:
    """The feature snapshot of ``dataset_version``: (Bento model tag, full dataset version).

    Raises:
        UnknownDatasetVersion: the version cannot be restored (the message says how to restore it).
    """
    import bentoml
    from bentoml.exceptions import NotFound

    from pipeline.data.version import open_dataset
    from pipeline.serving.snapshot import SNAPSHOT_FORMAT, snapshot_model, write_snapshot

    dataset = open_dataset(paths, dataset_version)
    tag = f"{snapshot_model(spec.name)}:{re.sub(r'[^a-z0-9_.-]', '', dataset.version.lower())[:32]}.f{SNAPSHOT_FORMAT}"
    try:
        bentoml.models.get(tag)
    except NotFound:
        with bentoml.models.create(tag, labels={"dataset_version": dataset.version}) as model:
            meta = write_snapshot(spec.snapshot_tables, dataset.path, dataset.version, Path(model.path))
            log.info("feature snapshot %s: %d users, cutoff %s", tag, meta["users"], meta["cutoff"])
    return tag, dataset.version


def user_states(spec, model_tag: str, snapshot_tag: str) -> str | None:
    """The Bento model of what the family's service precomputes per known user of the snapshot
    (``ModelSpec.serving_states``), made once per model and snapshot; None for a family without."""
    if spec.serving_states is None:
        return None
    import bentoml
    from bentoml.exceptions import NotFound

    from pipeline.serving.snapshot import FeatureSnapshot

    tag = f"{STATES_MODEL}:{model_tag.split(':')[1]}.{snapshot_tag.split(':')[1]}"
    try:
        bentoml.models.get(tag)
        return tag
    except NotFound:
        pass
    from pipeline.serving.common import load_pyfunc

    python_model = load_pyfunc(model_tag).unwrap_python_model()
    snapshot = FeatureSnapshot.load(bentoml.models.get(snapshot_tag).path)
    with bentoml.models.create(
        tag, labels={"model": model_tag.replace(":", "_"), "snapshot": snapshot_tag.replace(":", "_")}
    ) as model:
        meta = spec.serving_states(python_model, snapshot, Path(model.path))
    log.info("user states %s: %d users in %.1f s", tag, meta["users"], meta["seconds"])
    return tag


def build_bento(
    paths: StatePaths, model_name: str, version: str | None = None, dataset_version: str | None = None
) -> Packaged:
    """Import the version and the feature snapshot of the dataset version it was trained on (or of
    ``dataset_version``) into the Bento store and build its Bento (idempotent)."""
    use_bento_home(paths)
    import bentoml
    from bentoml.exceptions import NotFound

    spec = families.get(model_name)
    client = mlflow_client(paths)
    mv = model_version(client, model_name, version, CHALLENGER)
    run = client.get_run(mv.run_id)
    trained_on = run.data.tags.get("dataset_version")
    if not (dataset_version or trained_on):
        raise RegistryError(
            f"{model_name} version {mv.version} (run {mv.run_id}) records no dataset version; "
            "its features cannot be packaged"
        )
    suffix = f"v{mv.version}-{mv.run_id[:8]}"
    model_tag, bento_tag = f"{model_name}:{suffix}", f"{bento_name(model_name)}:{suffix}"
    _import_model(model_name, mv, model_tag)
    snapshot_tag, dataset_version = _snapshot(paths, spec, dataset_version or trained_on)
    states_tag = user_states(spec, model_tag, snapshot_tag)
    try:
        existing = bentoml.bentos.get(bento_tag)
        if (existing.info.args.get("snapshot_tag"), existing.info.args.get("states_tag")) == (snapshot_tag, states_tag):
            return Packaged(model_name, str(mv.version), bento_tag, model_tag, snapshot_tag)
        bentoml.bentos.delete(bento_tag)  # built by an older release or on another snapshot: rebuild
    except NotFound:
        pass
    args = {
        "model_name": model_name,
        "model_tag": model_tag,
        "snapshot_tag": snapshot_tag,
        **({"states_tag": states_tag} if states_tag else {}),
        "version": str(mv.version),
        "run_id": mv.run_id,
        "dataset_version": run.data.tags.get("dataset_version", "unknown"),
        "git_commit": run.data.tags.get("git_commit", "unknown"),
        "bento_tag": bento_tag,
    }
    bento_tag = build(
        args,
        spec.service,
        labels={
            "registry_model": model_name,
            "registry_version": str(mv.version),
            "features_dataset_version": dataset_version[:63],
        },
        description=f"{model_name} version {mv.version} (run {mv.run_id}), features of dataset {dataset_version}",
    )
    return Packaged(model_name, str(mv.version), bento_tag, model_tag, snapshot_tag)


def build(args: dict[str, str], service: str, labels: dict[str, str] | None = None, description: str = "") -> str:
    """Build the Bento of ``service`` (``module:Class``) with ``args`` (``common.ARG_NAMES``; the
    models already in the store); its tag."""
    import bentoml

    # The type bentoml.bentos.build's ``envs`` takes (its signature names it; no public alias).
    from bentoml._internal.bento.build_config import BentoEnvSchema

    name, version = args["bento_tag"].split(":")
    # BentoML imports the service to build it, and the service reads its build arguments (the model
    # tags it declares) when its module is imported: a module left from an earlier build in this
    # process would declare that build's models. Imported afresh, it declares these.
    sys.modules.pop(service.split(":")[0], None)
    pins = pinned_requirements()
    hashed = hashed_requirements(pins)
    bento = bentoml.bentos.build(
        service,
        name=name,
        version=version,
        build_ctx=str(REPO_ROOT),
        include=["pipeline/**/*.py", "models/**/*.py"],
        exclude=["**/__pycache__"],
        python={"packages": pins, "lock_packages": False},
        labels=labels or {},
        description=description,
        args=args,
        # The project's process defaults (MLflow's telemetry off) as the container's environment:
        # a service imports mlflow with its family, before any of our code could set them.
        envs=[BentoEnvSchema(name=name, value=value) for name, value in PROCESS_DEFAULTS.items()],
    )
    if hashed is None:
        log.warning("no %s beside the code: the Bento %s pins versions without hashes", LOCKS[0], bento.tag)
    else:  # what the container's install.sh reads
        Path(bento.path_of("env/python/requirements.txt")).write_text(hashed)
    log.info("built Bento %s", bento.tag)
    return str(bento.tag)


def resolve_bento(
    paths: StatePaths, model_name: str, version: str | None = None, bento_tag: str | None = None, alias: str = CHAMPION
) -> str:
    """The Bento to serve: a given tag, or the one a version (default: the one ``alias`` names) was
    packaged as."""
    if bento_tag:
        return bento_tag
    mv = model_version(mlflow_client(paths), model_name, version, alias)
    tag = mv.tags.get("bento_tag")
    if not tag:
        raise NotRegistered(
            f"{model_name} version {mv.version} was never packaged; run "
            f"`{command('package', '--model', model_name, '--version', mv.version)}`"
        )
    return tag


# Serve ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_hint(model_name: str, bento_tag: str) -> str:
    """The command a person runs to serve this Bento (``make serve`` wraps the same)."""
    return command("serve", "--model", model_name, "--bento-tag", bento_tag, "--port", 3000)


def serve_command(bento_tag: str, port: int, host: str = "127.0.0.1") -> list[str]:
    return [str(Path(sys.executable).with_name("bentoml")), "serve", bento_tag, "--host", host, "--port", str(port)]


def server_environment(paths: StatePaths, bento_home: Path) -> dict[str, str]:
    """The environment a served Bento of ``paths`` starts with: the caller's, with its state folder
    (``SHOPML_HOME``: where the answers are logged, ``$SHOPML_HOME/predictions``, and where fraud
    keeps the orders it scored) and the Bento store. Without ``SHOPML_HOME`` a service logs no
    answers, and a relative default would resolve in the Bento's own folder."""
    return {
        **os.environ,
        "SHOPML_HOME": str(paths.home),
        "BENTOML_HOME": str(bento_home),
        "BENTOML_DO_NOT_TRACK": "true",
    }


@contextmanager
def served(
    paths: StatePaths,
    bento_tag: str,
    env: dict[str, str] | None = None,
    startup_s: float = 240,
    log_path: Path | None = None,
    port: int | None = None,
    api_keys: Path | None = None,
) -> Iterator[str]:
    """A real ``bentoml serve`` process of the Bento on a free loopback port; yields its base URL.

    Waits for ``/readyz``; the process (and its workers) is stopped on exit. A process that dies or
    never gets ready raises ``ServingError`` with the end of its log. It checks the API keys of
    ``api_keys`` (a keys file, ``pipeline.serving.auth``); without one it checks none
    (``SHOPML_AUTH=off``): it listens on loopback only, for this process's own calls (tests,
    benchmarks, the packaging smoke test, a replay).
    """

    home = use_bento_home(paths)
    chosen = port
    auth = {"SHOPML_API_KEYS": str(api_keys), "SHOPML_AUTH": "on"} if api_keys else {"SHOPML_AUTH": "off"}
    full_env = {**server_environment(paths, home), **auth, **(env or {})}
    # A port found free can be taken before the server binds it (BentoML reserves ports of its own
    # for its workers the same way): on "Address already in use" at startup, another port, twice.
    for attempt in range(3):
        port = chosen or free_port()
        log_path_now = log_path or paths.home / "serving" / f"{bento_tag.replace(':', '-')}-{port}.log"
        proc, url = _start(bento_tag, port, full_env, log_path_now)
        try:
            _wait_ready(proc, url, bento_tag, startup_s, log_path_now)
            break
        except ServingError:
            _stop(proc)
            if chosen or attempt == 2 or "Address already in use" not in _tail(log_path_now, 200):
                raise
    try:
        yield url
    finally:
        _stop(proc)


def _start(bento_tag: str, port: int, env: dict, log_path: Path) -> tuple[subprocess.Popen, str]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            serve_command(bento_tag, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen, url: str, bento_tag: str, startup_s: float, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + startup_s
    while True:
        if proc.poll() is not None:
            raise ServingError(f"`bentoml serve {bento_tag}` exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ServingError(f"`bentoml serve {bento_tag}` not ready after {startup_s:.0f} s:\n{_tail(log_path)}")
        time.sleep(0.5)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the process that started it dies (Linux), so a
    packaging task killed mid smoke test (SIGKILL runs no ``finally``) leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# Smoke test and parity -----------------------------------------------------------------------------


@dataclass
class SmokeReport:
    bento_tag: str
    version: str
    requests: int
    mismatches: int
    max_abs_diff: float
    p50_ms: float
    p95_ms: float
    checks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def offline_predictions(paths: StatePaths, model_name: str, version: str) -> pd.DataFrame:
    """What the version answered in its offline evaluation (``evaluation/predictions.parquet``)."""
    client = mlflow_client(paths)
    mv = client.get_model_version(model_name, str(version))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(mv.run_id, f"evaluation/{PREDICTIONS}", tmp)
        except Exception as exc:
            raise RegistryError(
                f"{model_name} version {version} (run {mv.run_id}) has no evaluation/{PREDICTIONS}; "
                f"evaluate it first: {exc}"
            ) from None
        return pd.read_parquet(path)


def _spread(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` rows spread evenly over the frame (all when fewer)."""
    if len(frame) <= n:
        return frame.reset_index(drop=True)
    return frame.iloc[np.linspace(0, len(frame) - 1, n).astype(int)].reset_index(drop=True)


def _post(client, url: str, body) -> tuple[dict, float]:
    start = time.perf_counter()
    response = client.post(url, json=body)
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise ServingError(f"POST {url} answered {response.status_code}: {response.text[:500]}")
    return response.json(), elapsed


def smoke_test(
    paths: StatePaths, model_name: str, version: str, bento_tag: str, requests: int = PARITY_REQUESTS
) -> SmokeReport:
    """Serve ``bento_tag`` and check it answers like ``version`` did in its offline evaluation.

    Raises:
        ParityError: answers differ (top-k items, or scores beyond ``SCORE_TOLERANCE``).
        ServingError: the server does not start, a check fails, or bad input is not a 4xx.
        IntegrityError: the Bento's model files are not the ones packaging recorded.
    """
    import bentoml
    import httpx

    from pipeline.data.version import open_dataset
    from pipeline.serving.common import check_bento_model

    # The files first (as each worker will): a changed model is refused at once, not after the
    # server's workers have failed to start until the start-up deadline.
    check_bento_model(bentoml.bentos.get(bento_tag).info.args["model_tag"])
    spec = families.get(model_name)
    expected = _spread(offline_predictions(paths, model_name, version), requests * spec.parity_rows)
    checks = []
    # One worker is enough to check answers, and starts in half the time on a small task machine.
    # The smoke test's requests are not the shop's traffic: nothing of them goes to the prediction log,
    # and a service that keeps state from its requests keeps none (SHOPML_SMOKE_TEST).
    smoke_env = {
        "SHOPML_API_WORKERS": os.environ.get("SHOPML_SMOKE_WORKERS", "1"),
        "SHOPML_PREDICTION_LOG": "off",
        "SHOPML_SMOKE_TEST": "1",
    }
    with (
        served(paths, bento_tag, env=smoke_env) as url,
        httpx.Client(timeout=60) as client,
    ):

        def post(endpoint: str, body) -> tuple[dict, float]:
            return _post(client, f"{url}/{endpoint}", body)

        meta, _ = post("metadata", {})
        kill_point("package.serving")
        if meta["version"] != str(version) or meta["bento_tag"] != bento_tag:
            raise ServingError(
                f"{bento_tag} says it serves version {meta['version']} ({meta['bento_tag']}), "
                f"not {model_name} version {version}"
            )
        checks.append(f"metadata: {model_name} version {meta['version']}, dataset {meta['dataset_version'][:12]}")
        endpoint = spec.endpoint
        bad = client.post(f"{url}/{endpoint}", json={"no_such_field": 1})
        if not 400 <= bad.status_code < 500:
            raise ServingError(f"a malformed {endpoint} request got {bad.status_code}, not a 4xx: {bad.text[:300]}")
        checks.append(f"malformed request: {bad.status_code}")
        if spec.smoke_checks is not None:
            try:
                checks.extend(spec.smoke_checks(post))
            except ValueError as exc:
                raise ServingError(f"{bento_tag}: {exc}") from None
        parity = spec.parity(post, expected)
        by_user = None
        if spec.user_parity is not None:
            by_user = spec.user_parity(
                post, _python_model(bento_tag), open_dataset(paths, meta["features_dataset_version"]), requests
            )
    mismatches, worst, times, examples = parity.mismatches, parity.max_abs_diff, parity.times_ms, parity.examples
    report = SmokeReport(
        bento_tag,
        str(version),
        len(expected),
        mismatches,
        worst,
        float(np.percentile(times, 50)),
        float(np.percentile(times, 95)),
        checks,
    )
    if mismatches or worst > SCORE_TOLERANCE:
        raise ParityError(
            f"{bento_tag}: {mismatches} of {len(expected)} served answers differ from {model_name} "
            f"version {version}'s offline evaluation (largest score difference {worst:.2e}, "
            f"tolerance {SCORE_TOLERANCE:g}); " + "; ".join(examples)
        )
    report.checks.append(
        f"parity: {len(expected)} offline requests replayed, answers identical, largest score difference {worst:.2e}"
    )
    if by_user is not None:
        n = len(by_user.times_ms)
        if by_user.mismatches or by_user.max_abs_diff > SCORE_TOLERANCE:
            raise ParityError(
                f"{bento_tag}: {by_user.mismatches} answers to {n} requests by user id differ from "
                f"those of {model_name} version {version} on the offline features of dataset "
                f"{meta['features_dataset_version'][:12]} (largest score difference "
                f"{by_user.max_abs_diff:.2e}): the feature snapshot or the packaged user states "
                "disagree with training; " + "; ".join(by_user.examples)
            )
        report.checks.append(
            f"parity by user id: {n} requests answered as from the offline features of the "
            f"same users, largest score difference {by_user.max_abs_diff:.2e}"
        )
    return report


def _python_model(bento_tag: str):
    """The Python model inside a built Bento (its MLflow pyfunc, unwrapped)."""
    import bentoml

    from pipeline.serving.common import load_pyfunc

    model_tag = bentoml.bentos.get(bento_tag).info.args["model_tag"]
    return load_pyfunc(model_tag).unwrap_python_model()


def package(
    paths: StatePaths,
    model_name: str,
    version: str | None = None,
    requests: int = PARITY_REQUESTS,
    dataset_version: str | None = None,
    smoke: bool = True,
) -> Packaged:
    """Build, serve and check a version's Bento; record the outcome on the model version. With
    ``smoke`` False (policy ``require_smoke_test: false``) the Bento is built and recorded, not started."""
    packaged = build_bento(paths, model_name, version, dataset_version)
    kill_point("package.built")
    client = mlflow_client(paths)
    tag = lambda k, v: client.set_model_version_tag(model_name, packaged.version, k, v)  # noqa: E731
    tag("bento_tag", packaged.bento_tag)
    if not smoke:
        return packaged
    try:
        packaged.smoke = smoke_test(paths, model_name, packaged.version, packaged.bento_tag, requests)
        kill_point("package.tested")
    except ServingError as exc:
        tag("smoke_test", "failed")
        tag("smoke_test.reason", str(exc)[:4000])
        raise
    tag("smoke_test", "passed")
    tag("smoke_test.report", json.dumps(packaged.smoke.to_dict())[:4000])
    return packaged
