"""Command line: every stage, callable the same way Airflow and DVC call it.

    python -m pipeline generate [--days N] [--events-per-day N] [--seed S] [--start-date D]
    python -m pipeline ingest   --date D | --start D --days N  [--adapter A] [--events-source URI]
    python -m pipeline validate --date D | --start D --days N
    python -m pipeline version  --date D | --start D --days N  [--no-push]
    python -m pipeline run      --date D | --start D --days N  (ingest, validate, version)
    python -m pipeline features --model M [--dataset-version H]   (build the model's feature set)
    python -m pipeline train    --model M [--features DIR | --dataset-version H]
                                                   (train only, resumes a killed run; see retrain)
    torchrun --nproc-per-node N -m pipeline train --model M    (the same on N GPUs, DDP)
    python -m pipeline retrain  --model M [--dataset-version H]
                                       (features, train, evaluate, gate, register, package, promote)
    python -m pipeline evaluate --model M --run-id R [--dataset-version H]
    python -m pipeline gate|register --model M --run-id R
    python -m pipeline promote  --model M [--version V] [--reason TEXT] [--force]
    python -m pipeline rollback --model M --reason TEXT
    python -m pipeline package  --model M [--version V] [--dataset-version H]
                                                   (build the Bento, serve it, parity-check it)
    python -m pipeline serve    --model M [--version V | --bento-tag T] [--port P]   (default: the champion)
    python -m pipeline lineage  --model M [--version V | --bento-tag T]
    python -m pipeline models   [--model M]
    python -m pipeline airflow ARGS...   (airflow with this project's DAGs and state)

``--dataset-version`` takes a published dataset version (its DVC hash, or a unique prefix of at
least 6 characters). Without it, ``features``, ``train`` and ``retrain`` resolve the current version
once and print it; ``evaluate`` cuts the test rows from the run's own version at the run's own split
points, and ``package`` ships the feature snapshot of the version the model was trained on. A version
that is not published, or whose files cannot be restored, is an error that names it.

Bad input ends with exit code 2 and one line that names the problem; a failed validation ends with
exit code 3 and the validation summary; a promotion refused because the champion moved since the
candidate's evaluation ends with exit code 4; a Bento that fails its smoke test or parity check ends
with exit code 5. A training whose run another live process is training (the same model, tags,
features and parameters) ends with exit code 6; once that process is gone, the same command resumes
the run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from datetime import date, timedelta
from pathlib import Path

from pipeline.core.params import ParamsError, load_params


def _days(args: argparse.Namespace) -> list[str]:
    if args.date:
        return [args.date]
    start = date.fromisoformat(args.start)
    return [(start + timedelta(days=i)).isoformat() for i in range(args.days)]


def _add_interval(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--date", help="one UTC day, YYYY-MM-DD")
    group.add_argument("--start", help="first UTC day of a range, YYYY-MM-DD")
    p.add_argument("--days", type=int, default=1, help="number of days from --start (default 1)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=None, help="params.yaml to read")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="simulate a shop and write raw landing files")
    g.add_argument("--days", type=int)
    g.add_argument("--events-per-day", type=int)
    g.add_argument("--initial-users", type=int)
    g.add_argument("--initial-items", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--start-date")
    g.add_argument("--format", choices=("csv", "parquet"))
    g.add_argument("--shift", choices=("none", "new_items", "prices"),
                   help="change the shop's behaviour from --shift-day on (to exercise monitoring)")
    g.add_argument("--shift-day", type=int, help="0-based day of the shift")
    g.add_argument("--out", type=Path, help="landing folder (default: $SHOPML_HOME/landing)")

    i = sub.add_parser("ingest", help="ingest days from the landing folder or a URI into staging")
    _add_interval(i)
    i.add_argument("--adapter")
    i.add_argument("--events-source")
    i.add_argument("--catalog-source")

    v = sub.add_parser("validate", help="validate staged days with the Great Expectations suites")
    _add_interval(v)

    r = sub.add_parser("version", help="publish validated days and version the dataset with DVC")
    _add_interval(r)
    r.add_argument("--no-push", action="store_true", help="do not push to the DVC remote")

    from pipeline import families

    models = families.names()
    version_help = "a published dataset version (hash or unique prefix); default: the current one"
    f = sub.add_parser("features", help="build a model's feature set on a dataset version")
    f.add_argument("--model", choices=models, required=True)
    f.add_argument("--dataset-version", help=version_help)
    t = sub.add_parser("train", help="train a model on a dataset version, tracked in MLflow")
    t.add_argument("--model", choices=models, required=True)
    which_data = t.add_mutually_exclusive_group()
    which_data.add_argument("--features", type=Path, help="a feature set folder (default: the dataset version's, "
                                                          "built if missing)")
    which_data.add_argument("--dataset-version", help=version_help)
    t.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="a tag for the MLflow run (repeatable), e.g. airflow.dag_run_id=...")
    t.add_argument("--reuse-finished", action="store_true",
                   help="if a finished run of this model carries all the --tag tags, return it instead of training "
                        "again (what a retried Airflow task or pod does)")
    t.add_argument("--output", type=Path, help="also write the outcome (run id, model URI, metrics) as JSON here")

    rt = sub.add_parser("retrain", help="features, train, evaluate against the champion, gate, register, "
                                        "package, promote")
    rt.add_argument("--model", choices=models, required=True)
    rt.add_argument("--dataset-version", help=version_help)
    rt.add_argument("--policy", type=Path, help="policy file (default: policy.yaml)")
    for name, text in (("evaluate", "score a run's model, the champion and the baselines on the test split"),
                       ("gate", "apply the policy to a run's evaluation"),
                       ("register", "register a gated run's model (challenger if it passed)")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--model", choices=models, required=True)
        sp.add_argument("--run-id", required=True)
        if name == "gate":
            sp.add_argument("--policy", type=Path, help="policy file (default: policy.yaml)")
        if name == "evaluate":
            sp.add_argument("--dataset-version", help="cut the test rows from this version (default: the run's own)")
    pr = sub.add_parser("promote", help="make a version (default: the challenger) the champion")
    pr.add_argument("--model", choices=models, required=True)
    pr.add_argument("--version")
    pr.add_argument("--reason", default="")
    pr.add_argument("--by", help="who (default: the current user)")
    pr.add_argument("--force", action="store_true", help="promote a version the gate rejected")
    rb = sub.add_parser("rollback", help="move the champion back to the previous champion")
    rb.add_argument("--model", choices=models, required=True)
    rb.add_argument("--reason", required=True)
    rb.add_argument("--by", help="who (default: the current user)")
    ln = sub.add_parser("lineage", help="a version's run, dataset version, commit, metrics and gate decision")
    ln.add_argument("--model", choices=models, required=True)
    which = ln.add_mutually_exclusive_group()
    which.add_argument("--version")
    which.add_argument("--bento-tag")
    pk = sub.add_parser("package", help="build a version's Bento (default: the challenger), serve it, check parity")
    pk.add_argument("--model", choices=models, required=True)
    pk.add_argument("--version")
    pk.add_argument("--requests", type=int, default=300, help="offline requests replayed in the parity check")
    pk.add_argument("--dataset-version", help="ship this version's feature snapshot (default: the version the "
                                              "model was trained on)")
    sv = sub.add_parser("serve", help="serve a Bento: the champion's, a version's, or a given tag")
    sv.add_argument("--model", choices=models, required=True)
    what = sv.add_mutually_exclusive_group()
    what.add_argument("--version")
    what.add_argument("--bento-tag")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=3000)
    sv.add_argument("--challenger-version", help="serve this packaged version beside the champion (default: the "
                                                 "challenger alias, with --challenger-mode)")
    sv.add_argument("--challenger-mode", choices=("shadow", "canary"),
                    help="shadow: the challenger answers a copy of every request, logged and never returned; "
                         "canary: it answers --canary-share of the users (sticky by user)")
    sv.add_argument("--canary-share", type=float, default=0.1)
    ls = sub.add_parser("models", help="registered versions and aliases")
    ls.add_argument("--model", choices=models)

    mo = sub.add_parser("monitor", help="online quality, drift and skew of the served model on one day; "
                                        "requests a retrain when policy.yaml's monitoring thresholds are crossed")
    mo.add_argument("--model", choices=models, required=True)
    mo.add_argument("--date", required=True, help="the day (UTC) whose answers are judged, YYYY-MM-DD")
    mo.add_argument("--dataset-version", help="read the events from this version (default: the current one)")
    mo.add_argument("--no-trigger", action="store_true", help="report only; never record a retrain request")
    og = sub.add_parser("online-gate", help="whether a challenger served in shadow or canary mode is not worse "
                                            "online than the champion over monitored days")
    og.add_argument("--model", choices=models, required=True)
    og.add_argument("--version", help="default: the challenger")
    og.add_argument("--dates", required=True, help="comma-separated monitored days, YYYY-MM-DD")
    rp = sub.add_parser("replay", help="replay a day of raw sessions as requests against a served model")
    rp.add_argument("--model", choices=models, required=True)
    rp.add_argument("--date", required=True)
    rp.add_argument("--url", default="http://127.0.0.1:3000")
    rp.add_argument("--events", type=Path, help="the raw events file (default: the landing file of that day)")
    rp.add_argument("--concurrency", type=int, default=16)
    rp.add_argument("--limit", type=int, help="at most this many requests")
    rp.add_argument("--serve", action="store_true", help="serve the champion for the replay (logging its answers "
                                                         "at the replayed times), instead of calling --url")

    a = sub.add_parser("run", help="ingest, validate and version each day in turn")
    _add_interval(a)
    a.add_argument("--adapter")
    a.add_argument("--events-source")
    a.add_argument("--catalog-source")
    return parser


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


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
        subprocess.run([airflow, "pools", "set", pool, "1", "one training at a time per GPU"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
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


def _closed_loop(args: argparse.Namespace, paths) -> int:
    if args.command == "replay":
        from pipeline.data.predictions import default_root
        from pipeline.serving.replay import read_day, replay

        source = args.events or next(iter(sorted((paths.landing / "events").glob(f"events-{args.date}.*"))), None)
        if source is None:
            raise FileNotFoundError(f"no raw events file for {args.date} under {paths.landing / 'events'}; "
                                    f"name one with --events")
        if args.serve:
            import time

            from pipeline.serving.package import resolve_bento, served

            tag = resolve_bento(paths, args.model)
            flush = 1
            env = {"SHOPML_ACCEPT_EVENT_TIME": "1", "SHOPML_PREDICTION_LOG_FLUSH_S": str(flush)}
            with served(paths, tag, env=env) as url:
                print(f"serving the champion's Bento {tag} on {url}, answers logged to "
                      f"{default_root() or paths.home / 'predictions'}", flush=True)
                result = replay(url, args.model, read_day(source), args.concurrency, args.limit)
                time.sleep(2 * flush + 1)   # the last answers reach the log before the server stops
        else:
            result = replay(args.url, args.model, read_day(source), args.concurrency, args.limit)
        print(result.line(args.model, args.date))
        return 0 if result.failed == 0 else 1
    from pipeline.lifecycle import monitor as monitoring

    policy = monitoring.load_monitoring_policy(args.model)
    if args.command == "online-gate":
        from pipeline.core.tracking import CHALLENGER, mlflow_client, model_version

        version = str(model_version(mlflow_client(paths), args.model, args.version, CHALLENGER).version)
        gate = monitoring.online_gate(paths, args.model, version, [d.strip() for d in args.dates.split(",")], policy)
        print(gate.line())
        return 0 if gate.passed else 1
    result = monitoring.monitor(paths, args.model, args.date, args.dataset_version, policy)
    for line in result.lines(policy):
        print(line)
    reasons = monitoring.retrain_reasons(result, policy)
    if args.no_trigger:
        print(f"retrain {args.model} {args.date}: not recorded (--no-trigger); reasons: {'; '.join(reasons) or 'none'}")
    else:
        print(monitoring.retrain_decision(paths, args.model, args.date, reasons, policy,
                                          result.dataset_version).line())
    print(f"MLflow run {result.run_id} (experiment {monitoring.EXPERIMENT_PREFIX}{args.model})")
    return 0


def _lifecycle(args: argparse.Namespace, params, paths) -> int:
    from pipeline.lifecycle import registry, steps
    from pipeline.lifecycle.gate import load_policy

    if args.command == "retrain":
        steps.retrain(paths, params, args.model, args.dataset_version, load_policy(args.model, args.policy))
        return 0
    if args.command == "evaluate":
        steps.evaluate(paths, args.model, {"run_id": args.run_id}, args.dataset_version)
    elif args.command == "gate":
        steps.gate(paths, args.model, {"run_id": args.run_id}, load_policy(args.model, args.policy))
    elif args.command == "register":
        steps.register(paths, args.model, {"run_id": args.run_id})
    elif args.command == "promote":
        mv = registry.promote(paths, args.model, args.version, by=args.by, reason=args.reason, force=args.force)
        print(f"{args.model}: champion is version {mv.version}")
    elif args.command == "rollback":
        mv = registry.rollback(paths, args.model, by=args.by, reason=args.reason)
        print(f"{args.model}: champion is back to version {mv.version}")
    elif args.command == "package":
        from pipeline.serving.package import serve_hint

        packaged = steps.package(paths, args.model, {"version": args.version}, requests=args.requests,
                                 dataset_version=args.dataset_version)
        print(f"serve it: {serve_hint(args.model, packaged['bento_tag'])}")
    elif args.command == "serve":
        import os

        from pipeline.core.tracking import CHALLENGER
        from pipeline.serving.package import resolve_bento, serve_command, use_bento_home

        tag = resolve_bento(paths, args.model, args.version, args.bento_tag)
        use_bento_home(paths)
        command = serve_command(tag, args.port, args.host)
        if args.challenger_mode or args.challenger_version:
            other = resolve_bento(paths, args.model, args.challenger_version, alias=CHALLENGER)
            os.environ.update({"SHOPML_CHALLENGER_BENTO": other, "SHOPML_CHALLENGER_MODE": args.challenger_mode
                               or "shadow", "SHOPML_CANARY_SHARE": str(args.canary_share)})
            print(f"challenger {other} in {args.challenger_mode or 'shadow'} mode", flush=True)
        print(f"serving {tag} on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
        os.execv(command[0], command)
    elif args.command == "lineage":
        _print(registry.lineage(paths, args.model, args.version, args.bento_tag))
    elif args.command == "models":
        rows = registry.list_versions(paths, args.model)
        print(f"{'model':<20} {'ver':>4} {'aliases':<22} {'status':<12} {'gate':<9} {'dataset':<13} created")
        for r in rows:
            print(f"{r['model']:<20} {r['version']:>4} {','.join(r['aliases']) or '-':<22} {r['status'] or '-':<12} "
                  f"{r['gate'] or '-':<9} {r['dataset_version']:<13} {r['created']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["airflow"]:
        return run_airflow(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "dvc", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from pipeline.core.settings import get_state_paths
    from pipeline.core.tracking import RegistryError
    from pipeline.data.ingest import IngestError, Interval, ingest_events
    from pipeline.data.validate import ValidationFailed, validate_batch
    from pipeline.data.version import NotValidated, UnknownDatasetVersion
    from pipeline.families.resume import TrainingInProgress
    from pipeline.lifecycle.registry import ChampionMoved
    from pipeline.serving.package import ServingError

    try:
        params = load_params(args.params)
        paths = get_state_paths()
        if args.command == "generate":
            from pipeline.data.generate import generate_shop_data

            overrides = {k: getattr(args, k) for k in ("days", "events_per_day", "initial_users",
                                                       "initial_items", "seed", "start_date", "format", "shift",
                                                       "shift_day")
                         if getattr(args, k) is not None}
            gp = dataclasses.replace(params.generate, **overrides)
            days = generate_shop_data(gp, args.out or paths.landing)
            for d in days:
                print(f"generated {d.day}: {d.events} events -> {d.events_path}; "
                      f"{d.catalog_items} items -> {d.catalog_path}")
            return 0

        if args.command == "features":
            from pipeline.lifecycle import steps

            built = steps.features(paths, params, args.model, args.dataset_version)
            report = paths.reports / "features" / f"{args.model}.json"
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(json.dumps({"model": args.model, "path": built["features"],
                                          "dataset_version": built["dataset_version"]}, indent=2))
            return 0

        if args.command == "train":
            import os
            import signal

            from pipeline import families
            from pipeline.families.training import exit_with_parent

            if os.environ.get("TORCHELASTIC_RUN_ID"):   # a rank under torchrun: never outlive the agent
                exit_with_parent(signal.SIGKILL)

            tags = {}
            for item in args.tag:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise ValueError(f"--tag {item!r}: expected KEY=VALUE")
                tags[key] = value
            spec = families.get(args.model)
            outcome = _reuse_finished(paths, args.model, tags) if args.reuse_finished and tags else None
            if outcome is not None:
                print(f"run {outcome.run_id} already carries {tags}; reusing it")
            else:
                outcome = spec.train(paths, spec.params(params), tags or None, features=args.features,
                                     dataset_version=args.dataset_version)
            if not outcome.run_id:   # another rank than 0 under torchrun: rank 0 reports
                return 0
            reports = [paths.reports / "train" / f"{args.model}.json", *([args.output] if args.output else [])]
            for report in reports:
                report.parent.mkdir(parents=True, exist_ok=True)
                report.write_text(json.dumps(dataclasses.asdict(outcome), indent=2))
            print(f"trained {args.model} on dataset {outcome.dataset_version[:12]}: run {outcome.run_id}, "
                  f"model {outcome.model_uri}")
            print(json.dumps({k: round(v, 4) for k, v in sorted(outcome.metrics.items())}, indent=2))
            return 0

        if args.command in ("retrain", "evaluate", "gate", "register", "package", "serve", "promote", "rollback",
                            "lineage", "models"):
            return _lifecycle(args, params, paths)
        if args.command in ("monitor", "online-gate", "replay"):
            return _closed_loop(args, paths)

        ingest_kwargs = {}
        if args.command in ("ingest", "run"):
            ingest_kwargs = {
                "events_source": args.events_source or params.ingest.events_source,
                "adapter_name": args.adapter or params.ingest.adapter,
                "catalog_source": args.catalog_source if args.catalog_source is not None
                else params.ingest.catalog_source,
            }
        for day in _days(args):
            interval = Interval.for_day(day)
            if args.command in ("ingest", "run"):
                ingest_events(interval, paths=paths, **ingest_kwargs)
            if args.command in ("validate", "run"):
                validate_batch(interval, paths, params.validate)
            if args.command in ("version", "run"):
                from pipeline.data.version import version_dataset

                version = version_dataset(interval, paths, push=not getattr(args, "no_push", False))
                report = paths.reports / "version" / f"{day}.json"
                report.parent.mkdir(parents=True, exist_ok=True)
                report.write_text(json.dumps(version.to_dict(), indent=2))
                print(f"published {day}: dataset version {version.version} "
                      f"({version.files} files) pushed to {version.remote or '(not pushed)'}")
        return 0
    except ValidationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ChampionMoved as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except ServingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 5
    except TrainingInProgress as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 6
    except (IngestError, ParamsError, FileNotFoundError, ValueError, NotValidated, RegistryError,
            UnknownDatasetVersion) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
