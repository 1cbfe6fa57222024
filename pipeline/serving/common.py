"""What both services share: the Bento's build arguments, batching settings, the metadata answer.

A Bento is built from one registry model version (``pipeline.serving.package``), which passes the
model and snapshot tags and the version's lineage as Bento build arguments; they travel with the
Bento, so ``bentoml serve <bento tag>`` needs nothing else.

Variables read when a service starts (defaults chosen with ``make bench-serve`` on the 2-core
development machine, README "Load"):
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

import os
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

from pipeline.serving.api import Metadata

ARG_NAMES = ("model_name", "model_tag", "snapshot_tag", "version", "run_id", "dataset_version", "git_commit",
             "bento_tag")
OPTIONAL_ARGS = ("states_tag",)   # the packaged user states, for families that have them


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
        return cls(enabled=env.get("SHOPML_ADAPTIVE_BATCHING", "1") != "0",
                   max_batch=int(env.get("SHOPML_MAX_BATCH_SIZE", "64")),
                   wait_ms=float(env.get("SHOPML_BATCH_WAIT_MS", "0")),
                   max_latency_ms=float(env.get("SHOPML_MAX_LATENCY_MS", "1000")),
                   settle=int(env.get("SHOPML_BATCH_SETTLE", "8")))

    def batcher_args(self, rows_per_request: int = 1) -> dict:
        return {"max_batch": self.max_batch * rows_per_request if self.enabled else rows_per_request,
                "wait_ms": self.wait_ms if self.enabled else 0.0, "max_latency_ms": self.max_latency_ms,
                "settle": self.settle if self.enabled else 0}


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
        raise RuntimeError(f"the {model_name} service needs the Bento arguments {missing}; build it with "
                           f"`python -m pipeline package {model_name} <version>`, then serve the Bento it prints")
    if model_name is not None and args.model_name != model_name:
        raise RuntimeError(f"this Bento packages {args.model_name}, not {model_name}")
    return args


def metadata(args: SimpleNamespace, snapshot_meta: dict, stats=None) -> Metadata:
    """What the Bento serves: the model version and its lineage, and the feature snapshot's dataset
    version and cutoff (the version the model was trained on, unless packaged with another)."""
    return Metadata(model=args.model_name, version=str(args.version), bento_tag=args.bento_tag,
                    dataset_version=args.dataset_version, git_commit=args.git_commit, run_id=args.run_id,
                    features_as_of=snapshot_meta["cutoff"], features_dataset_version=snapshot_meta["dataset_version"],
                    adaptive_batching=BATCHING.enabled, batching=None if stats is None else stats.to_dict())


def torch_threads() -> None:
    """One model worker uses every core it was given (BentoML sets the thread variables)."""
    import torch

    threads = int(os.environ.get("SHOPML_TORCH_THREADS") or os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
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
