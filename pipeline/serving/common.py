"""What both services share: the Bento's build arguments, batching settings, the metadata answer.

A Bento is built from one registry model version (``pipeline.serving.package``), which passes the
model and snapshot tags and the version's lineage as Bento build arguments; they travel with the
Bento, so ``bentoml serve <bento tag>`` needs nothing else.

Variables read when a service starts (defaults chosen with ``make bench-serve`` on the 2-core
development machine, docs/benchmarks/serving.md):
    SHOPML_API_WORKERS: worker processes, each with its own copy of the model, snapshot and user
        states (default 2, or 1 on a 1-core machine: at 64 clients 2 workers answered 438-466
        known-user requests/s against 248-300 for 1, both cores parsing HTTP).
    SHOPML_ADAPTIVE_BATCHING: ``0`` turns batching off (each request its own model call).
    SHOPML_MAX_BATCH_SIZE: the most rows of one model call (default 64; a propensity candidate is a
        row, and its batches are 16 times larger).
    SHOPML_BATCH_SETTLE: event-loop turns a batch gives requests already read to join it (default 8;
        free when idle).
    SHOPML_BATCH_WAIT_MS: how long a lone request waits to be joined by others (default 0: 2 ms
        added 2 ms at 1 client for no gain at 64 once workers were 2).
    SHOPML_MAX_LATENCY_MS: a request that waited longer than this for the model gets a 503 (default 1000).
    SHOPML_TORCH_THREADS: torch's threads per worker (default: ``OMP_NUM_THREADS``, else every core).
    SHOPML_ACCESS_LOG: ``0`` turns BentoML's access log line per request off (default on).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

from pipeline.core.errors import BadInput
from pipeline.core.hints import command
from pipeline.serving.api import Metadata

ARG_NAMES = (
    "model_name",
    "model_tag",
    "snapshot_tag",
    "version",
    "run_id",
    "dataset_version",
    "git_commit",
    "bento_tag",
)
OPTIONAL_ARGS = ("states_tag",)  # the packaged user states, for families that have them


@dataclass(frozen=True)
class Batching:
    """The batching settings of a service (``pipeline.serving.batching.MicroBatcher``)."""

    enabled: bool
    max_batch: int
    wait_ms: float
    max_latency_ms: float
    settle: int = 8

    @classmethod
    def from_env(cls) -> Batching:
        env = os.environ
        return cls(
            enabled=env.get("SHOPML_ADAPTIVE_BATCHING", "1") != "0",
            max_batch=int(env.get("SHOPML_MAX_BATCH_SIZE", "64")),
            wait_ms=float(env.get("SHOPML_BATCH_WAIT_MS", "0")),
            max_latency_ms=float(env.get("SHOPML_MAX_LATENCY_MS", "1000")),
            settle=int(env.get("SHOPML_BATCH_SETTLE", "8")),
        )

    def batcher_args(self, rows_per_request: int = 1) -> dict:
        return {
            "max_batch": self.max_batch * rows_per_request if self.enabled else rows_per_request,
            "wait_ms": self.wait_ms if self.enabled else 0.0,
            "max_latency_ms": self.max_latency_ms,
            "settle": self.settle if self.enabled else 0,
        }


BATCHING = Batching.from_env()


def bento_args(model_name: str | None) -> SimpleNamespace:
    """The build arguments of the Bento being built or served, checked (``model_name`` None: a
    service that serves any family's model)."""
    import bentoml

    args = bentoml.use_arguments()
    missing = [name for name in ARG_NAMES if not getattr(args, name, None)]
    for name in OPTIONAL_ARGS:
        if not hasattr(args, name):
            setattr(args, name, None)
    if missing:
        hint = command("package", "--model", model_name or "MODEL", "--version", "VERSION")
        raise RuntimeError(
            f"the {model_name} service needs the Bento arguments {missing}; build it with "
            f"`{hint}`, then serve the Bento it prints"
        )
    if model_name is not None and args.model_name != model_name:
        raise RuntimeError(f"this Bento packages {args.model_name}, not {model_name}")
    return args


def metadata(
    args: SimpleNamespace,
    snapshot_meta: dict,
    stats=None,
    routing=None,
    log=None,
    challenger_version: str | None = None,
    shadow_failures: int = 0,
) -> Metadata:
    """What the Bento serves: the model version and its lineage, and the feature snapshot's dataset
    version and cutoff (the version the model was trained on, unless packaged with another); the
    challenger beside it, if any, and this worker's prediction log counts."""
    challenger = None
    if routing is not None and routing.challenger_bento:
        challenger = {
            "version": challenger_version,
            "bento_tag": routing.challenger_bento,
            "mode": routing.mode,
            "share": routing.share if routing.mode == "canary" else None,
            "shadow_failures": shadow_failures,
        }
    logged = (
        None
        if log is None
        else {"root": log.root, "written": log.written, "queued": log.queue.qsize(), "dropped": dict(log.dropped)}
    )
    return Metadata(
        model=args.model_name,
        version=str(args.version),
        bento_tag=args.bento_tag,
        dataset_version=args.dataset_version,
        git_commit=args.git_commit,
        run_id=args.run_id,
        features_as_of=snapshot_meta["cutoff"],
        features_dataset_version=snapshot_meta["dataset_version"],
        adaptive_batching=BATCHING.enabled,
        batching=None if stats is None else stats.to_dict(),
        challenger=challenger,
        prediction_log=logged,
    )


def load_pyfunc(model):
    """A Bento model's MLflow pyfunc (a tag, or the model a service declares), loaded only after its
    files are checked against the digest packaging recorded from the registry
    (``pipeline.core.integrity``): a changed file stops the worker before any of it is unpickled."""
    import bentoml

    return bentoml.mlflow.load_model(check_bento_model(model))


def check_bento_model(model):
    """The Bento model (a tag, or a model), once its files have the digest packaging recorded in
    its metadata (``pipeline.core.integrity.check_folder``; ``IntegrityError`` otherwise)."""
    import bentoml

    from pipeline.core.integrity import check_folder

    stored = bentoml.models.get(model) if isinstance(model, str) else model
    recorded = stored.info.metadata.get("model_sha256")
    check_folder(
        Path(stored.path) / "mlflow_model", recorded if isinstance(recorded, str) else None, f"Bento model {stored.tag}"
    )
    return stored


def torch_threads(default: int | None = None) -> None:
    """One model worker uses every core it was given (BentoML sets the thread variables), or
    ``default`` threads unless ``SHOPML_TORCH_THREADS`` says otherwise."""
    import torch

    threads = int(
        os.environ.get("SHOPML_TORCH_THREADS") or default or os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1
    )
    torch.set_num_threads(max(threads, 1))


PUBLIC_SERVICE_CONFIG = {
    "workers": int(os.environ.get("SHOPML_API_WORKERS") or min(2, os.cpu_count() or 1)),
    "traffic": {"timeout": 30},
    # One log line per request costs about a tenth of a millisecond of the event loop's time.
    "logging": {"access": {"enabled": os.environ.get("SHOPML_ACCESS_LOG", "1") != "0"}},
}


@contextmanager
def overloaded_as_503():
    """A request that waited past the batching deadline is answered 503 (retry), not 500."""
    from bentoml.exceptions import ServiceUnavailable

    from pipeline.serving.batching import Overloaded

    try:
        yield
    except Overloaded as exc:
        raise ServiceUnavailable(f"the server is overloaded: {exc}; retry") from exc


# ---- The closed loop: prediction logging, shadow and canary (docs/concepts/closed-loop.md) ----------
#   SHOPML_PREDICTION_LOG: where answers are logged (a folder or fsspec URI; ``off``: nowhere;
#       default ``$SHOPML_HOME/predictions``), see ``pipeline.data.predictions``.
#   SHOPML_PREDICTION_LOG_QUEUE: answers a worker holds before it drops new ones (default 10,000).
#   SHOPML_PREDICTION_LOG_FLUSH_S: seconds between a worker's files (default 30; also every 5,000 answers).
#   SHOPML_ACCEPT_EVENT_TIME: ``1`` logs an answer at the time its request's ``x-shopml-event-time``
#       header gives (ISO 8601), for replays of past traffic; otherwise at the time it was served. A
#       time that does not parse, lies over an hour ahead, before 1970 or, with
#       SHOPML_EVENT_TIME_WINDOW_DAYS, more days back than that, logs at the serving time.
#   SHOPML_CHALLENGER_BENTO: the Bento tag of a challenger served beside this champion, in
#       SHOPML_CHALLENGER_MODE ``shadow`` (it answers a copy of every request; logged, never
#       returned) or ``canary`` (it answers the share SHOPML_CANARY_SHARE of users, sticky by user).
EVENT_TIME_HEADER = "x-shopml-event-time"
REQUEST_ID_HEADER = "x-request-id"
CHALLENGER_MODES = ("shadow", "canary")


def prediction_log(model_name: str):
    """The service's ``PredictionLog`` (None when logging is off), its drops counted in ``/metrics``."""
    import bentoml

    from pipeline.data.predictions import default_root
    from pipeline.serving.predlog import PredictionLog

    root = default_root()
    if root is None:
        return None
    dropped = bentoml.metrics.Counter(
        name="shopml_prediction_log_dropped",
        documentation="answers the prediction log dropped (full queue or sink error)",
        labelnames=["model", "reason"],
    )
    written = bentoml.metrics.Counter(
        name="shopml_prediction_log_written", documentation="answers the prediction log wrote", labelnames=["model"]
    )
    for reason in ("queue_full", "sink_error", "bad_row"):  # shown at 0 from the start, not from the first drop
        dropped.labels(model=model_name, reason=reason)
    written.labels(model=model_name)
    return PredictionLog(
        root,
        model_name,
        capacity=int(os.environ.get("SHOPML_PREDICTION_LOG_QUEUE", "10000")),
        flush_seconds=float(os.environ.get("SHOPML_PREDICTION_LOG_FLUSH_S", "30")),
        on_drop=lambda n, reason: dropped.labels(model=model_name, reason=reason).inc(n),
        on_write=lambda n: written.labels(model=model_name).inc(n),
    )


def request_context(ctx) -> tuple[str, object, str | None]:
    """The request's id (made here, always new), the time its answer is logged at (see
    SHOPML_ACCEPT_EVENT_TIME), and the client's ``x-request-id`` as sent (None without one).

    The id is the server's: it keys the canary's choice for a request without a user and pairs a
    shadow's answer with the champion's, so a client that picked it could choose its model or forge
    pairs. The client's id is logged beside it (``client_request_id``) for tracing only."""
    headers = ctx.request.headers if ctx is not None and getattr(ctx, "request", None) is not None else {}
    request_id = uuid.uuid4().hex
    client_id = headers.get(REQUEST_ID_HEADER)
    client_id = client_id[:64] if client_id else None
    when = datetime.now(timezone.utc)
    sent = headers.get(EVENT_TIME_HEADER)
    if sent and os.environ.get("SHOPML_ACCEPT_EVENT_TIME") == "1":
        when = replay_time(sent, when)
    return request_id, when, client_id


# A replayed answer is logged no later than an hour ahead of now, and no earlier than the epoch or,
# with SHOPML_EVENT_TIME_WINDOW_DAYS set, than that many days before now.
EVENT_TIME_AHEAD = timedelta(hours=1)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def replay_time(sent: str, now: datetime) -> datetime:
    """The time a replay header gives, in UTC, when it parses and lies inside the replay window;
    otherwise ``now``. A header such as ``0001-01-01T00:00:00+14:00`` parses but lies before any
    UTC time: it was an OverflowError in the prediction log's writer, which then stopped logging."""
    days = os.environ.get("SHOPML_EVENT_TIME_WINDOW_DAYS")
    earliest = now - timedelta(days=float(days)) if days else EPOCH
    try:
        parsed = datetime.fromisoformat(sent.replace("Z", "+00:00"))
        parsed = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return now  # a bad replay header logs at the serving time; the answer is unaffected
    return parsed if earliest <= parsed <= now + EVENT_TIME_AHEAD else now


@dataclass(frozen=True)
class Routing:
    """Who answers: the champion alone, or a challenger in shadow or canary mode."""

    challenger_bento: str | None = None
    mode: str | None = None
    share: float = 0.0

    @classmethod
    def from_env(cls) -> Routing:
        env = os.environ
        bento = env.get("SHOPML_CHALLENGER_BENTO") or None
        if bento is None:
            return cls()
        mode = env.get("SHOPML_CHALLENGER_MODE", "shadow")
        if mode not in CHALLENGER_MODES:
            raise BadInput(f"SHOPML_CHALLENGER_MODE={mode!r}: expected one of {', '.join(CHALLENGER_MODES)}")
        share = float(env.get("SHOPML_CANARY_SHARE", "0.1"))
        if not 0.0 <= share <= 1.0:
            raise BadInput(f"SHOPML_CANARY_SHARE={share}: expected a share between 0 and 1")
        return cls(bento, mode, share)

    def to_challenger(self, key: str) -> bool:
        """Canary mode: whether this user (or, without one, this request) goes to the challenger.
        A hash of the key, so a user stays on the same side for as long as the share stays."""
        return self.mode == "canary" and in_share(key, self.share)


def in_share(key: str, share: float) -> bool:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return bucket < share


def challenger_args(bento_tag: str, model_name: str) -> SimpleNamespace:
    """The build arguments of a challenger's Bento in the local store (its model, snapshot, states)."""
    import bentoml

    args = SimpleNamespace(**bentoml.get(bento_tag).info.args)
    for name in OPTIONAL_ARGS:
        if not hasattr(args, name):
            setattr(args, name, None)
    if getattr(args, "model_name", None) != model_name:
        raise RuntimeError(
            f"challenger Bento {bento_tag} packages {getattr(args, 'model_name', None)}, not {model_name}"
        )
    return args


class Shadows:
    """The shadow answers in flight: started after the champion's answer, never awaited by the
    request; a reference is kept until each ends (the event loop holds only weak ones)."""

    def __init__(self) -> None:
        self.tasks: set = set()
        self.failed = 0

    def start(self, coroutine) -> None:
        import asyncio

        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failed += 1  # a challenger's error never reaches the caller


class Traffic:
    """Who answers a service's requests and what is logged: the champion's engine, a challenger's
    beside it (``Routing``), the prediction log. An engine has ``answer(request)`` (awaitable) and
    ``version``; ``logged(request, answer)`` gives the (items, scores, source, sent history) to log."""

    def __init__(self, model_name: str, champion, challenger_engine, logged) -> None:
        self.champion, self.logged = champion, logged
        self.routing = Routing.from_env()
        self.challenger = None
        if self.routing.challenger_bento:
            self.challenger = challenger_engine(challenger_args(self.routing.challenger_bento, model_name))
        self.log = prediction_log(model_name)
        self.shadows = Shadows()

    async def answer(self, request, ctx, user_id: str | None):
        """The answer of the champion, or of the challenger for a canary's user; a shadow answer is
        computed after and logged, never returned."""
        request_id, when, client_id = request_context(ctx)
        engine, role = self.champion, "champion"
        if self.challenger is not None and self.routing.to_challenger(user_id or request_id):
            engine, role = self.challenger, "challenger"
        answer = await engine.answer(request)
        self._log(request_id, when, role, user_id, request, answer, client_id)
        if self.challenger is not None and self.routing.mode == "shadow":
            self.shadows.start(self._shadow(request, request_id, when, user_id, client_id))
        return answer

    async def _shadow(self, request, request_id: str, when, user_id: str | None, client_id: str | None) -> None:
        assert self.challenger is not None  # only started when there is one
        answer = await self.challenger.answer(request)
        self._log(request_id, when, "shadow", user_id, request, answer, client_id)

    def _log(
        self, request_id: str, when, role: str, user_id: str | None, request, answer, client_id: str | None = None
    ) -> None:
        if self.log is not None:
            items, scores, source, history = self.logged(request, answer)
            self.log.record(
                request_id=request_id,
                ts=when,
                model_version=answer.model_version,
                role=role,
                user_id=user_id,
                items=items,
                scores=scores,
                source=source,
                history=history,
                client_request_id=client_id,
            )

    def metadata(self, args: SimpleNamespace, snapshot_meta: dict) -> Metadata:
        return metadata(
            args,
            snapshot_meta,
            self.champion.batcher.stats,
            self.routing,
            self.log,
            self.challenger.version if self.challenger else None,
            self.shadows.failed,
        )

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
