"""Stage parameters: ``params.yaml`` parsed once, at the edge, into validated frozen dataclasses
(``pipeline.core.config``: every error names the file, the key and the value)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, StrictBool, model_validator
from pydantic.dataclasses import dataclass

from pipeline.core.config import STRICT, read_yaml, section
from pipeline.core.errors import BadInput

Precision = Literal["auto", "bf16", "fp32"]
Compile = StrictBool | Literal["auto"]

DEFAULT_PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"
# SHOPML_PARAMS points a deployment (or a test) at another params file.
PARAMS_ENV = "SHOPML_PARAMS"


class ParamsError(BadInput):
    """params.yaml is missing a section, has an unknown key, or a value of the wrong type."""


@dataclass(frozen=True, config=STRICT)
class GenerateParams:
    seed: int = 42
    start_date: str = "2026-11-01"
    days: int = 3
    events_per_day: int = 20_000
    initial_users: int = 4_000
    initial_items: int = 3_000
    categories: int = 24
    brands: int = 150
    new_users_per_day: float = 0.02
    new_items_per_day: float = 0.005
    format: Literal["csv", "parquet"] = "csv"
    # A change in behaviour from day ``shift_day`` (0-based) on, to exercise monitoring: ``new_items``
    # launches half as many items again as the shop started with, which take most of the traffic;
    # ``prices`` raises every price by half. ``none``: the shop behaves the same every day.
    shift: Literal["none", "new_items", "prices"] = "none"
    shift_day: int = 0
    # Prices that move (``pipeline.data.generate``): list-price changes that follow each item's
    # demand trend, promotions aimed at slow sellers, a known elasticity per item; false: every
    # price stays where it started.
    price_dynamics: StrictBool = True
    # Chance that a returning buyer's session opens on what they bought last (replenishment). It
    # makes yesterday's price matter today (a promotion's buyers come back), which no single
    # elasticity describes; the elasticity test sets it to 0.
    repeat_sessions: float = Field(default=0.3, ge=0, le=1)
    # Fraudulent orders added per genuine order (``pipeline.data.generate_risk``: card testing,
    # account takeover, new accounts, resellers), each confirmed by a chargeback 3 to 60 days later.
    fraud_rate: float = Field(default=0.02, ge=0, le=0.5)
    # Genuine orders disputed by the customers who placed them (first-party fraud), per genuine
    # order: off by default; ``bench_fraud --first-party`` turns it on for a harder shop.
    first_party_rate: float = Field(default=0.0, ge=0, le=0.5)
    # The first and last day after its order a chargeback arrives (skewed toward the first). A
    # short range gives a short shop (the demo, the tests) labels it can mature within its days.
    chargeback_days: tuple[float, float] = (3.0, 60.0)

    @model_validator(mode="after")
    def _chargeback_range(self) -> GenerateParams:
        first, last = self.chargeback_days
        if not 0 < first <= last:
            raise ValueError(f"chargeback_days: expected 0 < first <= last, got {list(self.chargeback_days)}")
        return self


@dataclass(frozen=True, config=STRICT)
class IngestParams:
    events_source: str = "landing/events/events-{date}.csv"
    catalog_source: str | None = "landing/catalog/catalog-{date}.csv"
    adapter: str = "canonical"


@dataclass(frozen=True, config=STRICT)
class ValidateParams:
    history_days: int = 7
    volume_band: tuple[float, float] = (0.25, 4.0)
    purchase_rate: tuple[float, float] = (0.002, 0.25)
    max_unknown_item_share: float = 0.02


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda", "mps") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")


@dataclass(frozen=True, config=STRICT)
class TrainRecommenderParams:
    valid_days: int = 2
    test_days: int = 2
    max_len: int = 50
    dim: int = 64
    heads: int = 2
    layers: int = 2
    dropout: float = 0.3
    loss: Literal["full", "sampled"] = "full"  # full: softmax over the catalog; sampled: sampled softmax with logQ
    n_negatives: int = 256  # negatives per batch of the sampled softmax
    blend: StrictBool = True  # add co-occurrence with a weight chosen on validation (0: SASRec alone)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.002
    patience: int = 3
    seed: int = 0
    recent_days: int = 3
    # How to train, not what: they do not change the model's identity (a killed run resumes on other hardware).
    device: str = "auto"  # auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps
    precision: Precision = "auto"  # auto (bf16 autocast on CUDA, float32 elsewhere), bf16, fp32
    compile: Compile = "auto"  # torch.compile: auto (on CUDA only), true, false

    @model_validator(mode="after")
    def _runtime(self) -> TrainRecommenderParams:
        _check_device(self.device)
        return self


@dataclass(frozen=True, config=STRICT)
class TrainPropensityParams:
    valid_days: int = 2
    test_days: int = 2
    horizon_days: int = 2
    lookback_days: int = 3
    cutoff_stride_days: int = 1
    embedding_dim: int = 8
    cross_layers: int = 2
    hidden: tuple[int, int] = (64, 32)
    dropout: float = 0.2
    wide: StrictBool = True
    id_embeddings: StrictBool = False
    constant_inputs: int = 24
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.001
    weight_decay: float = 0.0001
    patience: int = 5
    seed: int = 0
    # How to train, not what: they do not change the model's identity (a killed run resumes on other hardware).
    device: str = "auto"  # auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps
    precision: Precision = "auto"  # auto (bf16 autocast on CUDA, float32 elsewhere), bf16, fp32
    compile: Compile = "auto"  # torch.compile: auto (on CUDA only), true, false

    @model_validator(mode="after")
    def _labels_inside_their_period(self) -> TrainPropensityParams:
        _check_device(self.device)
        # The validation rows' labels (from train_end) must end inside the validation period, the
        # test rows' inside the test period; a longer horizon reads labels from the next period.
        for period in ("valid_days", "test_days"):
            if self.horizon_days > getattr(self, period):
                raise ValueError(
                    f"horizon_days ({self.horizon_days}) is longer than {period} "
                    f"({getattr(self, period)}): labels would be read from the next period"
                )
        return self


@dataclass(frozen=True, config=STRICT)
class TrainPriceParams:
    """The demand-and-price family (``pipeline.families.price``)."""

    period: Literal["day", "week"] = "day"
    valid_days: int = Field(default=2, ge=1)  # the validation origin's days (objective, rounds)
    test_days: int = Field(default=3, ge=1)  # the gate's test origins lie here
    horizon: int = Field(default=2, ge=1)  # periods forecast from an origin
    history: int = Field(default=28, ge=2)  # past periods a forecasting row carries (y_1 .. y_L)
    season: int = Field(default=7, ge=1)  # periods per season (the seasonal naive floor)
    items: int = Field(default=300, ge=1)  # best sellers of the training period modelled
    min_history: int = Field(default=2, ge=1)  # periods an item needs before its first training origin
    backtest_origins: int = Field(default=3, ge=1)  # rolling origins before the test period (figures)
    backtest_step: int = Field(default=1, ge=1)  # periods between them
    rounds: int = Field(default=400, ge=10)  # most boosting rounds; early stopping on validation chooses
    learning_rate: float = Field(default=0.05, gt=0)
    num_leaves: int = Field(default=31, ge=2)
    min_data_in_leaf: int = Field(default=40, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _whole_periods(self) -> TrainPriceParams:
        days = 7 if self.period == "week" else 1
        for name in ("valid_days", "test_days"):
            if getattr(self, name) % days:
                raise ValueError(f"{name} ({getattr(self, name)}) must be whole {self.period}s ({days} days each)")
        if self.valid_days // days < self.horizon:
            raise ValueError(f"valid_days ({self.valid_days}) must hold the horizon ({self.horizon} {self.period}s)")
        if self.test_days // days < self.horizon:
            raise ValueError(f"test_days ({self.test_days}) must hold the horizon ({self.horizon} {self.period}s)")
        if self.season > self.history:
            raise ValueError(f"season ({self.season}) must fit in the history ({self.history} periods)")
        return self


@dataclass(frozen=True, config=STRICT)
class TrainFraudParams:
    """The fraud family (``pipeline.families.fraud``): labels arrive late."""

    # An order without a chargeback counts as genuine only this long after it; each of the split's
    # three gaps is this long (the generator's chargebacks come 3 to 60 days late, most in 30).
    maturity_days: int = Field(default=30, ge=0)
    valid_days: int = Field(default=14, ge=1)  # the bands and early stopping are chosen here
    test_days: int = Field(default=14, ge=1)  # the gate's orders
    min_train_days: int = Field(default=7, ge=1)
    epochs: int = Field(default=30, ge=1)
    seed: int = 0


@dataclass(frozen=True, config=STRICT)
class Params:
    generate: GenerateParams
    ingest: IngestParams
    validate: ValidateParams
    train_recommender: TrainRecommenderParams
    train_propensity: TrainPropensityParams
    train_price: TrainPriceParams
    train_fraud: TrainFraudParams


def load_params(path: Path | str | None = None) -> Params:
    """Read ``params.yaml``.

    Args:
        path: the file; ``$SHOPML_PARAMS``, else the project's ``params.yaml``, when omitted.

    Raises:
        ParamsError: the file is malformed, or a section has unknown or mistyped keys.
    """
    path = Path(path or os.environ.get(PARAMS_ENV) or DEFAULT_PARAMS_FILE)
    raw = read_yaml(path, ParamsError)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"{path}: {unknown[0]}: not a section (sections: {', '.join(SECTIONS)})")
    return Params(
        **{name: section(cls, raw.get(name), f"{path}: {name}", ParamsError) for name, cls in SECTIONS.items()}
    )


SECTIONS = {
    "generate": GenerateParams,
    "ingest": IngestParams,
    "validate": ValidateParams,
    "train_recommender": TrainRecommenderParams,
    "train_propensity": TrainPropensityParams,
    "train_price": TrainPriceParams,
    "train_fraud": TrainFraudParams,
}
