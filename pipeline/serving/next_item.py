"""The ``next_item`` service: recommendations from the packaged SASRec pyfunc, in one service.

One ``@bentoml.service``, one HTTP hop: validation, the snapshot lookups, exclusions and the model
all run in the process that received the request. Concurrent requests share one model call
(``pipeline.serving.batching``). A user the packaging step saw is scored from the user state it
computed (``pipeline.families.next_item.states``): one matrix-vector product with the item embeddings and a
top-k. A request that sends its own history (alone, or after a known user's) runs the transformer
on the whole history, batched with the others.

Both paths call the pyfunc's own ``user_states`` and ``rank``, which its ``predict`` (what the
offline evaluation called) is made of, so the parity check compares like with like: it replays the
evaluation's histories, and requests by user id against answers computed offline from the
training features (``pipeline.families.next_item.evaluation.user_parity``).
"""

from __future__ import annotations

import bentoml

from pipeline.serving.api import MAX_HISTORY, MAX_K, Metadata, Recommendation, RecommendRequest
from pipeline.serving.common import (
    BATCHING,
    PUBLIC_SERVICE_CONFIG,
    Routing,
    Shadows,
    bento_args,
    challenger_args,
    metadata,
    overloaded_as_503,
    prediction_log,
    request_context,
    torch_threads,
)
from pipeline.serving.compute import Row
from pipeline.serving.guard import RequestGuard

ARGS = bento_args("next_item")


class _Engine:
    """One model version's pyfunc, snapshot, user states and batcher (the champion's, or a
    challenger's beside it)."""

    def __init__(self, model, snapshot_tag: str, states_tag: str | None, version: str) -> None:
        from pipeline.families.next_item.states import UserStateTable
        from pipeline.serving.batching import MicroBatcher
        from pipeline.serving.compute import NextItemRanker
        from pipeline.serving.snapshot import FeatureSnapshot

        # The pyfunc's own methods, without MLflow's per-call input schema check: the rows are
        # built here, always valid (the parity check proves the answers are the evaluated ones).
        self.pyfunc = bentoml.mlflow.load_model(model).unwrap_python_model()
        self.snapshot = FeatureSnapshot.load(bentoml.models.get(snapshot_tag).path
                                             if isinstance(snapshot_tag, str) else snapshot_tag.path)
        self.states = UserStateTable(bentoml.models.get(states_tag).path if isinstance(states_tag, str)
                                     else states_tag.path)
        self.ranker = NextItemRanker(self.pyfunc, self.snapshot, self.states)
        self.batcher = MicroBatcher(self.ranker.rank_rows, **BATCHING.batcher_args())
        self.version = str(version)

    async def answer(self, request: RecommendRequest) -> Recommendation:
        known = request.user_id is not None and self.snapshot.knows(request.user_id)
        state_row = self.states.row(request.user_id) if known and not request.history else None
        history = None
        if state_row is None:
            history = (self.snapshot.history(request.user_id) if known else []) + list(request.history)
            history = history[-MAX_HISTORY:]
        excluded = list(dict.fromkeys(request.exclude))
        if request.exclude_purchased and known:
            seen = set(excluded)
            excluded += [i for i in self.snapshot.purchased(request.user_id) if i not in seen]
        with overloaded_as_503():
            items, scores, source = await self.batcher(Row(state_row, history, request.k, excluded))
        reason = None
        if source == "popularity":
            reason = ("no user_id and no history were sent" if request.user_id is None and not request.history
                      else "none of the user's items is known to the model" if known
                      else "the user is unknown and none of the history's items is known" if request.history
                      else "the user is unknown and no history was sent")
        return Recommendation(items=items, scores=scores, source=source, user_known=known,
                              model_version=self.version, reason=reason)


@bentoml.service(name="next_item", **PUBLIC_SERVICE_CONFIG)
class NextItemService:
    bento_model = bentoml.models.BentoModel(ARGS.model_tag)
    snapshot_model = bentoml.models.BentoModel(ARGS.snapshot_tag)
    states_model = bentoml.models.BentoModel(ARGS.states_tag)

    def __init__(self) -> None:
        torch_threads()
        self.champion = _Engine(self.bento_model, self.snapshot_model, self.states_model, ARGS.version)
        self.snapshot, self.batcher = self.champion.snapshot, self.champion.batcher
        self.routing = Routing.from_env()
        self.challenger = None
        if self.routing.challenger_bento:
            other = challenger_args(self.routing.challenger_bento, "next_item")
            self.challenger = _Engine(other.model_tag, other.snapshot_tag, other.states_tag, other.version)
        self.log = prediction_log("next_item")
        self.shadows = Shadows()

    def __is_ready__(self) -> bool:
        return self.snapshot is not None

    @bentoml.api
    async def recommend(self, request: RecommendRequest, /, ctx: bentoml.Context) -> Recommendation:
        request_id, when = request_context(ctx)
        engine, role = self.champion, "champion"
        if self.challenger is not None and self.routing.to_challenger(request.user_id or request_id):
            engine, role = self.challenger, "challenger"
        answer = await engine.answer(request)
        self._log(request_id, when, role, request.user_id, answer)
        if self.challenger is not None and self.routing.mode == "shadow":
            self.shadows.start(self._shadow(request, request_id, when))
        return answer

    async def _shadow(self, request: RecommendRequest, request_id: str, when) -> None:
        self._log(request_id, when, "shadow", request.user_id, await self.challenger.answer(request))

    def _log(self, request_id: str, when, role: str, user_id: str | None, answer: Recommendation) -> None:
        if self.log is not None:
            self.log.record(request_id=request_id, ts=when, model_version=answer.model_version, role=role,
                            user_id=user_id, items=answer.items, scores=answer.scores, source=answer.source)

    @bentoml.api
    def metadata(self) -> Metadata:
        return metadata(ARGS, self.snapshot.meta, self.batcher.stats, self.routing, self.log,
                        self.challenger.version if self.challenger else None)

    @bentoml.on_shutdown
    def _flush_log(self) -> None:
        if self.log is not None:
            self.log.close()


NextItemService.add_asgi_middleware(RequestGuard)   # JSON only, bounded, errors as documented


__all__ = ["MAX_K", "NextItemService"]
