"""``shopml``: every stage of the pipeline, callable the way Airflow and DVC call it.

``shopml --help`` lists the commands, ``shopml COMMAND --help`` every option of one; ``python -m
pipeline`` is the same program. The commands, in the order a model goes through them:

  data        generate, ingest, validate, version, run (= ingest, validate, version)
  models      features, train, retrain (= features ... promote), evaluate, gate, register,
              package, promote, rollback
  serving     serve, lineage, models
  closed loop replay, monitor, online-gate
  tools       airflow ARGS... (Airflow with this project's DAGs and state)

``--dataset-version`` takes a published dataset version (its DVC hash, or a unique prefix of at
least 6 characters). Without it, ``features``, ``train`` and ``retrain`` resolve the current version
once and print it; ``evaluate`` cuts the test rows from the run's own version at the run's own split
points, and ``package`` ships the feature snapshot of the version the model was trained on.

An error that is not a bug ends with one line on stderr that names the problem and an exit code
of its kind (below, from ``pipeline.core.errors.EXIT_CODES``); a bug ends with its traceback and 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any, cast

from pipeline.core.errors import EXIT_CODES, BadInput, NotFound, Refused
from pipeline.core.settings import apply_process_defaults

Handler = Callable[[argparse.Namespace], int]


# ---- Option types: a bad value is a usage error (exit 2) that names the option --------------------------


def _day(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None


def _days_list(text: str) -> list[str]:
    return [_day(d.strip()) for d in text.split(",") if d.strip()]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value} must lie between 0 and 1")
    return value


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


# ---- The parser ---------------------------------------------------------------------------------------------

VERSION_HELP = "a published dataset version (its hash or a unique prefix of 6+ characters); default: the current one"


def _interval(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--date", type=_day, help="one UTC day, YYYY-MM-DD")
    group.add_argument("--start", type=_day, help="the first UTC day of a range, YYYY-MM-DD")
    p.add_argument("--days", type=_positive, default=1, help="how many days from --start (default: 1)")


def _sources(p: argparse.ArgumentParser) -> None:
    from pipeline.data.adapters import ADAPTERS

    p.add_argument(
        "--adapter", choices=sorted(ADAPTERS), help="the layout of the raw files (default: params.yaml ingest.adapter)"
    )
    p.add_argument(
        "--events-source",
        metavar="URI",
        help="where the day's raw events are, {date} filled in (default: params.yaml ingest.events_source)",
    )
    p.add_argument(
        "--catalog-source",
        metavar="URI",
        help="where the day's catalog is, {date} filled in; '' for none (default: params.yaml)",
    )


def _model(p: argparse.ArgumentParser, models: tuple[str, ...], required: bool = True) -> None:
    p.add_argument("--model", choices=models, required=required, help="the model family (registered model name)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; every subcommand's handler is its ``handler`` default."""
    from pipeline import families

    models = families.names()
    epilog = "exit codes:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="shopml", description=__doc__, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=None,
        metavar="FILE",
        help="the params.yaml to read (default: $SHOPML_PARAMS, else the project's)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def subcommand(name: str, handler: Handler, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(handler=handler)
        return p

    g = subcommand("generate", _generate, "simulate a shop and write its raw daily landing files")
    g.add_argument("--days", type=_positive, help="how many days (default: params.yaml generate.days)")
    g.add_argument("--events-per-day", type=_positive, help="events per day (default: params.yaml)")
    g.add_argument("--initial-users", type=_positive, help="users on the first day (default: params.yaml)")
    g.add_argument("--initial-items", type=_positive, help="catalog items on the first day (default: params.yaml)")
    g.add_argument("--seed", type=int, help="random seed: the same seed gives the same files (default: params.yaml)")
    g.add_argument("--start-date", type=_day, help="the first day, YYYY-MM-DD (default: params.yaml)")
    g.add_argument("--format", choices=("csv", "parquet"), help="the raw files' format (default: params.yaml)")
    g.add_argument(
        "--shift",
        choices=("none", "new_items", "prices"),
        help="change the shop's behaviour from --shift-day on, to exercise monitoring",
    )
    g.add_argument("--shift-day", type=int, help="the 0-based day the shift starts")
    g.add_argument("--fraud-rate", type=float, help="fraudulent orders per genuine order (default: params.yaml)")
    g.add_argument(
        "--first-party-rate",
        type=float,
        help="genuine orders disputed by their own customers, per order (first-party fraud; default 0)",
    )
    g.add_argument(
        "--chargeback-days",
        type=float,
        nargs=2,
        metavar=("FIRST", "LAST"),
        help="a chargeback arrives FIRST to LAST days after its order (default: params.yaml, 3 60)",
    )
    g.add_argument("--out", type=Path, help="the landing folder (default: $SHOPML_HOME/landing)")

    i = subcommand("ingest", _ingest, "ingest days of raw events and catalog into staging (canonical schema)")
    _interval(i)
    _sources(i)
    v = subcommand("validate", _validate, "validate staged days with the Great Expectations suites")
    _interval(v)
    r = subcommand("version", _version, "publish validated days and version the dataset with DVC")
    _interval(r)
    r.add_argument("--no-push", action="store_true", help="do not push the new version to the DVC remote")
    a = subcommand("run", _run, "ingest, validate and version each day in turn")
    _interval(a)
    _sources(a)

    f = subcommand("features", _features, "build (or reuse) a model's feature set on a dataset version")
    _model(f, models)
    f.add_argument("--dataset-version", help=VERSION_HELP)
    t = subcommand("train", _train, "train a model on a dataset version, tracked in MLflow (resumes a killed run)")
    _model(t, models)
    which_data = t.add_mutually_exclusive_group()
    which_data.add_argument(
        "--features",
        type=Path,
        metavar="DIR",
        help="a feature set folder (default: the dataset version's, built if missing)",
    )
    which_data.add_argument("--dataset-version", help=VERSION_HELP)
    t.add_argument(
        "--tag",
        type=_tag,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tag for the MLflow run (repeatable), e.g. airflow.dag_run_id=...",
    )
    t.add_argument(
        "--reuse-finished",
        action="store_true",
        help="if a finished run of this model carries all the --tag tags, return it instead of training "
        "again (what a retried Airflow task or pod does)",
    )
    t.add_argument(
        "--output", type=Path, metavar="FILE", help="also write the outcome (run id, model URI, metrics) as JSON here"
    )
    rt = subcommand(
        "retrain", _retrain, "features, train, evaluate against the champion, gate, register, package, promote"
    )
    _model(rt, models)
    rt.add_argument("--dataset-version", help=VERSION_HELP)
    rt.add_argument(
        "--policy", type=Path, metavar="FILE", help="the policy file (default: $SHOPML_POLICY, else policy.yaml)"
    )
    ev = subcommand("evaluate", _evaluate, "score a run's model, the champion and the floors on the run's test rows")
    _model(ev, models)
    ev.add_argument("--run-id", required=True, help="the MLflow run of the candidate")
    ev.add_argument("--dataset-version", help="cut the test rows from this version (default: the run's own)")
    ga = subcommand("gate", _gate, "apply the policy to a run's evaluation: passed or rejected, with reasons")
    _model(ga, models)
    ga.add_argument("--run-id", required=True, help="the evaluated MLflow run")
    ga.add_argument("--policy", type=Path, metavar="FILE", help="the policy file (default: policy.yaml)")
    rg = subcommand("register", _register, "register a gated run's model (alias challenger if it passed)")
    _model(rg, models)
    rg.add_argument("--run-id", required=True, help="the gated MLflow run")
    pk = subcommand("package", _package, "build a version's Bento (default: the challenger), serve it, check parity")
    _model(pk, models)
    pk.add_argument("--version", help="the registered version (default: the challenger)")
    pk.add_argument(
        "--requests", type=_positive, default=300, help="offline requests replayed in the parity check (default: 300)"
    )
    pk.add_argument(
        "--dataset-version", help="ship this version's feature snapshot (default: the version the model was trained on)"
    )
    pr = subcommand("promote", _promote, "make a version (default: the challenger) the champion")
    _model(pr, models)
    pr.add_argument("--version", help="the registered version (default: the challenger)")
    pr.add_argument("--reason", default="", help="why, recorded on the version")
    pr.add_argument("--by", help="who (default: the current user)")
    pr.add_argument("--force", action="store_true", help="promote a version the gate or its smoke test rejected")
    rb = subcommand("rollback", _rollback, "move the champion back to the previous champion")
    _model(rb, models)
    rb.add_argument("--reason", required=True, help="why, recorded on both versions")
    rb.add_argument("--by", help="who (default: the current user)")

    sv = subcommand("serve", _serve, "serve a Bento: the champion's (default), a version's, or a given tag")
    _model(sv, models)
    what = sv.add_mutually_exclusive_group()
    what.add_argument("--version", help="a packaged registered version")
    what.add_argument("--bento-tag", help="a Bento tag, e.g. shopml-next-item:v3-...")
    sv.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    sv.add_argument("--port", type=_positive, default=3000, help="the port (default: 3000)")
    sv.add_argument(
        "--challenger-version",
        help="serve this packaged version beside the champion (default: the challenger alias, with --challenger-mode)",
    )
    sv.add_argument(
        "--challenger-mode",
        choices=("shadow", "canary"),
        help="shadow: the challenger answers a copy of every request, logged and never returned; "
        "canary: it answers --canary-share of the users (sticky by user)",
    )
    sv.add_argument("--canary-share", type=_share, default=0.1, help="the users a canary answers (default: 0.1)")
    gc = subcommand(
        "gc",
        _gc,
        "remove the dataset versions, Bentos, models, prediction logs and reports nothing refers to",
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed, and why the rest stays")
    gc.add_argument(
        "--keep-days", type=_positive, default=30, help="keep whatever was made in the last N days (default: 30)"
    )
    ky = subcommand("keys", _keys, "the served models' API keys: add (shown once), list, revoke")
    ky.add_argument(
        "action", choices=("add", "list", "revoke"), help="add: a new key, printed once; list: names and roles; revoke"
    )
    ky.add_argument("--name", help="the key's name (add, revoke): who or what uses it")
    ky.add_argument(
        "--role",
        choices=("client", "admin"),
        default="client",
        help="client: the model endpoints; admin: also /metadata, /metrics and x-shopml-event-time",
    )
    ky.add_argument("--file", type=Path, help="the keys file (default: $SHOPML_API_KEYS, else under $SHOPML_HOME)")
    ln = subcommand("lineage", _lineage, "a version's run, dataset version, commit, metrics and gate decision (JSON)")
    _model(ln, models)
    which = ln.add_mutually_exclusive_group()
    which.add_argument("--version", help="a registered version (default: the champion)")
    which.add_argument("--bento-tag", help="the Bento a version was packaged as")
    ls = subcommand("models", _models, "registered versions, their aliases, gate decisions and dataset versions")
    _model(ls, models, required=False)

    rp = subcommand("replay", _replay, "replay a day of raw sessions as requests against a served model")
    _model(rp, models)
    rp.add_argument("--date", type=_day, required=True, help="the day whose sessions are replayed, YYYY-MM-DD")
    rp.add_argument(
        "--url",
        default="http://127.0.0.1:3000",
        help="the served model (default: http://127.0.0.1:3000), called with the key in $SHOPML_API_KEY",
    )
    rp.add_argument(
        "--events", type=Path, metavar="FILE", help="the raw events file (default: the landing file of that day)"
    )
    rp.add_argument(
        "--concurrency",
        type=_positive,
        default=16,
        help="requests in flight (default: 16; fraud sends one at a time: an order's counts include the earlier ones)",
    )
    rp.add_argument("--limit", type=_positive, help="at most this many requests")
    rp.add_argument(
        "--serve",
        action="store_true",
        help="serve the champion for the replay (logging its answers at the replayed times), instead of calling --url",
    )
    mo = subcommand(
        "monitor",
        _monitor,
        "online quality, drift and skew of the served model on one day; requests a "
        "retrain when policy.yaml's monitoring rules are crossed",
    )
    _model(mo, models)
    mo.add_argument("--date", type=_day, required=True, help="the day (UTC) whose answers are judged, YYYY-MM-DD")
    mo.add_argument("--dataset-version", help="read the events from this version (default: the current one)")
    mo.add_argument("--no-trigger", action="store_true", help="report only; never record a retrain request")
    og = subcommand(
        "online-gate",
        _online_gate,
        "whether a challenger served in shadow or canary mode is no worse "
        "online than the champion over monitored days (exit 8 if not)",
    )
    _model(og, models)
    og.add_argument("--version", help="the challenger's version (default: the challenger alias)")
    og.add_argument(
        "--dates", type=_days_list, required=True, metavar="YYYY-MM-DD,...", help="the monitored days, comma-separated"
    )
    af = subcommand(
        "airflow",
        _airflow,
        "airflow with this project's DAGs and state: shopml airflow ARGS... (e.g. dags test retrain_next_item)",
    )
    af.add_argument("airflow_args", nargs=argparse.REMAINDER, metavar="ARGS", help="Airflow's own arguments")
    return parser


def run_airflow(airflow_args: list[str]) -> int:
    """Run the ``airflow`` command against this project's DAGs and state folder.

    On the embedded SQLite default the metadata database is created on first use, with the
    training pool (one slot).
    """
    import os
    import subprocess

    from pipeline.core.settings import airflow_env, get_state_paths

    paths = get_state_paths()
    env = airflow_env(paths, Path(__file__).resolve().parent.parent / "dags")
    airflow = str(Path(sys.executable).parent / "airflow")
    # `airflow standalone` starts its components as `airflow ...` found on PATH: this environment's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    conn = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    if conn.startswith("sqlite:///") and not Path(conn.removeprefix("sqlite:///")).exists():
        paths.airflow_home.mkdir(parents=True, exist_ok=True)
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        # Training tasks take a slot of this pool (dags/shopml_common.py): one, for one GPU or none.
        pool = env.get("SHOPML_TRAIN_POOL", "shopml_training")
        subprocess.run(
            [airflow, "pools", "set", pool, "1", "one training at a time per GPU"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    os.execve(airflow, [airflow, *airflow_args], env)
    return 0  # not reached


def _reuse_finished(paths, model: str, tags: dict[str, str]):
    """The finished run carrying ``tags``, or None. Under torchrun, rank 0 alone asks MLflow and
    tells the other ranks, so all of them either train together or all return."""
    import os

    from pipeline.families.training import finished_run

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return finished_run(paths, model, tags)
    import torch.distributed as dist

    from models.train import init_distributed

    rank, _ = init_distributed()
    found = [finished_run(paths, model, tags) if rank == 0 else None]
    dist.broadcast_object_list(found, src=0)
    return found[0]


# ---- Handlers: one per subcommand ---------------------------------------------------------------------------


def _params(args: argparse.Namespace):
    from pipeline.core.params import load_params

    return load_params(args.params)


def _paths():
    from pipeline.core.settings import get_state_paths

    return get_state_paths()


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _generate(args: argparse.Namespace) -> int:
    from pipeline.data.generate import generate_shop_data

    overrides = {
        k: getattr(args, k)
        for k in (
            "days",
            "events_per_day",
            "initial_users",
            "initial_items",
            "seed",
            "start_date",
            "format",
            "shift",
            "shift_day",
            "fraud_rate",
            "first_party_rate",
            "chargeback_days",
        )
        if getattr(args, k) is not None
    }
    if "chargeback_days" in overrides:
        overrides["chargeback_days"] = tuple(overrides["chargeback_days"])
    params = dataclasses.replace(_params(args).generate, **overrides)
    for d in generate_shop_data(params, args.out or _paths().landing):
        print(f"generated {d.day}: {d.events} events -> {d.events_path}; {d.catalog_items} items -> {d.catalog_path}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    return _data_stages(args, ("ingest",))


def _validate(args: argparse.Namespace) -> int:
    return _data_stages(args, ("validate",))


def _version(args: argparse.Namespace) -> int:
    return _data_stages(args, ("version",))


def _run(args: argparse.Namespace) -> int:
    return _data_stages(args, ("ingest", "validate", "version"))


def _data_stages(args: argparse.Namespace, stages: tuple[str, ...]) -> int:
    """The data stages asked for, one day after the other."""
    from pipeline.data.ingest import Interval, ingest_events
    from pipeline.data.validate import validate_batch
    from pipeline.data.version import version_dataset

    params, paths = _params(args), _paths()
    start = date.fromisoformat(args.date or args.start)
    for day in [(start + timedelta(days=i)).isoformat() for i in range(1 if args.date else args.days)]:
        interval = Interval.for_day(day)
        if "ingest" in stages:
            ingest_events(
                interval,
                args.events_source or params.ingest.events_source,
                paths=paths,
                adapter_name=args.adapter or params.ingest.adapter,
                catalog_source=args.catalog_source if args.catalog_source is not None else params.ingest.catalog_source,
            )
        if "validate" in stages:
            validate_batch(interval, paths, params.validate)
        if "version" in stages:
            version = version_dataset(interval, paths, push=not getattr(args, "no_push", False))
            report = paths.reports / "version" / f"{day}.json"
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps(version.to_dict(), indent=2))
            print(
                f"published {day}: dataset version {version.version} ({version.files} files) pushed to "
                f"{version.remote or '(not pushed)'}"
            )
    return 0


def _features(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import steps

    paths = _paths()
    built = steps.features(paths, _params(args), args.model, args.dataset_version)
    report = paths.reports / "features" / f"{args.model}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        json.dumps(
            {"model": args.model, "path": built["features"], "dataset_version": built["dataset_version"]}, indent=2
        )
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    import os
    import signal

    from pipeline import families
    from pipeline.families.training import exit_with_parent

    if os.environ.get("TORCHELASTIC_RUN_ID"):  # a rank under torchrun: never outlive the agent
        exit_with_parent(signal.SIGKILL)
    params, paths = _params(args), _paths()
    tags = dict(args.tag)
    spec = families.get(args.model)
    outcome = _reuse_finished(paths, args.model, tags) if args.reuse_finished and tags else None
    if outcome is not None:
        print(f"run {outcome.run_id} already carries {tags}; reusing it")
    else:
        outcome = spec.train(
            paths, spec.params(params), tags or None, features=args.features, dataset_version=args.dataset_version
        )
    if not outcome.run_id:  # another rank than 0 under torchrun: rank 0 reports
        return 0
    for report in [paths.reports / "train" / f"{args.model}.json", *([args.output] if args.output else [])]:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(dataclasses.asdict(outcome), indent=2))
    print(
        f"trained {args.model} on dataset {outcome.dataset_version[:12]}: run {outcome.run_id}, "
        f"model {outcome.model_uri}"
    )
    print(json.dumps({k: round(v, 4) for k, v in sorted(outcome.metrics.items())}, indent=2))
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import steps
    from pipeline.lifecycle.gate import load_policy

    steps.retrain(_paths(), _params(args), args.model, args.dataset_version, load_policy(args.model, args.policy))
    return 0


# A step run on its own is handed only the keys it reads (the run, or the version), not a whole XCom.


def _evaluate(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import steps

    steps.evaluate(_paths(), args.model, cast(steps.Trained, {"run_id": args.run_id}), args.dataset_version)
    return 0


def _gate(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import steps
    from pipeline.lifecycle.gate import load_policy

    gated = steps.gate(
        _paths(), args.model, cast(steps.Evaluated, {"run_id": args.run_id}), load_policy(args.model, args.policy)
    )
    return 0 if gated["passed"] else 8


def _register(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import steps

    steps.register(_paths(), args.model, cast(steps.Gated, {"run_id": args.run_id}))
    return 0


def _package(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import steps
    from pipeline.serving.package import serve_hint

    packaged = steps.package(
        _paths(),
        args.model,
        cast(steps.Registered, {"version": args.version}),
        requests=args.requests,
        dataset_version=args.dataset_version,
    )
    print(f"serve it: {serve_hint(args.model, packaged['bento_tag'])}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import registry

    mv = registry.promote(_paths(), args.model, args.version, by=args.by, reason=args.reason, force=args.force)
    print(f"{args.model}: champion is version {mv.version}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import registry

    mv = registry.rollback(_paths(), args.model, by=args.by, reason=args.reason)
    print(f"{args.model}: champion is back to version {mv.version}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import gc

    todo = gc.plan(_paths(), keep_days=args.keep_days)
    for line in todo.lines():
        print(("would " if args.dry_run and line.startswith("remove") else "") + line)
    if not args.dry_run:
        gc.collect(_paths(), todo)
        print(
            f"removed {len(todo.remove_versions)} dataset versions, {len(todo.remove_bentos)} Bentos, "
            f"{len(todo.remove_models)} models, {len(todo.remove_prediction_days)} prediction-log days, "
            f"{len(todo.remove_reports)} reports"
        )
    return 0


def _keys(args: argparse.Namespace) -> int:
    from pipeline.serving.auth import KeyStore, keys_path

    path = args.file or keys_path(_paths().home)
    store = KeyStore.load(path)
    if args.action == "list":
        for stored in store.keys:
            print(f"{stored.name:<24} {stored.role:<7} {stored.created}  sha256 {stored.sha256[:12]}...")
        print(f"{len(store.keys)} keys in {path}")
        return 0
    if not args.name:
        raise BadInput(f"keys {args.action}: --name is required")
    if args.action == "revoke":
        store.revoke(args.name)
        print(f"revoked {args.name!r} in {path}; running servers stop accepting it within a second")
        return 0
    key = store.add(args.name, args.role)
    print(f"{args.role} key {args.name!r} (shown once; only its hash is kept, in {path}):")
    print(key)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from pipeline.core.tracking import CHALLENGER
    from pipeline.serving.auth import KeyStore, auth_off, keys_path
    from pipeline.serving.package import resolve_bento, serve_command, use_bento_home

    paths = _paths()
    tag = resolve_bento(paths, args.model, args.version, args.bento_tag)
    use_bento_home(paths)
    command = serve_command(tag, args.port, args.host)
    keys = keys_path(paths.home)
    os.environ["SHOPML_API_KEYS"] = str(keys)
    os.environ["SHOPML_HOME"] = str(paths.home)  # the service logs its answers under it
    store = KeyStore.load(keys)
    if not auth_off() and not store.keys:
        # Nobody gets in without a key: the first serve makes one, shown once.
        key = store.add("local-admin", "admin")
        print(f"no API keys yet: made admin key 'local-admin' (shown once; its hash is in {keys}):\n{key}")
        print("send it as: -H 'authorization: Bearer <key>'; more with: shopml keys add --name NAME", flush=True)
    if args.challenger_mode or args.challenger_version:
        other = resolve_bento(paths, args.model, args.challenger_version, alias=CHALLENGER)
        os.environ.update(
            {
                "SHOPML_CHALLENGER_BENTO": other,
                "SHOPML_CHALLENGER_MODE": args.challenger_mode or "shadow",
                "SHOPML_CANARY_SHARE": str(args.canary_share),
            }
        )
        print(f"challenger {other} in {args.challenger_mode or 'shadow'} mode", flush=True)
    print(f"serving {tag} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    os.execv(command[0], command)
    return 0  # not reached


def _lineage(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import registry

    _print(registry.lineage(_paths(), args.model, args.version, args.bento_tag))
    return 0


def _models(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import registry

    print(f"{'model':<20} {'ver':>4} {'aliases':<22} {'status':<12} {'gate':<9} {'dataset':<13} created")
    for r in registry.list_versions(_paths(), args.model):
        print(
            f"{r['model']:<20} {r['version']:>4} {','.join(r['aliases']) or '-':<22} {r['status'] or '-':<12} "
            f"{r['gate'] or '-':<9} {r['dataset_version']:<13} {r['created']}"
        )
    return 0


def _replay(args: argparse.Namespace) -> int:
    from pipeline.data.predictions import default_root
    from pipeline.serving.replay import read_day, replay

    paths = _paths()
    source = args.events or next(iter(sorted((paths.landing / "events").glob(f"events-{args.date}.*"))), None)
    if source is None:
        raise FileNotFoundError(
            f"no raw events file for {args.date} under {paths.landing / 'events'}; name one with --events"
        )
    if args.serve:
        import time

        from pipeline.serving.package import resolve_bento, served

        tag = resolve_bento(paths, args.model)
        flush = 1
        env = {"SHOPML_ACCEPT_EVENT_TIME": "1", "SHOPML_PREDICTION_LOG_FLUSH_S": str(flush)}
        with served(paths, tag, env=env) as url:
            print(
                f"serving the champion's Bento {tag} on {url}, answers logged to "
                f"{default_root() or paths.home / 'predictions'}",
                flush=True,
            )
            result = replay(url, args.model, read_day(source), args.concurrency, args.limit)
            time.sleep(2 * flush + 1)  # the last answers reach the log before the server stops
    else:
        result = replay(args.url, args.model, read_day(source), args.concurrency, args.limit)
    print(result.line(args.model, args.date))
    return 0 if result.failed == 0 else 8


def _monitor(args: argparse.Namespace) -> int:
    from pipeline.lifecycle import monitor as monitoring

    paths = _paths()
    policy = monitoring.load_monitoring_policy(args.model)
    result = monitoring.monitor(paths, args.model, args.date, args.dataset_version, policy)
    for line in result.lines(policy):
        print(line)
    reasons = monitoring.retrain_reasons(result, policy)
    unweighed = monitoring.unweighed(result, policy)
    if args.no_trigger:
        print(
            f"retrain {args.model} {args.date}: not recorded (--no-trigger); reasons: {'; '.join(reasons) or 'none'}"
            + (f" ({unweighed})" if unweighed else "")
        )
    else:
        decision = monitoring.retrain_decision(
            paths, args.model, args.date, reasons, policy, result.dataset_version, unweighed
        )
        print(decision.line())
    print(f"MLflow run {result.run_id} (experiment {monitoring.EXPERIMENT_PREFIX}{args.model})")
    return 0


def _online_gate(args: argparse.Namespace) -> int:
    from pipeline.core.tracking import CHALLENGER, mlflow_client, model_version
    from pipeline.lifecycle import monitor as monitoring

    paths = _paths()
    version = str(model_version(mlflow_client(paths), args.model, args.version, CHALLENGER).version)
    gate = monitoring.online_gate(paths, args.model, version, args.dates, monitoring.load_monitoring_policy(args.model))
    print(gate.line())
    return 0 if gate.passed else 8


def _airflow(args: argparse.Namespace) -> int:
    """``shopml [-v] airflow ARGS``; a plain ``shopml airflow ...`` is handed over before parsing, so
    that Airflow's own ``--help`` and options reach it untouched."""
    return run_airflow(args.airflow_args)


# ---- Entry point ----------------------------------------------------------------------------------------------


def exit_code(exc: BaseException) -> int | None:
    """The exit code of an error that is not a bug (``EXIT_CODES``); None for a bug."""
    from pipeline.data.validate import ValidationFailed
    from pipeline.data.version import NotValidated
    from pipeline.families.resume import TrainingInProgress
    from pipeline.lifecycle.registry import ChampionMoved
    from pipeline.serving.package import ServingError

    ordered: list[tuple[type[BaseException] | tuple[type[BaseException], ...], int]] = [
        ((ValidationFailed, NotValidated), 4),
        (ChampionMoved, 5),
        (ServingError, 6),
        (TrainingInProgress, 7),
        ((NotFound, FileNotFoundError), 3),
        (BadInput, 2),
        (Refused, 8),
    ]
    return next((code for kinds, code in ordered if isinstance(exc, kinds)), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    apply_process_defaults()  # before any command imports mlflow (or starts Airflow, which does)
    if argv[:1] == ["airflow"]:
        return run_airflow(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help (0), or a usage error (2) already printed with the usage
        return done.code if isinstance(done.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("great_expectations", "dvc", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            raise  # a bug: the traceback, exit 1
        print(f"error: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
