"""The command line explains itself: help on every option, closed sets as choices, one handler per
subcommand, exit codes by kind of error, and every hint a message prints is a valid command."""

from __future__ import annotations

import argparse
import ast
import os
import shlex
import subprocess
import sys

import pytest

from conftest import REPO
from pipeline import families
from pipeline.cli import build_parser, exit_code, main
from pipeline.core.errors import EXIT_CODES

# The fast layer (`make test-fast`): no training, no servers, no Airflow runs.
pytestmark = pytest.mark.fast


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_subcommand_has_help_and_closed_sets_are_choices():
    parser = build_parser()
    missing, open_sets = [], []
    for name, sub in [("shopml", parser), *_subcommands(parser).items()]:
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings)}")
            if (
                set(action.option_strings) & {"--model", "--adapter", "--format", "--shift", "--challenger-mode"}
                and not action.choices
            ):
                open_sets.append(f"{name} {action.option_strings[0]}")
    assert missing == [] and open_sets == []
    assert set(_subcommands(parser)["train"]._option_string_actions["--model"].choices) == set(families.names())


def test_each_subcommand_has_its_own_handler():
    handlers = {name: sub.get_default("handler") for name, sub in _subcommands(build_parser()).items()}
    assert None not in handlers.values()
    assert len(set(handlers.values())) == len(handlers)
    assert {"generate", "ingest", "run", "train", "retrain", "serve", "monitor", "online-gate", "replay"} <= set(
        handlers
    )


def test_the_installed_command_and_the_module_are_the_same_program():
    shopml = subprocess.run([str(REPO / ".venv" / "bin" / "shopml"), "--help"], capture_output=True, text=True)
    module = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True)
    assert shopml.returncode == module.returncode == 0
    assert shopml.stdout == module.stdout and "usage: shopml" in shopml.stdout
    assert all(f"  {code}  " in shopml.stdout for code in EXIT_CODES)


def test_a_bad_option_value_is_a_usage_error_that_names_it(capsys):
    assert main(["monitor", "--model", "next_item", "--date", "2026-13-01"]) == 2
    assert "--date: '2026-13-01' is not a day (YYYY-MM-DD)" in capsys.readouterr().err
    assert main(["train", "--model", "next_item", "--tag", "no-equals-sign"]) == 2
    assert "--tag: 'no-equals-sign': expected KEY=VALUE" in capsys.readouterr().err
    assert main(["serve", "--model", "next_item", "--canary-share", "2"]) == 2


def test_errors_map_to_exit_codes_by_kind_and_a_bug_is_a_traceback(monkeypatch, tmp_path, capsys):
    from pipeline.core.params import ParamsError
    from pipeline.core.tracking import NotRegistered, RegistryError
    from pipeline.data.validate import ValidationFailed
    from pipeline.data.version import UnknownDatasetVersion
    from pipeline.lifecycle.gate import PolicyError
    from pipeline.lifecycle.registry import ChampionMoved

    assert exit_code(ParamsError("x")) == exit_code(PolicyError("x")) == 2
    assert exit_code(UnknownDatasetVersion("x")) == exit_code(NotRegistered("x")) == 3
    assert exit_code(ValidationFailed.__new__(ValidationFailed)) == 4
    assert exit_code(ChampionMoved("x")) == 5 and exit_code(RegistryError("x")) == 8
    assert exit_code(KeyError("x")) is None and exit_code(ValueError("a bug")) is None

    bad = tmp_path / "params.yaml"
    bad.write_text("generate:\n  days: many\n")
    monkeypatch.setenv("SHOPML_HOME", str(tmp_path / "state"))
    assert main(["--params", str(bad), "generate"]) == 2
    assert f"error: {bad}: generate.days: must be an integer, got 'many'" in capsys.readouterr().err

    import pipeline.cli as cli

    def broken(args):
        raise KeyError("a bug")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(parser(), "models", broken))
    with pytest.raises(KeyError, match="a bug"):
        main(["models"])


def _with_handler(parser: argparse.ArgumentParser, name: str, handler) -> argparse.ArgumentParser:
    _subcommands(parser)[name].set_defaults(handler=handler)
    return parser


# Values for the parts of a hint that are computed, by the option they follow; placeholders by name.
COMPUTED = {"--model": "next_item", "--port": "3000", "--requests": "10", "--date": "2026-11-01"}
PLACEHOLDERS = {"MODEL": "next_item", "YYYY-MM-DD": "2026-11-01"}


