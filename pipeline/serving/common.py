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


def bento_args(model_name: str | None) -> SimpleNamespace:
    """The build arguments of the Bento being built or served, checked (``model_name`` None: a
    service that serves any family's model)."""
    import bentoml

    args = bentoml.use_arguments()
    missing = [name for name in ARG_NAMES if not getattr(args, name, None)]
    if missing:
        raise RuntimeError(f"the {model_name} service needs the Bento arguments {missing}; build it with "
                           f"`python -m pipeline package {model_name} <version>`, then serve the Bento it prints")
    if model_name is not None and args.model_name != model_name:
        raise RuntimeError(f"this Bento packages {args.model_name}, not {model_name}")
    return args


def metadata(args: SimpleNamespace, snapshot_meta: dict) -> Metadata:
    """What the Bento serves: the model version and its lineage, and the feature snapshot's dataset
    version and cutoff (the version the model was trained on, unless packaged with another)."""
    return Metadata(model=args.model_name, version=str(args.version), bento_tag=args.bento_tag,
                    dataset_version=args.dataset_version, git_commit=args.git_commit, run_id=args.run_id,
                    features_as_of=snapshot_meta["cutoff"], features_dataset_version=snapshot_meta["dataset_version"],
                    adaptive_batching=ADAPTIVE_BATCHING)


def torch_threads() -> None:
    """One model worker uses every core it was given (BentoML sets the thread variables)."""
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(max(threads, 1))


# The internal model service: a connection from the public service that is never recycled (BentoML
# 1.4.39 closes its client session every ``max_requests`` calls, cutting requests still in flight on
# it, so that limit is set out of reach), and no access log line per internal call.
MODEL_SERVICE_CONFIG = {
    "workers": 1,
    "traffic": {"timeout": 30},
    "runner_connection": {"max_requests": 2**31 - 1, "max_age": 365 * 86400.0},
    "logging": {"access": {"enabled": False}},
}
PUBLIC_SERVICE_CONFIG = {"workers": int(os.environ.get("SHOPML_API_WORKERS", "1")), "traffic": {"timeout": 30}}


async def call_with_retry(call, *args, attempts: int = 3):
    """Call a dependency's endpoint again when the connection dropped before an answer came (a
    recycled client session, a restarted worker).

    Only for pure endpoints (scoring), where a repeated call cannot do anything twice. When the
    model service stays unreachable (it is shutting down: a restart under load showed BentoML stops
    it before the public service), the answer is a 503, which clients and load balancers retry,
    not a 500.
    """
    import asyncio

    import aiohttp
    from bentoml.exceptions import ServiceUnavailable

    for attempt in range(attempts):
        try:
            return await call(*args)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if attempt == attempts - 1:
                raise ServiceUnavailable(f"the model service is unreachable ({type(exc).__name__}); "
                                         "the server is restarting or stopping: retry") from exc
            await asyncio.sleep(0.05 * (attempt + 1))
