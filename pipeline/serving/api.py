"""What every service's schemas share: the strict base (an unknown field is a 400), ids with their
limits, the ``/metadata`` answer. Each family's request and response schemas live in its folder
(``pipeline.families.<family>.serving``).

Requests are validated before any model work: an unknown field, a wrong type, ``k`` out of range or
too many candidates is a 400 with pydantic's message naming the field, never a 500.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

Id = Annotated[str, Field(min_length=1, max_length=256)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metadata(BaseModel):
    model: str
    version: str
    bento_tag: str
    dataset_version: str
    git_commit: str
    run_id: str
    features_as_of: str
    features_dataset_version: str
    adaptive_batching: bool
    batching: dict[str, float] | None = Field(
        None, description="this worker's batches so far: count, rows, mean and largest size, requests refused"
    )
    challenger: dict[str, Any] | None = Field(
        None,
        description="the challenger served beside this model: "
        "version, Bento tag, mode (shadow or canary), share, "
        "shadow answers that failed in this worker",
    )
    prediction_log: dict[str, Any] | None = Field(
        None, description="where this worker logs its answers, how many it wrote, holds and dropped (by reason)"
    )
