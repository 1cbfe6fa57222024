"""The ``purchase_propensity`` service: probabilities from the packaged DCN-v2 pyfunc.

``PropensityModel`` holds the pyfunc behind one batchable endpoint over feature rows, so the
candidates of concurrent requests share one forward pass. ``PropensityService`` validates the
request and builds each candidate's feature row: from the feature snapshot by user id (the same
aggregates training used, as of the snapshot's cutoff), or from the features the caller sent.
"""

from __future__ import annotations

import bentoml
import pandas as pd
import polars as pl

from pipeline.families.purchase_propensity.features import PROPENSITY_DENSE
from pipeline.serving.api import Metadata, Probabilities, PropensityRequest
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

ARGS = bento_args("purchase_propensity")
INPUT_COLUMNS = ("item_id", "category", "brand", *PROPENSITY_DENSE)


@bentoml.service(name="purchase_propensity_model", **MODEL_SERVICE_CONFIG)
class PropensityModel:
    bento_model = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        torch_threads()
        self.pyfunc = bentoml.mlflow.load_model(self.bento_model)

    # A batch is a list of feature rows; a request of many candidates is many rows.
    @bentoml.api(batchable=ADAPTIVE_BATCHING, max_batch_size=MAX_BATCH_SIZE * 16, max_latency_ms=MAX_LATENCY_MS)
    def score(self, rows: list[dict]) -> list[float]:
        frame = pd.DataFrame.from_records(rows, columns=list(INPUT_COLUMNS))
        return self.pyfunc.predict(frame)["probability"].astype(float).tolist()


@bentoml.service(name="purchase_propensity", **PUBLIC_SERVICE_CONFIG)
class PropensityService:
    model = bentoml.depends(PropensityModel)
    snapshot_model = bentoml.models.BentoModel(ARGS.snapshot_tag)

    def __init__(self) -> None:
        from pipeline.serving.snapshot import FeatureSnapshot

        self.snapshot = FeatureSnapshot.load(self.snapshot_model.path)
        self.catalog = self.snapshot.tables["catalog"]

    def __is_ready__(self) -> bool:
        return self.snapshot is not None

    def feature_rows(self, request: PropensityRequest) -> list[dict]:
        looked_up = [c for c in request.candidates if c.features is None]
        rows_by_id = {}
        if looked_up:
            frame = self.snapshot.propensity_inputs([c.user_id for c in looked_up], [c.item_id for c in looked_up])
            rows_by_id = dict(zip(map(id, looked_up), frame.iter_rows(named=True), strict=True))
        sent = [c for c in request.candidates if c.features is not None]
        catalog = {}
        if sent:
            known = self.catalog.filter(pl.col("item_id").is_in([c.item_id for c in sent]))
            catalog = {r["item_id"]: r for r in known.iter_rows(named=True)}
        rows = []
        for c in request.candidates:
            if c.features is None:
                rows.append(rows_by_id[id(c)])
                continue
            item = catalog.get(c.item_id, {})
            rows.append({"item_id": c.item_id, "category": c.category or item.get("category"),
                         "brand": c.brand or item.get("brand"), **c.features})
        return rows

    @bentoml.api
    async def purchase_probability(self, request: PropensityRequest, /) -> Probabilities:
        probabilities = await call_with_retry(self.model.to_async.score, self.feature_rows(request))
        return Probabilities(probabilities=probabilities, model_version=str(ARGS.version))

    @bentoml.api
    def metadata(self) -> Metadata:
        return metadata(ARGS, self.snapshot.meta)


PropensityService.add_asgi_middleware(RequestGuard)   # JSON only, bounded, errors as documented
