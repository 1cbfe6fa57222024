"""The ``next_item`` service: recommendations from the packaged SASRec pyfunc.

Two BentoML services, served together by ``bentoml serve``:

* ``NextItemModel`` holds the MLflow pyfunc and exposes one batchable ``rank`` endpoint, so that
  concurrent requests share one forward pass (BentoML's adaptive batching);
* ``NextItemService`` is the public API: validation, the user's history from the feature snapshot,
  exclusions, and the metadata, readiness and liveness answers (``/readyz`` and ``/livez``).

The model is only ever called through the pyfunc's ``predict``, the call the offline evaluation
made, so the parity check compares like with like.
"""

from __future__ import annotations

import bentoml
import pandas as pd
from pydantic import BaseModel

from pipeline.serving.api import MAX_EXCLUDE, MAX_HISTORY, MAX_K, Metadata, Recommendation, RecommendRequest
from pipeline.serving.common import (
    ADAPTIVE_BATCHING,
    MAX_BATCH_SIZE,
    MAX_LATENCY_MS,
    MODEL_SERVICE_CONFIG,
    PUBLIC_SERVICE_CONFIG,
    bento_args,
    call_with_retry,
    metadata,
    torch_threads,
)
from pipeline.serving.guard import RequestGuard

ARGS = bento_args("next_item")


class RankRow(BaseModel):
    history: list[str]
    k: int


class Ranked(BaseModel):
    items: list[str]
    scores: list[float]
    source: str


@bentoml.service(name="next_item_model", **MODEL_SERVICE_CONFIG)
class NextItemModel:
    bento_model = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        torch_threads()
        self.pyfunc = bentoml.mlflow.load_model(self.bento_model)
        # The pyfunc's own predict, without MLflow's per-call input schema check: the rows are built
        # here, always valid, and the call is the one the offline evaluation made (the parity check
        # proves it).
        self.predict = self.pyfunc.unwrap_python_model().predict

    @bentoml.api(batchable=ADAPTIVE_BATCHING, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def rank(self, rows: list[RankRow]) -> list[Ranked]:
        out = self.predict(None, pd.DataFrame({"history": [r.history for r in rows], "k": [r.k for r in rows]}))
        return [Ranked(items=list(items), scores=[float(s) for s in scores], source=source)
                for items, scores, source in zip(out["items"], out["scores"], out["source"], strict=True)]


@bentoml.service(name="next_item", **PUBLIC_SERVICE_CONFIG)
class NextItemService:
    model = bentoml.depends(NextItemModel)
    snapshot_model = bentoml.models.BentoModel(ARGS.snapshot_tag)

    def __init__(self) -> None:
        from pipeline.serving.snapshot import FeatureSnapshot

        self.snapshot = FeatureSnapshot.load(self.snapshot_model.path)

    def __is_ready__(self) -> bool:
        return self.snapshot is not None

    @bentoml.api
    async def recommend(self, request: RecommendRequest, /) -> Recommendation:
        known = request.user_id is not None and self.snapshot.knows(request.user_id)
        history = (self.snapshot.history(request.user_id) if known else []) + list(request.history)
        excluded = set(request.exclude)
        if request.exclude_purchased and known:
            excluded.update(self.snapshot.purchased(request.user_id))
        # Ask for enough to fill k after the exclusions that could be among the top.
        asked = request.k + min(len(excluded), MAX_EXCLUDE)
        [ranked] = await call_with_retry(self.model.to_async.rank,
                                         [RankRow(history=history[-MAX_HISTORY:], k=asked)])
        pairs = [(i, s) for i, s in zip(ranked.items, ranked.scores, strict=True) if i not in excluded][:request.k]
        reason = None
        if ranked.source == "popularity":
            reason = ("no user_id and no history were sent" if request.user_id is None and not request.history
                      else "the user is unknown and none of the history's items is known"
                      if history else "the user is unknown and no history was sent")
        return Recommendation(items=[i for i, _ in pairs], scores=[s for _, s in pairs], source=ranked.source,
                              user_known=known, model_version=str(ARGS.version), reason=reason)

    @bentoml.api
    def metadata(self) -> Metadata:
        return metadata(ARGS, self.snapshot.meta)


NextItemService.add_asgi_middleware(RequestGuard)   # JSON only, bounded, errors as documented


__all__ = ["MAX_K", "NextItemModel", "NextItemService"]
