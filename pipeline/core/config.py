"""Configuration files read once, at the edge, into validated frozen dataclasses.

``params.yaml`` (``pipeline.core.params``) and ``policy.yaml`` (``pipeline.lifecycle.gate``,
``pipeline.lifecycle.monitor``) are read with pydantic dataclasses: the fields' types and bounds are
the validation, and every error names the file, the key and the value, e.g.
``params.yaml: validate.history_days: must be an integer, got 'seven'``. They stay dataclasses
(``dataclasses.replace``, ``asdict`` and ``fields`` work on them). Declare one with
``@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ConfigDict, ValidationError

# Unknown keys are errors; values are coerced only where no information is lost (3.0 -> 3, a list -> a tuple).
STRICT = ConfigDict(extra="forbid")  # frozen: set by each dataclass decorator

T = TypeVar("T")

_SHORT = {
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "int_type": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}


def read_yaml(path: Path, error: type[ValueError]) -> dict[str, Any]:
    """The mapping a YAML file holds, or ``error`` naming the file and what is wrong with it."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def section(cls: type[T], raw: Any, where: str, error: type[ValueError]) -> T:
    """``cls(**raw)``, or ``error`` with one line per problem: ``<where>.<key>: <what>, got <value>``.

    ``where`` is the file and the section, e.g. ``params.yaml: train_recommender``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise error(f"{where}: expected a mapping of keys, got {raw!r}")
    try:
        return cls(**raw)
    except ValidationError as exc:
        raise error(describe(exc, where, cls)) from None
    except TypeError as exc:  # a required key missing before validation starts
        raise error(f"{where}: {exc}") from None


def describe(exc: ValidationError, where: str, cls: type | None = None) -> str:
    """A pydantic validation error as lines naming the key and the value."""
    known = ", ".join(getattr(cls, "__dataclass_fields__", {})) if cls is not None else ""
    lines = []
    for err in exc.errors(include_url=False):
        names = [str(p) for p in err["loc"] if not isinstance(p, int)]
        positions = [p for p in err["loc"] if isinstance(p, int)]
        key = ".".join(names)
        kind = err["type"]
        if positions and kind == "missing":
            lines.append(f"{where}.{key}: too few values (item {positions[0]} is missing)")
        elif kind == "unexpected_keyword_argument":
            lines.append(f"{where}.{key}: not a known key" + (f" (keys: {known})" if known else ""))
        elif kind == "missing_keyword_argument" or kind == "missing":
            lines.append(f"{where}.{key}: required")
        elif kind == "value_error":
            message = str(err.get("ctx", {}).get("error", err["msg"]))  # our own check's words
            lines.append(f"{where}.{key}: {message}" if key else f"{where}: {message}")
        else:
            what = _SHORT.get(kind, err["msg"].replace("Input should be", "must be"))
            at = f" (item {positions[0]})" if positions else ""
            lines.append(f"{where}.{key}{at}: {what}, got {err.get('input')!r}")
    return "\n".join(lines)