def _hints() -> list[tuple[str, list[str]]]:
    """Every ``command(...)`` call in the sources, as (where, argv) with computed parts filled in."""
    found = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "command"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                continue
            argv: list[str] = []
            for arg in node.args:
                if isinstance(arg, ast.Constant):
                    text = str(arg.value)
                    for placeholder, value in PLACEHOLDERS.items():
                        text = text.replace(placeholder, value)
                    argv.append(text)
                elif isinstance(arg, ast.BoolOp):  # model_name or "MODEL"
                    argv.append(COMPUTED.get(argv[-1], "x"))
                else:
                    argv.append(COMPUTED.get(argv[-1], "x") if argv else "x")
            found.append((f"{path.relative_to(REPO)}:{node.lineno}", argv))
    return found


def test_every_hint_the_code_prints_is_a_valid_command():
    hints = _hints()
    assert len(hints) >= 8, hints  # the hints of serving, packaging, the registry and the steps
    parser = build_parser()
    parser.exit = lambda status=0, message=None: (_ for _ in ()).throw(ValueError(message))  # type: ignore[method-assign]
    for sub in _subcommands(parser).values():
        sub.exit = parser.exit  # type: ignore[method-assign]
    bad = []
    for where, argv in hints:
        try:
            parser.parse_args(argv)
        except ValueError as exc:
            bad.append(f"{where}: {shlex.join(['shopml', *argv])}: {exc}")
    assert bad == []


def test_no_message_spells_a_command_by_hand():
    """A command in a message goes through ``pipeline.core.hints.command`` (so the test above sees it)."""
    by_hand = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and ("`python -m pipeline " in node.value or "`shopml " in node.value)
            ):
                by_hand.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value[:60]}")
    assert by_hand == []


def test_make_help_lists_every_target_with_one_line():
    makefile = (REPO / "Makefile").read_text()
    phony = next(line for line in makefile.splitlines() if line.startswith(".PHONY:")).split()[1:]
    described = {line.split(":")[0] for line in makefile.splitlines() if " ## " in line and not line.startswith("\t")}
    assert set(phony) - described == set()
    shown = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert {line.split()[0] for line in shown.splitlines()} == set(phony)


def test_keys_are_made_shown_once_listed_by_name_and_revoked(tmp_path, capsys):
    from pipeline.serving.auth import KeyStore

    keys = tmp_path / "keys.json"
    assert main(["keys", "add", "--name", "checkout", "--file", str(keys)]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("shopml_") and KeyStore.load(keys).role_of(key) == "client"
    assert main(["keys", "add", "--name", "ops", "--role", "admin", "--file", str(keys)]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--file", str(keys)]) == 0
    listed = capsys.readouterr().out
    assert "checkout" in listed and "ops" in listed and key not in listed
    assert main(["keys", "add", "--name", "checkout", "--file", str(keys)]) != 0  # a name once
    assert main(["keys", "revoke", "--name", "checkout", "--file", str(keys)]) == 0
    assert KeyStore.load(keys).role_of(key) is None


def test_generate_takes_the_fraud_options_to_the_generator(tmp_path, capsys):
    """``shopml generate --fraud-rate R --first-party-rate R`` shapes the shop written: its truth
    file lists both kinds of fraud."""
    import polars as pl

    out = tmp_path / "landing"
    args = ["generate", "--days", "4", "--events-per-day", "3000", "--format", "parquet", "--out", str(out)]
    assert main([*args, "--fraud-rate", "0.05", "--first-party-rate", "0.05", "--chargeback-days", "1", "2"]) == 0
    assert "generated" in capsys.readouterr().out
    scenarios = set(pl.read_csv(out / "truth" / "fraud.csv")["scenario"])
    assert "first_party" in scenarios and len(scenarios) > 1


def test_the_command_line_sets_the_process_defaults_unless_the_environment_does(monkeypatch, capsys):
    """MLflow's telemetry is off in the project's processes (``settings.PROCESS_DEFAULTS``) unless
    the environment says otherwise; the command line sets it before any command imports mlflow."""
    from pipeline.core.settings import PROCESS_DEFAULTS

    assert PROCESS_DEFAULTS["MLFLOW_DISABLE_TELEMETRY"] == "true"
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    assert main(["--help"]) == 0
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")  # a shop that wants it on
    assert main(["--help"]) == 0
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"
    capsys.readouterr()
