"""The ``purchase_propensity`` service: probabilities from the packaged DCN-v2 pyfunc, in one service.

``PropensityService`` validates the request, builds every candidate's feature row in one vectorised
step (polars joins against the feature snapshot for candidates looked up by user id: the same
aggregates training used, as of the snapshot's cutoff; the caller's features otherwise) and scores
them in one forward pass, shared with the candidates of concurrent requests
(``pipeline.serving.batching``). One HTTP hop: no feature rows cross a second server as JSON.
"""

from __future__ import annotations

import bentoml

from pipeline.families.purchase_propensity.serving import Probabilities, PropensityRequest
from pipeline.serving.api import Metadata
from pipeline.serving.common import (
    BATCHING,
    PUBLIC_SERVICE_CONFIG,
    Traffic,
    bento_args,
    load_pyfunc,
    overloaded_as_503,
    torch_threads,
)
from pipeline.serving.guard import RequestGuard

ARGS = bento_args("purchase_propensity")
ROWS_PER_REQUEST = 16  # a batch holds SHOPML_MAX_BATCH_SIZE times this many candidates


class _Engine:
    """One model version's pyfunc, snapshot and batcher (the champion's, or a challenger's)."""

    def __init__(self, model, snapshot, version: str) -> None:
        """``model`` a BentoML model or tag; ``snapshot`` a stored BentoML model."""
        from pipeline.families.purchase_propensity.serving import PropensityScorer
        from pipeline.serving.batching import MicroBatcher
        from pipeline.serving.snapshot import FeatureSnapshot

        # The pyfunc's own predict, without MLflow's per-call schema check: the rows are built here.
        self.pyfunc = load_pyfunc(model).unwrap_python_model()
        self.snapshot = FeatureSnapshot.load(snapshot.path)
        self.scorer = PropensityScorer(self.pyfunc, self.snapshot)
        self.batcher = MicroBatcher(self.scorer.score_requests, size=len, **BATCHING.batcher_args(ROWS_PER_REQUEST))
        self.version = str(version)

    async def answer(self, request: PropensityRequest) -> Probabilities:
        with overloaded_as_503():
            probabilities = await self.batcher(request.candidates)
        return Probabilities(probabilities=probabilities, model_version=self.version)


def _user_of(request: PropensityRequest) -> str | None:
    """The request's user, when every candidate names the same one (what the log joins on)."""
    users = {c.user_id for c in request.candidates}
    return users.pop() if len(users) == 1 else None


@bentoml.service(name="purchase_propensity", **PUBLIC_SERVICE_CONFIG)
class PropensityService:
    bento_model = bentoml.models.BentoModel(ARGS.model_tag)
    snapshot_model = bentoml.models.BentoModel(ARGS.snapshot_tag)

    def __init__(self) -> None:
        torch_threads()
        self.champion = _Engine(self.bento_model, self.snapshot_model, ARGS.version)
        self.snapshot, self.batcher = self.champion.snapshot, self.champion.batcher
        self.traffic = Traffic(
            "purchase_propensity",
            self.champion,
            lambda other: _Engine(other.model_tag, bentoml.models.get(other.snapshot_tag), other.version),
            lambda request, answer: ([c.item_id for c in request.candidates], answer.probabilities, "model", []),
        )

    def __is_ready__(self) -> bool:
        return self.snapshot is not None

    @bentoml.api
    async def purchase_probability(self, request: PropensityRequest, /, ctx: bentoml.Context) -> Probabilities:
        return await self.traffic.answer(request, ctx, _user_of(request))

    @bentoml.api
    def metadata(self) -> Metadata:
        return self.traffic.metadata(ARGS, self.snapshot.meta)

    @bentoml.on_shutdown
    def _flush_log(self) -> None:
        self.traffic.close()


PropensityService.add_asgi_middleware(RequestGuard)  # type: ignore[attr-defined]  # added by @bentoml.service   # JSON only, bounded, errors as documented
