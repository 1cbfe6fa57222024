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

from pipeline.families.next_item.serving import MAX_HISTORY, MAX_K, Recommendation, RecommendRequest, Row
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

ARGS = bento_args("next_item")


class _Engine:
    """One model version's pyfunc, snapshot, user states and batcher (the champion's, or a
    challenger's beside it)."""

    def __init__(self, model, snapshot, states, version: str) -> None:
        """``model`` a BentoML model or tag; ``snapshot`` and ``states`` stored BentoML models."""
        from pipeline.families.next_item.serving import Histories, NextItemRanker
        from pipeline.families.next_item.states import UserStateTable
        from pipeline.serving.batching import MicroBatcher
        from pipeline.serving.snapshot import FeatureSnapshot

        # The pyfunc's own methods, without MLflow's per-call input schema check: the rows are
        # built here, always valid (the parity check proves the answers are the evaluated ones).
        self.pyfunc = load_pyfunc(model).unwrap_python_model()
        self.snapshot = FeatureSnapshot.load(snapshot.path)
        self.histories = self.snapshot.view(Histories)
        self.states = UserStateTable(states.path)
        self.ranker = NextItemRanker(self.pyfunc, self.snapshot, self.states)
        self.batcher = MicroBatcher(self.ranker.rank_rows, **BATCHING.batcher_args())
        self.version = str(version)

    async def answer(self, request: RecommendRequest) -> Recommendation:
        known = request.user_id is not None and self.histories.knows(request.user_id)
        state_row = self.states.row(request.user_id) if known and not request.history else None
        history = None
        if state_row is None:
            history = self.histories.served_history(request.user_id, request.history, MAX_HISTORY)
        excluded = list(dict.fromkeys(request.exclude))
        if request.exclude_purchased and known:
            seen = set(excluded)
            excluded += [i for i in self.histories.purchased(request.user_id) if i not in seen]
        with overloaded_as_503():
            items, scores, source = await self.batcher(Row(state_row, history, request.k, excluded))
        reason = None
        if source == "popularity":
            reason = (
                "no user_id and no history were sent"
                if request.user_id is None and not request.history
                else "none of the user's items is known to the model"
                if known
                else "the user is unknown and none of the history's items is known"
                if request.history
                else "the user is unknown and no history was sent"
            )
        return Recommendation(
            items=items, scores=scores, source=source, user_known=known, model_version=self.version, reason=reason
        )


@bentoml.service(name="next_item", **PUBLIC_SERVICE_CONFIG)
class NextItemService:
    bento_model = bentoml.models.BentoModel(ARGS.model_tag)
    snapshot_model = bentoml.models.BentoModel(ARGS.snapshot_tag)
    states_model = bentoml.models.BentoModel(ARGS.states_tag)

    def __init__(self) -> None:
        torch_threads()
        self.champion = _Engine(self.bento_model, self.snapshot_model, self.states_model, ARGS.version)
        self.snapshot, self.batcher = self.champion.snapshot, self.champion.batcher
        self.traffic = Traffic(
            "next_item",
            self.champion,
            lambda other: _Engine(
                other.model_tag,
                bentoml.models.get(other.snapshot_tag),
                bentoml.models.get(other.states_tag),
                other.version,
            ),
            lambda request, answer: (answer.items, answer.scores, answer.source, request.history),
        )

    def __is_ready__(self) -> bool:
        return self.snapshot is not None

    @bentoml.api
    async def recommend(self, request: RecommendRequest, /, ctx: bentoml.Context) -> Recommendation:
        return await self.traffic.answer(request, ctx, request.user_id)

    @bentoml.api
    def metadata(self) -> Metadata:
        return self.traffic.metadata(ARGS, self.snapshot.meta)

    @bentoml.on_shutdown
    def _flush_log(self) -> None:
        self.traffic.close()


NextItemService.add_asgi_middleware(RequestGuard)  # type: ignore[attr-defined]  # added by @bentoml.service   # JSON only, bounded, errors as documented


__all__ = ["MAX_K", "NextItemService"]
