"""The model families: one row per family, one module per family.

``FAMILIES`` maps a family's name (the registered model's name) to the module whose ``SPEC`` is
its ``ModelSpec``. Modules are imported on first use, so reading the names (CLI choices, DAG
files at parse time) costs nothing. ``register`` adds a family at run time (a plugin, a test).
"""

from __future__ import annotations

import importlib

from pipeline.core.errors import BadInput
from pipeline.families.spec import ModelSpec, ParityOutcome, Post

__all__ = ["FAMILIES", "ModelSpec", "ParityOutcome", "Post", "UnknownFamily", "get", "names", "register"]

FAMILIES: dict[str, str] = {
    "next_item": "pipeline.families.next_item",
    "purchase_propensity": "pipeline.families.purchase_propensity",
    "price": "pipeline.families.price",
    "fraud": "pipeline.families.fraud",
}
_loaded: dict[str, ModelSpec] = {}


class UnknownFamily(BadInput):
    """A model name that is not a registered family."""


def names() -> tuple[str, ...]:
    """Every family's name, in table order, registered ones included."""
    return tuple(dict.fromkeys([*FAMILIES, *_loaded]))


def get(name: str) -> ModelSpec:
    """The spec of family ``name``.

    Raises:
        UnknownFamily: no such family; the message lists the known ones.
    """
    if name in _loaded:
        return _loaded[name]
    if name not in FAMILIES:
        raise UnknownFamily(f"unknown model {name!r}; models: {', '.join(names())}")
    spec = importlib.import_module(FAMILIES[name]).SPEC
    _loaded[name] = spec
    return spec


def register(spec: ModelSpec) -> ModelSpec:
    """Add (or replace) a family at run time; returns it."""
    _loaded[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a family added with ``register`` (the built-in rows stay)."""
    _loaded.pop(name, None)
