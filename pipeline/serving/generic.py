"""A service for any family whose pyfunc takes rows of named columns and returns a table.

``POST /predict`` with ``{"rows": [{column: value, ...}, ...]}`` answers ``{"predictions": [...]}``,
one record per row, as the pyfunc's ``predict`` returned them; ``/metadata``, ``/readyz`` and
``/livez`` as for the other services. A new family can ship on it before it has a service of its
own (``ModelSpec.service = "pipeline.serving.generic:PyfuncService"``).
"""

from __future__ import annotations

from typing import Annotated, Any

import bentoml
import pandas as pd
from pydantic import Field

from pipeline.serving.api import Metadata
from pipeline.serving.common import PUBLIC_SERVICE_CONFIG, bento_args, load_pyfunc, metadata, torch_threads
from pipeline.serving.guard import RequestGuard

ARGS = bento_args(None)
MAX_ROWS = 10_000


@bentoml.service(name="pyfunc", **PUBLIC_SERVICE_CONFIG)
class PyfuncService:
    bento_model = bentoml.models.BentoModel(ARGS.model_tag)
    snapshot_model = bentoml.models.BentoModel(ARGS.snapshot_tag)

    def __init__(self) -> None:
        from pipeline.serving.snapshot import FeatureSnapshot

        torch_threads()
        self.pyfunc = load_pyfunc(self.bento_model)
        self.snapshot = FeatureSnapshot.load(self.snapshot_model.path)

    @bentoml.api
    def predict(self, rows: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_ROWS)]) -> dict:
        out = self.pyfunc.predict(pd.DataFrame.from_records(rows))
        return {"predictions": out.to_dict("records")}

    @bentoml.api
    def metadata(self) -> Metadata:
        return metadata(ARGS, self.snapshot.meta)


PyfuncService.add_asgi_middleware(RequestGuard)  # type: ignore[attr-defined]  # added by @bentoml.service   # JSON only, bounded, errors as documented
