"""What both services share: the Bento's build arguments, batching settings, the metadata answer.

A Bento is built from one registry model version (``pipeline.serving.package``), which passes the
model and snapshot tags and the version's lineage as Bento build arguments; they travel with the
Bento, so ``bentoml serve <bento tag>`` needs nothing else.

Variables read when a service starts:
    SHOPML_ADAPTIVE_BATCHING: ``0`` turns adaptive batching off (each request its own forward pass);
        the load benchmark compares both.
    SHOPML_MAX_BATCH_SIZE, SHOPML_MAX_LATENCY_MS: BentoML's batching limits (default 64 rows, and
        1000 ms, past which BentoML answers 503 rather than queue a request longer).
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from pipeline.serving.api import Metadata

ARG_NAMES = ("model_name", "model_tag", "snapshot_tag", "version", "run_id", "dataset_version", "git_commit",
             "bento_tag")

ADAPTIVE_BATCHING = os.environ.get("SHOPML_ADAPTIVE_BATCHING", "1") != "0"
MAX_BATCH_SIZE = int(os.environ.get("SHOPML_MAX_BATCH_SIZE", "64"))
MAX_LATENCY_MS = int(os.environ.get("SHOPML_MAX_LATENCY_MS", "1000"))


def bento_args(model_name: str) -> SimpleNamespace:
    """The build arguments of the Bento being built or served, checked."""
    import bentoml

    args = bentoml.use_arguments()
    missing = [name for name in ARG_NAMES if not getattr(args, name, None)]
    if missing:
        raise RuntimeError(f"the {model_name} service needs the Bento arguments {missing}; build it with "
                           f"`python -m pipeline package {model_name} <version>`, then serve the Bento it prints")
    if args.model_name != model_name:
        raise RuntimeError(f"this Bento packages {args.model_name}, not {model_name}")
    return args


def metadata(args: SimpleNamespace, features_as_of: str) -> Metadata:
    return Metadata(model=args.model_name, version=str(args.version), bento_tag=args.bento_tag,
                    dataset_version=args.dataset_version, git_commit=args.git_commit, run_id=args.run_id,
                    features_as_of=features_as_of, adaptive_batching=ADAPTIVE_BATCHING)


def torch_threads() -> None:
    """One model worker uses every core it was given (BentoML sets the thread variables)."""
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(max(threads, 1))


def keep_connections(proxy) -> None:
    """Stop BentoML's client to a dependency from recycling its HTTP session under load.

    BentoML 1.4.39's dependency client closes and replaces its aiohttp session every 100 requests
    (``SessionManager.max_requests``), which cuts the requests still in flight on the old one
    ("Server disconnected"): at 8 concurrent requests a few in every hundred fail. No setting
    reaches that client, so the limits are raised on the instance; ``call_with_retry`` covers a
    BentoML that recycles anyway.
    """
    for client in (getattr(proxy, "to_async", None), getattr(proxy, "to_sync", None)):
        manager = getattr(client, "_session_manager", None)
        if manager is not None:
            manager.max_requests = 2**62
            manager.max_age = float("inf")


async def call_with_retry(call, *args, attempts: int = 3):
    """Call a dependency's endpoint again when the connection dropped before an answer came.

    Only for pure endpoints (scoring), where a repeated call cannot do anything twice.
    """
    import aiohttp

    for attempt in range(attempts):
        try:
            return await call(*args)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            if attempt == attempts - 1:
                raise
