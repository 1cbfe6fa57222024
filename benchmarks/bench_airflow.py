"""Airflow's overhead on an end-to-end retrain, and the retrain's wall time (``make bench-airflow``).

In a temporary state folder: generate ``--events`` events over ``--days`` days, publish them with
``python -m pipeline run`` (ingest, validate, version), then run ``airflow dags test
retrain_<model>`` and time it. Every task prints its own stage time (``stage <name> took <s> s``,
``dags/shopml_common.timed``); Airflow's overhead is the DAG's wall time minus their sum: parsing,
task start-up, XCom, state bookkeeping in the metadata database.

    python -m benchmarks.bench_airflow --events 1000000 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipeline import families

REPO = Path(__file__).resolve().parent.parent


def _run(args: list[str], env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(
            [sys.executable, "-m", "pipeline", *args], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    if code != 0:
        sys.exit(f"`python -m pipeline {' '.join(args)}` failed ({code}); see {log}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--model", default="next_item", choices=families.names())
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (params.yaml's default is 20)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="shopml-bench-airflow-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPML_", "AIRFLOW"))}
    env["SHOPML_HOME"] = str(home)
    env.pop("BENTOML_HOME", None)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section in ("train_recommender", "train_propensity"):  # whichever --model trains
        params[section]["epochs"] = args.epochs
    (home / "params.yaml").write_text(yaml.safe_dump(params))
    env["SHOPML_PARAMS"] = str(home / "params.yaml")
    try:
        t = _run(
            [
                "generate",
                "--start-date",
                "2026-11-01",
                "--days",
                str(args.days),
                "--events-per-day",
                str(args.events // args.days),
                "--initial-users",
                str(args.users),
                "--initial-items",
                str(args.items),
            ],
            env,
            home / "generate.log",
        )
        print(f"generate: {args.events:,} events over {args.days} days in {t:.0f} s")
        t = _run(["run", "--start", "2026-11-01", "--days", str(args.days)], env, home / "run.log")
        print(f"ingest + validate + version: {t:.0f} s")
        _run(["airflow", "db", "migrate"], env, home / "migrate.log")  # not part of a retrain

        log = home / "retrain.log"
        wall = _run(["airflow", "dags", "test", f"retrain_{args.model}"], env, log)
        text = log.read_text()
        stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"stage (\w+) took ([0-9.]+) s", text)}
        skipped = [t for t in ("package", "promote") if t not in stages]
        work = sum(stages.values())
        print(f"retrain_{args.model} ({args.epochs} epochs): wall {wall:.1f} s")
        for name, seconds in stages.items():
            print(f"  stage {name:<12} {seconds:8.1f} s")
        if skipped:
            print(f"  (skipped by the gate: {', '.join(skipped)})")
        decision = re.search(r"gate decision: (\w+)", text)
        print(f"  gate decision: {decision.group(1) if decision else 'unknown'}")
        print(
            f"Airflow overhead: {wall - work:.1f} s of {wall:.1f} s ({(wall - work) / wall:.0%}); "
            f"{(wall - work) / max(len(stages), 1):.1f} s per task"
        )
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
