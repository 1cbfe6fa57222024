"""The ``fraud`` service: ``/score`` (orders in; a score, a band and the top reasons out),
``/chargebacks`` (chargebacks as they arrive, which the next orders of the same account, device and
card count; a notice names the order, whose keys the service knows), ``/signups`` (accounts as they
are opened), ``/sessions`` (visits as they begin) and ``/metadata``.

An order's features are computed from the packaged snapshot of earlier orders and first sightings,
plus the orders this worker scored since (``serving.OrderScorer``), as of the order's own time; or
taken as sent. The orders of concurrent requests share one feature step and one model call
(``pipeline.serving.batching``). A missing order time, a negative amount, a currency that is not an
ISO code or not the shop's is a 400 that names the field.
"""

from __future__ import annotations

import bentoml
from bentoml.exceptions import InvalidArgument

from pipeline.families.fraud.serving import (
    ChargebackRequest,
    Recorded,
    ScoreRequest,
    Scores,
    SessionRequest,
    SignupRequest,
)
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

ARGS = bento_args("fraud")


class FraudMetadata(Metadata):
    scorer: str
    currency: str
    bands: dict
    validation: dict
    policy: dict


class _Engine:
    """One model version's pyfunc, snapshot and batcher (the champion's, or a challenger's)."""

    def __init__(self, model, snapshot, version: str) -> None:
        from pipeline.families.fraud.serving import OrderScorer
        from pipeline.serving.batching import MicroBatcher
        from pipeline.serving.snapshot import FeatureSnapshot

        self.pyfunc = load_pyfunc(model).unwrap_python_model()
        self.snapshot = FeatureSnapshot.load(snapshot.path)
        self.scorer = OrderScorer(self.pyfunc, self.snapshot)
        # Orders are remembered after their answers are sent, before the next batch is scored. A
        # batch is scored on the event loop (``inline``): its work is under a millisecond of Python
        # that holds the GIL, so a thread would only add handoffs (make bench-fraud-serve, 8 clients:
        # 1.95 ms of server CPU a request inline against 2.29 on the batch thread).
        self.batcher = MicroBatcher(
            lambda requests: self.scorer.score_requests(requests, remember=False),
            size=len,
            after=self.scorer.remember,
            inline=True,
            **BATCHING.batcher_args(1),
        )
        self.version = str(version)

    async def answer(self, request: ScoreRequest) -> Scores:
        for i, order in enumerate(request.orders):
            if order.currency is not None and order.currency != self.pyfunc.currency:
                raise InvalidArgument(
                    f"orders[{i}].currency: {order.currency!r} is not the shop's currency "
                    f"({self.pyfunc.currency}); send amounts in {self.pyfunc.currency}"
                )
        with overloaded_as_503():
            scored = await self.batcher(request.orders)
        return Scores(scores=scored, model_version=self.version)


@bentoml.service(name="fraud", **PUBLIC_SERVICE_CONFIG)
class FraudService:
    bento_model = bentoml.models.BentoModel(ARGS.model_tag)
    snapshot_model = bentoml.models.BentoModel(ARGS.snapshot_tag)

    def __init__(self) -> None:
        # One order a request: one thread (an intra-op team spins its idle threads between calls).
        torch_threads(default=1)
        self.champion = _Engine(self.bento_model, self.snapshot_model, ARGS.version)
        self.traffic = Traffic(
            "fraud",
            self.champion,
            lambda other: _Engine(other.model_tag, bentoml.models.get(other.snapshot_tag), other.version),
            # Each order logged by its id, so the monitor finds its chargeback (or its maturity).
            lambda request, answer: (
                [s.order_id for s in answer.scores],
                [s.score for s in answer.scores],
                "model",
                [],
            ),
        )

    def __is_ready__(self) -> bool:
        return self.champion is not None

    def _engines(self) -> list[_Engine]:
        """Every model version served here (the champion, and a challenger if any): what a shop
        reports (chargebacks, sign-ups, sessions) is written to each one's store."""
        return [self.champion] + ([self.traffic.challenger] if self.traffic.challenger is not None else [])

    @bentoml.api
    async def score(self, request: ScoreRequest, /, ctx: bentoml.Context) -> Scores:
        users = {o.user_id for o in request.orders}
        return await self.traffic.answer(request, ctx, users.pop() if len(users) == 1 else None)

    @bentoml.api
    def chargebacks(self, request: ChargebackRequest, /) -> Recorded:
        """Chargebacks as they arrive (from the payment provider's notices): the order's id and the
        time suffice for an order this service saw; its keys are taken as it saw them. Every model
        version served here reads them: the champion's and a challenger's stores are both written.
        An order never seen, sent without its account, is a 400 naming it, and nothing is kept."""
        from pipeline.families.fraud.serving import UnknownOrder

        engines = self._engines()
        try:
            # Every engine's keys first: a notice one of them cannot place keeps nothing anywhere.
            completed = [engine.scorer.complete_chargebacks(request.chargebacks) for engine in engines]
        except UnknownOrder as exc:
            raise InvalidArgument(str(exc)) from None
        counts = [engine.scorer.recent.add_chargebacks(c) for engine, c in zip(engines, completed, strict=True)]
        return Recorded(recorded=counts[0])

    @bentoml.api
    def signups(self, request: SignupRequest, /) -> Recorded:
        """Accounts as they are opened, each with the device, country and card of its sign-up: an
        account opened after the snapshot is otherwise unknown, so its first orders would look as
        old as the shop's oldest customers'. Written to every served version's store."""
        engines = self._engines()
        counts = [engine.scorer.record_signups(request.signups) for engine in engines]
        return Recorded(recorded=counts[0])

    @bentoml.api
    def sessions(self, request: SessionRequest, /) -> Recorded:
        """Visits as they begin (a login, a browsing session's first page), each with its device,
        country and card if any: an account that browsed after the snapshot, before its first
        order, would otherwise look like a first visit from a new device. Written to every served
        version's store."""
        engines = self._engines()
        counts = [engine.scorer.record_sessions(request.sessions) for engine in engines]
        return Recorded(recorded=counts[0])

    @bentoml.api
    def metadata(self) -> FraudMetadata:
        pyfunc = self.champion.pyfunc
        figures = pyfunc.figures or {}
        return FraudMetadata(
            **self.traffic.metadata(ARGS, self.champion.snapshot.meta).model_dump(),
            scorer=pyfunc.kind,
            currency=pyfunc.currency,
            bands=pyfunc.bands.to_dict(),
            validation=figures.get("validation", {}),
            policy=figures.get("policy", {}),
        )

    @bentoml.on_shutdown
    def _flush_log(self) -> None:
        self.traffic.close()


FraudService.add_asgi_middleware(RequestGuard)  # type: ignore[attr-defined]  # added by @bentoml.service
