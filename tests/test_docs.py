"""The README and the docs site say what the code does: every command they show is one the CLI
accepts (or a make target that exists), every setting the code reads is in the configuration
reference, and the README stays short."""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO
from pipeline.cli import build_parser

# The fast layer (`make test-fast`): no training, no servers, no Airflow runs.
pytestmark = pytest.mark.fast

PAGES = [REPO / "README.md", *sorted((REPO / "docs" / "how-to").glob("*.md")), REPO / "docs" / "get-started.md"]


def _commands(path):
    """Every line of a ```bash block, comments and continuations joined."""
    text = path.read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                yield line


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_every_command_on_the_readme_and_the_how_to_pages_is_valid():
    parser = build_parser()

    def refuse(status=0, message=None):
        raise ValueError(message)

    parser.exit = refuse  # type: ignore[method-assign]
    for action in parser._actions:
        for sub in getattr(action, "choices", None) or {}:
            action.choices[sub].exit = refuse
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))
    bad, seen = [], 0
    for page in PAGES:
        for line in _commands(page):
            argv = shlex.split(line)
            seen += 1
            if argv[0] == "shopml" or argv[:3] == ["python", "-m", "pipeline"]:
                rest = argv[1:] if argv[0] == "shopml" else argv[3:]
                if rest[:1] == ["airflow"] or rest == ["--help"]:
                    continue  # handed to Airflow's own command line
                try:
                    parser.parse_args(rest)
                except ValueError as exc:
                    bad.append(f"{page.name}: {line}: {exc}")
            elif argv[0] == "make":
                bad += [f"{page.name}: {line}: no target {t}" for t in argv[1:] if t not in targets]
            elif argv[0] == "torchrun":
                module = argv.index("-m")
                try:
                    parser.parse_args(argv[module + 2 :])
                except ValueError as exc:
                    bad.append(f"{page.name}: {line}: {exc}")
            else:
                problem = _other(argv)
                if problem:
                    bad.append(f"{page.name}: {line}: {problem}")
    assert seen >= 30 and bad == []


def _other(argv: list[str]) -> str | None:
    """What is wrong with a command of another program, checked as far as it can be without running it."""
    import json

    import yaml

    env = [a for a in argv if re.fullmatch(r"[A-Z_]+=\S*", a)]
    argv = argv[len(env) :]
    program = argv[0].rsplit("/", 1)[-1]
    if program == "cp":
        return None if (REPO / argv[1]).exists() else f"no file {argv[1]}"
    if program == "docker" and argv[1] == "compose":
        compose = REPO / argv[argv.index("-f") + 1]
        services = yaml.safe_load(compose.read_text())["services"]
        profiles = {p for s in services.values() for p in s.get("profiles", [])}
        wanted = [argv[i + 1] for i, a in enumerate(argv) if a == "--profile"]
        return None if set(wanted) <= profiles else f"no profile {set(wanted) - profiles} in {compose.name}"
    if program == "docker" and argv[1] == "run":
        return None  # runs the image the line before builds
    if program in ("bentoml", "dvc", "mlflow"):
        return None if (REPO / ".venv" / "bin" / program).exists() else f"{program} is not installed in .venv"
    if program == "curl":
        from pipeline.families.fraud.serving import ChargebackRequest, ScoreRequest, SessionRequest, SignupRequest
        from pipeline.families.next_item.serving import RecommendRequest
        from pipeline.families.price.serving import ForecastRequest, PriceRequest
        from pipeline.families.purchase_propensity.serving import PropensityRequest

        schemas = {
            "/recommend": RecommendRequest,
            "/purchase_probability": PropensityRequest,
            "/forecast": ForecastRequest,
            "/price": PriceRequest,
            "/score": ScoreRequest,
            "/chargebacks": ChargebackRequest,
            "/signups": SignupRequest,
            "/sessions": SessionRequest,
        }
        url = next(a for a in argv if "localhost" in a or "127.0.0.1" in a)
        route = "/" + url.split("/", 1)[1]
        if route not in schemas:
            return f"no endpoint {route}"
        schemas[route].model_validate(json.loads(argv[argv.index("-d") + 1]))  # raises on a bad body
        return None
    return "a program this check does not know: add it to _other"


def test_every_setting_the_code_reads_is_in_the_configuration_reference():
    read = set()
    for folder in ("pipeline", "dags", "models", "benchmarks", "docker"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".yaml", ".yml", ".env", ".Dockerfile", ""}:
                read |= set(re.findall(r"SHOPML_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="ignore")))
    documented = set(
        re.findall(r"`(SHOPML_[A-Z0-9_]+)`", (REPO / "docs" / "reference" / "configuration.md").read_text())
    )
    assert read - documented == set()
