"""Stage parameters: ``params.yaml`` parsed once, at the edge, into frozen dataclasses."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

DEFAULT_PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"
# SHOPML_PARAMS points a deployment (or a test) at another params file.
PARAMS_ENV = "SHOPML_PARAMS"


class ParamsError(ValueError):
    """params.yaml is missing a section, has an unknown key, or a value of the wrong type."""


@dataclass(frozen=True)
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
    format: str = "csv"
    # A change in behaviour from day ``shift_day`` (0-based) on, to exercise monitoring: ``new_items``
    # launches half as many items again as the shop started with, which take most of the traffic;
    # ``prices`` raises every price by half. ``none``: the shop behaves the same every day.
    shift: str = "none"
    shift_day: int = 0


@dataclass(frozen=True)
class IngestParams:
    events_source: str = "landing/events/events-{date}.csv"
    catalog_source: str | None = "landing/catalog/catalog-{date}.csv"
    adapter: str = "canonical"


@dataclass(frozen=True)
class ValidateParams:
    history_days: int = 7
    volume_band: tuple[float, float] = (0.25, 4.0)
    purchase_rate: tuple[float, float] = (0.002, 0.25)
    max_unknown_item_share: float = 0.02


def _check_runtime(params) -> None:
    if params.precision not in ("auto", "bf16", "fp32"):
        raise ParamsError(f"precision must be auto, bf16 or fp32, got {params.precision!r}")
    if params.compile not in ("auto", True, False):
        raise ParamsError(f"compile must be auto, true or false, got {params.compile!r}")
    if not isinstance(params.device, str) or not params.device:
        raise ParamsError(f"device must be auto, cpu, cuda, cuda:N or mps, got {params.device!r}")


@dataclass(frozen=True)
class TrainRecommenderParams:
    valid_days: int = 2
    test_days: int = 2
    max_len: int = 50
    dim: int = 64
    heads: int = 2
    layers: int = 2
    dropout: float = 0.3
    loss: str = "full"             # full: softmax over the catalog; sampled: sampled softmax with logQ
    n_negatives: int = 256         # negatives per batch of the sampled softmax
    blend: bool = True             # add co-occurrence with a weight chosen on validation (0: SASRec alone)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.002
    patience: int = 3
    seed: int = 0
    recent_days: int = 3
    # How to train, not what: they do not change the model's identity (a killed run resumes on other hardware).
    device: str = "auto"           # auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps
    precision: str = "auto"        # auto (bf16 autocast on CUDA, float32 elsewhere), bf16, fp32
    compile: bool | str = "auto"   # torch.compile: auto (on CUDA only), true, false

    def __post_init__(self) -> None:
        _check_runtime(self)
        if self.loss not in ("full", "sampled"):
            raise ParamsError(f"train_recommender.loss: {self.loss!r} is not one of full, sampled")


@dataclass(frozen=True)
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
    wide: bool = True
    id_embeddings: bool = False
    constant_inputs: int = 24
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.001
    weight_decay: float = 0.0001
    patience: int = 5
    seed: int = 0
    # How to train, not what: they do not change the model's identity (a killed run resumes on other hardware).
    device: str = "auto"           # auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps
    precision: str = "auto"        # auto (bf16 autocast on CUDA, float32 elsewhere), bf16, fp32
    compile: bool | str = "auto"   # torch.compile: auto (on CUDA only), true, false

    def __post_init__(self) -> None:
        _check_runtime(self)
        # The validation rows' labels (from train_end) must end inside the validation period, the
        # test rows' inside the test period; a longer horizon reads labels from the next period.
        for period in ("valid_days", "test_days"):
            if self.horizon_days > getattr(self, period):
                raise ParamsError(f"train_propensity.horizon_days ({self.horizon_days}) is longer than {period} "
                                  f"({getattr(self, period)}): labels would be read from the next period")


@dataclass(frozen=True)
class Params:
    generate: GenerateParams
    ingest: IngestParams
    validate: ValidateParams
    train_recommender: TrainRecommenderParams
    train_propensity: TrainPropensityParams


T = TypeVar("T")


def _section(cls: type[T], raw: dict[str, Any] | None, name: str, path: Path) -> T:
    raw = raw or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(f"{path}: section '{name}' has unknown keys {unknown}")
    values = {}
    for key, value in raw.items():
        default = fields[key].default
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise ParamsError(f"{path}: {name}.{key} must be a list of {len(default)}, got {value!r}")
            value = tuple(type(d)(v) for d, v in zip(default, value, strict=True))
        elif isinstance(default, bool) or default is None:
            pass
        elif isinstance(default, (int, float)) and not isinstance(value, (int, float)):
            raise ParamsError(f"{path}: {name}.{key} must be a number, got {value!r}")
        elif isinstance(default, int) and isinstance(value, float) and not value.is_integer():
            raise ParamsError(f"{path}: {name}.{key} must be an integer, got {value!r}")
        elif isinstance(default, int):
            value = int(value)
        values[key] = value
    try:
        return cls(**values)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {name}.{exc}") from None


def load_params(path: Path | str | None = None) -> Params:
    """Read ``params.yaml``.

    Args:
        path: the file; ``$SHOPML_PARAMS``, else the project's ``params.yaml``, when omitted.

    Raises:
        ParamsError: the file is malformed, or a section has unknown or mistyped keys.
    """
    path = Path(path or os.environ.get(PARAMS_ENV) or DEFAULT_PARAMS_FILE)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ParamsError(f"params file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return Params(
        generate=_section(GenerateParams, raw.get("generate"), "generate", path),
        ingest=_section(IngestParams, raw.get("ingest"), "ingest", path),
        validate=_section(ValidateParams, raw.get("validate"), "validate", path),
        train_recommender=_section(TrainRecommenderParams, raw.get("train_recommender"), "train_recommender", path),
        train_propensity=_section(TrainPropensityParams, raw.get("train_propensity"), "train_propensity", path),
    )
