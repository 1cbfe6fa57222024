"""mkdocs hooks: the reference pages that are generated from the code, so they cannot drift from it.

``reference/cli.md`` from the argument parser (``pipeline.cli.build_parser``), ``params.md`` and
``policy.md`` from the validated dataclasses and the files themselves, ``http-api.md`` from each
family's request and response schemas (pydantic's JSON Schema, what the services' OpenAPI holds),
``exit-codes.md`` from ``pipeline.core.errors.EXIT_CODES``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _cli() -> str:
    from pipeline.cli import build_parser

    parser = build_parser()
    out = [
        "# CLI: `shopml`",
        "",
        "Generated from the parser (`pipeline.cli.build_parser`). `python -m pipeline` is the same program.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in action.choices.items():
        out += [f"## shopml {name}", "", sub.description or "", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def _fields(cls) -> list[str]:
    rows = ["| key | type | default |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        if hasattr(default, "default"):  # a pydantic Field with bounds
            default = default.default
        rows.append(f"| `{f.name}` | `{f.type}` | `{default!r}` |")
    return rows


def _params() -> str:
    from pipeline.core.params import SECTIONS

    out = [
        "# params.yaml",
        "",
        "The stages' parameters, read once into validated dataclasses "
        "(`pipeline.core.params`); another file: `SHOPML_PARAMS` or `shopml --params FILE`. Generated from "
        "the code; the project's file follows.",
        "",
    ]
    for name, cls in SECTIONS.items():
        out += [f"## {name}", "", *_fields(cls), ""]
    out += ["## The project's file", "", "```yaml", (ROOT / "params.yaml").read_text().rstrip(), "```", ""]
    return "\n".join(out)


def _policy() -> str:
    from pipeline.families.fraud.decisions import CostPolicy
    from pipeline.families.price.pricing import PricingPolicy
    from pipeline.lifecycle.gate import Policy
    from pipeline.lifecycle.monitor import MonitoringPolicy

    return "\n".join(
        [
            "# policy.yaml",
            "",
            "One section per model (the promotion gate, `pipeline.lifecycle.gate.Policy`) "
            "and a `monitoring` section per model (`pipeline.lifecycle.monitor.MonitoringPolicy`). "
            "Another file: `SHOPML_POLICY`. Generated from the code; the project's file, with what each "
            "rule means, follows.",
            "",
            "## Gate rules (per model)",
            "",
            *_fields(Policy),
            "",
            "## Monitoring rules (`monitoring.<model>`)",
            "",
            *_fields(MonitoringPolicy),
            "",
            "## Pricing rules (`pricing`, read when a price Bento is packaged)",
            "",
            *_fields(PricingPolicy),
            "",
            "## Fraud costs (`fraud_costs`, read when the fraud family trains and is evaluated)",
            "",
            *_fields(CostPolicy),
            "",
            "## The project's file",
            "",
            "```yaml",
            (ROOT / "policy.yaml").read_text().rstrip(),
            "```",
            "",
        ]
    )


def _http() -> str:
    from pipeline.families.fraud.serving import ChargebackRequest, Recorded, ScoreRequest, Scores
    from pipeline.families.next_item.serving import Recommendation, RecommendRequest
    from pipeline.families.price.serving import ForecastRequest, Forecasts, PriceRequest, Prices
    from pipeline.families.purchase_propensity.serving import Probabilities, PropensityRequest
    from pipeline.serving.api import Metadata

    endpoints = [
        ("next_item", "POST /recommend", RecommendRequest, Recommendation),
        ("purchase_propensity", "POST /purchase_probability", PropensityRequest, Probabilities),
        ("price", "POST /forecast", ForecastRequest, Forecasts),
        ("price", "POST /price", PriceRequest, Prices),
        ("fraud", "POST /score", ScoreRequest, Scores),
        ("fraud, admin key", "POST /chargebacks", ChargebackRequest, Recorded),
        ("every service", "POST /metadata", None, Metadata),
    ]
    out = [
        "# HTTP API",
        "",
        "Each family's Bento serves its endpoints (one scoring endpoint; `/forecast` and `/price` for price, "
        "`/score` and `/chargebacks` for fraud) "
        "plus `/metadata`; BentoML adds `GET "
        "/readyz`, `/livez` and `/metrics`, and `GET /docs.json` (the OpenAPI document) on a running service. "
        "The schemas below are the ones the services validate with (JSON Schema, generated): an unknown field, a "
        "wrong type or a value out of range is a 400 that names the field.",
        "",
    ]
    for family, route, request, response in endpoints:
        out += [f"## `{route}` ({family})", ""]
        if request is not None:
            out += ["Request:", "", "```json", json.dumps(request.model_json_schema(), indent=2), "```", ""]
        out += ["Response:", "", "```json", json.dumps(response.model_json_schema(), indent=2), "```", ""]
    return "\n".join(out)


def _exit_codes() -> str:
    from pipeline.core.errors import EXIT_CODES

    return "\n".join(
        [
            "# Exit codes",
            "",
            "Every `shopml` command ends with one of these (`pipeline.core.errors`). An "
            "error that is not a bug prints one line on stderr naming the problem; a bug prints its "
            "traceback.",
            "",
            "| code | meaning |",
            "|---|---|",
            *[f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items()],
            "",
        ]
    )


PAGES = {
    "changelog.md": lambda: (ROOT / "CHANGELOG.md").read_text(),
    "reference/cli.md": _cli,
    "reference/params.md": _params,
    "reference/policy.md": _policy,
    "reference/http-api.md": _http,
    "reference/exit-codes.md": _exit_codes,
}


def on_files(files, config):
    for uri, make in PAGES.items():
        files.append(File.generated(config, uri, content=make()))
    return files
