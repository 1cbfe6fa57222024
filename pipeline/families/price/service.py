"""The ``price`` service: ``/forecast`` (demand per item and period, at the current or a planned
price) and ``/price`` (the recommended price per item, or why there is none).

Forecasts by item id read the rows packaged with the Bento (``serving.serving_states``: every
item's history at the snapshot's next period); rows sent whole are forecast as sent. Forecasts of
concurrent requests share one model call (``pipeline.serving.batching``). A request naming an
unknown item, a horizon beyond the trained one or a negative cost is a 400 that names the field.
"""

from __future__ import annotations

import bentoml
from bentoml.exceptions import InvalidArgument

from pipeline.core.errors import BadInput
from pipeline.families.price.serving import ForecastRequest, Forecasts, PriceRequest, Prices, forecasts_of
from pipeline.serving.api import Metadata
from pipeline.serving.common import BATCHING, PUBLIC_SERVICE_CONFIG, Traffic, bento_args, load_pyfunc, overloaded_as_503
from pipeline.serving.guard import RequestGuard

ARGS = bento_args("price")
ROWS_PER_REQUEST = 10
PERIOD_DAYS = {"day": 1, "week": 7}


class PriceMetadata(Metadata):
    period: str
    horizon: int
    origin: str
    items: int
    items_sample: list[str]
    pricing: dict
    elasticity: dict


class _Engine:
    """One model version's pyfunc, packaged state and batcher (the champion's, or a challenger's)."""

    def __init__(self, model, states, version: str) -> None:
        from pipeline.families.price.serving import PriceEngine
        from pipeline.serving.batching import MicroBatcher

        self.pyfunc = load_pyfunc(model).unwrap_python_model()
        self.engine = PriceEngine(self.pyfunc, states.path)
        self.batcher = MicroBatcher(
            self.engine.forecast_requests, size=lambda rows: rows.height, **BATCHING.batcher_args(ROWS_PER_REQUEST)
        )
        self.version = str(version)

    async def answer(self, request: ForecastRequest) -> Forecasts:
        try:
            rows = self.engine.lookup(request) if request.item_ids is not None else self.engine.sent_rows(request)
        except BadInput as exc:
            raise InvalidArgument(str(exc)) from None
        with overloaded_as_503():
            units = await self.batcher(rows)
        origin = self.engine.meta["origin"] if request.item_ids is not None else None
        return Forecasts(
            forecasts=forecasts_of(rows, units),
            origin=origin,
            period=self.engine.config.period,
            model_version=self.version,
        )


@bentoml.service(name="price", **PUBLIC_SERVICE_CONFIG)
class PriceService:
    bento_model = bentoml.models.BentoModel(ARGS.model_tag)
    snapshot_model = bentoml.models.BentoModel(ARGS.snapshot_tag)
    states_model = bentoml.models.BentoModel(ARGS.states_tag)

    def __init__(self) -> None:
        from pipeline.serving.snapshot import FeatureSnapshot

        self.champion = _Engine(self.bento_model, self.states_model, ARGS.version)
        self.snapshot_meta = FeatureSnapshot.load(self.snapshot_model.path).meta
        self.traffic = Traffic(
            "price",
            self.champion,
            lambda other: _Engine(other.model_tag, bentoml.models.get(other.states_tag), other.version),
            # Each forecast logged as item|target period|days, so the monitor knows which sales judge it.
            lambda request, answer: (
                [f"{f.item_id}|{f.target_period}|{PERIOD_DAYS[answer.period]}" for f in answer.forecasts],
                [f.units for f in answer.forecasts],
                "model",
                [],
            ),
        )

    def __is_ready__(self) -> bool:
        return self.champion is not None

    @bentoml.api
    async def forecast(self, request: ForecastRequest, /, ctx: bentoml.Context) -> Forecasts:
        return await self.traffic.answer(request, ctx, None)

    @bentoml.api
    def price(self, request: PriceRequest, /) -> Prices:
        try:
            prices = self.champion.engine.prices(request)
        except BadInput as exc:
            raise InvalidArgument(str(exc)) from None
        return Prices(prices=prices, period=self.champion.engine.config.period, model_version=self.champion.version)

    @bentoml.api
    def metadata(self) -> PriceMetadata:
        engine = self.champion.engine
        base = self.traffic.metadata(ARGS, self.snapshot_meta).model_dump()
        return PriceMetadata(
            **base,
            period=engine.config.period,
            horizon=engine.config.horizon,
            origin=engine.meta["origin"],
            items=len(engine.items),
            items_sample=engine.sample,
            pricing=engine.rules.to_dict(),
            elasticity=getattr(self.champion.pyfunc, "pricing_meta", {}),
        )

    @bentoml.on_shutdown
    def _flush_log(self) -> None:
        self.traffic.close()


PriceService.add_asgi_middleware(RequestGuard)  # type: ignore[attr-defined]  # added by @bentoml.service
