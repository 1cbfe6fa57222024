"""Request and response schemas of the services, with their limits.

Requests are validated before any model work: an unknown field, a wrong type, ``k`` out of range or
too many candidates is a 400 with pydantic's message naming the field, never a 500.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from pipeline.families.purchase_propensity.features import PROPENSITY_DENSE

MAX_K = 100
MAX_HISTORY = 200
MAX_EXCLUDE = 1000
MAX_CANDIDATES = 1000
DEFAULT_K = 10

Id = Annotated[str, Field(min_length=1, max_length=256)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(Strict):
    """A user id, a recent history, or both (the history's items are taken as the newest)."""

    user_id: Id | None = None
    history: list[Id] = Field(default_factory=list, max_length=MAX_HISTORY)
    k: StrictInt = Field(DEFAULT_K, ge=1, le=MAX_K)
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_EXCLUDE,
                              description="items never to recommend, e.g. out of stock")
    exclude_purchased: StrictBool = Field(False, description="leave out what the user already bought")


class Recommendation(BaseModel):
    items: list[str]
    scores: list[float]
    source: Literal["model", "popularity"]   # popularity: a cold start (no known history)
    user_known: bool
    model_version: str
    reason: str | None = Field(None, description="why the answer is popularity, when it is")


class Candidate(Strict):
    """A (user, item) pair; features are looked up by user id unless the caller sends its own."""

    user_id: Id | None = None
    item_id: Id
    category: str | None = None
    brand: str | None = None
    features: dict[str, float] | None = Field(None, description=f"all of: {', '.join(PROPENSITY_DENSE)}")

    @model_validator(mode="after")
    def _features_complete(self) -> Candidate:
        if self.features is None:
            if self.user_id is None:
                raise ValueError("a candidate needs a user_id or its features")
            return self
        missing = [f for f in PROPENSITY_DENSE if f not in self.features]
        unknown = sorted(set(self.features) - set(PROPENSITY_DENSE))
        if missing or unknown:
            raise ValueError(f"features: missing {missing}, unknown {unknown}" if unknown else
                             f"features: missing {missing}")
        return self


class PropensityRequest(Strict):
    candidates: list[Candidate] = Field(min_length=1, max_length=MAX_CANDIDATES)


class Probabilities(BaseModel):
    probabilities: list[float]
    model_version: str


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
    batching: dict[str, float] | None = Field(None, description="this worker's batches so far: count, rows, "
                                                                  "mean and largest size, requests refused")
    challenger: dict[str, Any] | None = Field(None, description="the challenger served beside this model: "
                                                                "version, Bento tag, mode (shadow or canary), share, "
                                                                "shadow answers that failed in this worker")
    prediction_log: dict[str, Any] | None = Field(None, description="where this worker logs its answers, how "
                                                                    "many it wrote, holds and dropped (by reason)")
