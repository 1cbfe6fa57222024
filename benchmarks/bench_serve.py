"""Load benchmark of both served models (``make bench-serve``).

Builds, in a temporary Bento store, the Bentos ``make demo`` builds, around models of production
size with their weights at seeded initial values (they cost the same to run as trained ones):

* ``next_item``: SASRec (``params.yaml``'s size) over a catalog of ``--items`` items (default
  50,000), blended with co-occurrence as the promoted recommender is, the feature snapshot of a
  synthetic week of ``--users`` users, and every user's packaged state;
* ``purchase_propensity``: the wide & deep DCN-v2 of ``params.yaml`` on the same snapshot.

Then, for each path:

* **known users**: ``POST /recommend`` with ``{"user_id", "k": 10}`` (a packaged user state: a dot
  product with the item embeddings and a top-k);
* **sent histories**: ``POST /recommend`` with a 5-50-item history and no user id (the transformer);
* **propensity 100 / 1000**: ``POST /purchase_probability`` with 100 or 1,000 candidates looked up
  by user id (feature rows from the snapshot, one forward pass);

it measures the raw ceiling (the service's own batch computation, ``pipeline.families.<family>.serving``,
on batches as the server forms them, no HTTP, nothing else running) and the served figures: a load
generator in its own process (``benchmarks.load_client``), closed-loop clients at each
``--concurrency`` level, requests per second and p50/p95/p99. It ends with one line per path:
``<path> at 64 clients: <req/s> req/s, p99 <ms> ms, <percent>% of the raw ceiling``.

Everything shares the machine's cores (the load generator too). ``--layout two-hop`` measures the
layout of earlier releases for comparison: not built any more, so its figures come from the
docs/benchmarks/serving.md (202 req/s, p99 753 ms at 64 clients on the 2-core machine, for known users).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
K = 10


def synthetic_shop(items: int, users: int, seed: int = 0):
    """Events (canonical schema) and a catalog: users viewing Zipf-popular items over a week."""
    import polars as pl

    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 60, users)
    n = int(lengths.sum())
    ranks = np.minimum(rng.zipf(1.2, n), items) - 1
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    events = pl.DataFrame(
        {
            "event_time": [start + timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, 7 * 86400, n))],
            "user_id": np.repeat([f"u{u}" for u in range(users)], lengths),
            "session_id": np.repeat([f"s{u}" for u in range(users)], lengths),
            "item_id": [f"i{r}" for r in ranks],
            "event_type": rng.choice(["view", "add_to_cart", "purchase"], n, p=[0.85, 0.1, 0.05]),
            "price": rng.uniform(1, 100, n),
            "quantity": np.ones(n, dtype=np.int64),
        }
    )
    catalog = pl.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(items)],
            "category": [f"c{i % 50}" for i in range(items)],
            "brand": [f"b{i % 300}" for i in range(items)],
            "price": rng.uniform(1, 100, items),
        }
    )
    return events, catalog


def save_recommender(directory: Path, items: int, sequences: list[list[str]]) -> Path:
    """A SASRec pyfunc over ``items`` items blended with co-occurrence counted on ``sequences``,
    saved as the training stage logs it."""
    import mlflow.pyfunc
    import pandas as pd
    import torch

    from models.baselines import CooccurrenceRecommender
    from models.blend import BlendedRecommender
    from models.sasrec import SASRec, SASRecConfig
    from pipeline.core.params import TrainRecommenderParams
    from pipeline.families.next_item.pyfunc import pyfunc_model_args

    p = TrainRecommenderParams()
    config = SASRecConfig(
        n_items=items + 2, max_len=p.max_len, dim=p.dim, heads=p.heads, layers=p.layers, dropout=p.dropout
    )
    torch.manual_seed(0)
    sasrec = SASRec(config).eval()
    item_ids = [f"i{i}" for i in range(items)]
    index = {item: i + 2 for i, item in enumerate(item_ids)}
    cooccurrence = CooccurrenceRecommender(items + 2, [np.array([index[i] for i in s]) for s in sequences])
    model = BlendedRecommender(sasrec, cooccurrence, beta=1.0)
    parts = directory / "recommender-parts"
    parts.mkdir(parents=True)
    torch.save({"model": sasrec.state_dict(), "model_args": config.to_dict()}, parts / "best.pt")
    example = pd.DataFrame({"history": [item_ids[:5], item_ids[5:7]], "k": [10, 10]})
    out = directory / "recommender"
    mlflow.pyfunc.save_model(
        str(out), **pyfunc_model_args(model, item_ids, item_ids[:100], parts / "best.pt", parts, example)
    )
    return out


def save_propensity(directory: Path, catalog) -> Path:
    """The DCN-v2 propensity pyfunc at ``params.yaml``'s size, saved as the training stage logs it."""
    import mlflow.pyfunc
    import torch

    from models.propensity import DCNConfig, DCNv2
    from pipeline.core.params import TrainPropensityParams
    from pipeline.families.purchase_propensity.features import PROPENSITY_DENSE
    from pipeline.families.purchase_propensity.pyfunc import PropensityPyfunc

    p = TrainPropensityParams()
    config = DCNConfig(
        n_dense=len(PROPENSITY_DENSE),
        id_cardinalities=(),
        embedding_dim=p.embedding_dim,
        cross_layers=p.cross_layers,
        hidden=p.hidden,
        dropout=p.dropout,
        wide=p.wide,
        constant_inputs=p.constant_inputs,
    )
    torch.manual_seed(0)
    model = DCNv2(config).eval()
    parts = directory / "propensity-parts"
    parts.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "model_args": config.to_dict()}, parts / "propensity.pt")
    vocabs = {
        "item_idx": catalog["item_id"].to_list(),
        "category_idx": catalog["category"].unique().to_list(),
        "brand_idx": catalog["brand"].unique().to_list(),
    }
    (parts / "vocabs.json").write_text(json.dumps(vocabs))
    out = directory / "propensity"
    mlflow.pyfunc.save_model(
        str(out),
        python_model=PropensityPyfunc(),
        artifacts={"weights": str(parts / "propensity.pt"), "vocabs": str(parts / "vocabs.json")},
        code_paths=[str(REPO / "models"), str(REPO / "pipeline")],
    )
    return out


def rate(fn, batches: list, seconds: float, rows_per_batch) -> float:
    """Rows (requests) per second of ``fn`` over ``batches`` in turn, after one warm-up call."""
    fn(batches[0])
    done, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(batches[i % len(batches)])
        done += rows_per_batch(batches[i % len(batches)])
        i += 1
    return done / (time.perf_counter() - start)


def ceilings(
    recommender_path: Path,
    propensity_path: Path,
    snapshot_paths: dict[str, Path],
    states_path: Path,
    bodies: dict[str, list[dict]],
    batch: int,
    seconds: float,
) -> dict[str, float]:
    """Requests per second of each path's batch computation, without HTTP: ``pipeline.families.<family>.serving``
    on batches of ``batch`` requests (recommendations) or of the candidates the server puts in one
    batch (propensity: ``batch`` x 16 candidates, at least one request)."""
    import mlflow.pyfunc
    import torch

    from pipeline.families.next_item.serving import NextItemRanker, Row
    from pipeline.families.next_item.states import UserStateTable
    from pipeline.families.purchase_propensity.serving import PropensityRequest, PropensityScorer
    from pipeline.serving.snapshot import FeatureSnapshot

    states = UserStateTable(states_path)
    ranker = NextItemRanker(
        mlflow.pyfunc.load_model(str(recommender_path)).unwrap_python_model(),
        FeatureSnapshot.load(snapshot_paths["next_item"]),
        states,
    )
    scorer = PropensityScorer(
        mlflow.pyfunc.load_model(str(propensity_path)).unwrap_python_model(),
        FeatureSnapshot.load(snapshot_paths["purchase_propensity"]),
    )

    def chunks(rows: list, size: int) -> list[list]:
        return [rows[i : i + size] for i in range(0, max(len(rows) - size, 1), size)]

    known = [Row(states.row(b["user_id"]), None, b["k"], []) for b in bodies["known users"]]
    sent = [Row(None, b["history"], b["k"], []) for b in bodies["sent histories"]]
    out = {
        "known users": rate(ranker.rank_rows, chunks(known, batch), seconds, len),
        "sent histories": rate(ranker.rank_rows, chunks(sent, batch), seconds, len),
    }
    for path in ("propensity 100", "propensity 1000"):
        requests = [PropensityRequest(**b).candidates for b in bodies[path]]
        per_batch = max(1, batch * 16 // len(requests[0]))
        out[path] = rate(scorer.score_requests, chunks(requests, per_batch), seconds, len)
    out["torch_threads"] = torch.get_num_threads()
    return out


def request_bodies(events, catalog, users: int, n: int = 2000) -> dict[str, list[dict]]:
    import polars as pl

    rng = np.random.default_rng(1)
    who = [f"u{u}" for u in rng.integers(0, users, n)]
    histories = events.group_by("user_id", maintain_order=True).agg(pl.col("item_id").tail(50))
    histories = dict(zip(histories["user_id"].to_list(), histories["item_id"].to_list(), strict=True))
    items = catalog["item_id"].to_list()
    touched = events.group_by("user_id").agg(pl.col("item_id").unique())
    touched = dict(zip(touched["user_id"].to_list(), touched["item_id"].to_list(), strict=True))

    def candidates(user: str, size: int) -> list[dict]:
        # What a ranking stage sends: the user's own items first, the rest from the catalog.
        own = touched[user][: size // 4]
        rest = [items[int(i)] for i in rng.integers(0, len(items), size - len(own))]
        return [{"user_id": user, "item_id": i} for i in own + rest]

    return {
        "known users": [{"user_id": u, "k": K} for u in who],
        "sent histories": [{"history": histories[u], "k": K} for u in who],
        "propensity 100": [{"candidates": candidates(u, 100)} for u in who[:300]],
        "propensity 1000": [{"candidates": candidates(u, 1000)} for u in who[:60]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--concurrency", default="1,8,32,64,128")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--paths", default="known users,sent histories,propensity 100,propensity 1000")
    parser.add_argument("--batch", type=int, default=64, help="the ceilings' batch (the server's default)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the servers, repeatable")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    from benchmarks.load_client import measure

    paths_wanted = [p.strip() for p in args.paths.split(",")]
    levels = [int(x) for x in args.concurrency.split(",")]

    home = Path(tempfile.mkdtemp(prefix="shopml-bench-serve-"))
    os.environ["BENTOML_HOME"] = str(home / "bentoml")  # before BentoML is imported
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    try:
        import bentoml

        from pipeline import families
        from pipeline.core.settings import StatePaths
        from pipeline.serving.package import build, served, user_states
        from pipeline.serving.snapshot import snapshot_model, write_snapshot_of

        paths = StatePaths(home=home, dvc_remote_url=str(home / "dvc-remote"))
        t0 = time.perf_counter()
        events, catalog = synthetic_shop(args.items, args.users)
        bodies = request_bodies(events, catalog, args.users)
        sequences = events.group_by("user_id", maintain_order=True).agg("item_id")["item_id"].to_list()
        recommender = save_recommender(home, args.items, sequences)
        propensity = save_propensity(home, catalog)
        bentos, snapshots = {}, {}
        for name, saved in (("next_item", recommender), ("purchase_propensity", propensity)):
            model_tag = f"{name}:bench-{args.items}"
            bentoml.mlflow.import_model(model_tag, str(saved))
            spec = families.get(name)
            snapshot_tag = f"{snapshot_model(name)}:bench-{args.items}"
            with bentoml.models.create(snapshot_tag) as snapshot:
                write_snapshot_of(spec.snapshot_tables, events, catalog, "synthetic", Path(snapshot.path))
            snapshots[name] = Path(bentoml.models.get(snapshot_tag).path)
            states_tag = user_states(spec, model_tag, snapshot_tag)
            bento_args = {
                "model_name": name,
                "model_tag": model_tag,
                "snapshot_tag": snapshot_tag,
                "version": "bench",
                "run_id": "none",
                "dataset_version": "synthetic",
                "git_commit": "bench",
                "bento_tag": f"shopml-{name.replace('_', '-')}:bench-{args.items}",
                **({"states_tag": states_tag} if states_tag else {}),
            }
            bentos[name] = (build(bento_args, spec.service), states_tag)
        states_meta = json.loads((Path(bentoml.models.get(bentos["next_item"][1]).path) / "meta.json").read_text())
        print(
            f"setup: {args.items:,} items, {args.users:,} users, {events.height:,} events; user states of "
            f"{states_meta['users']:,} users packaged in {states_meta['seconds']:.1f} s "
            f"({time.perf_counter() - t0:.0f} s in all)",
            flush=True,
        )

        roof = ceilings(
            recommender,
            propensity,
            snapshots,
            Path(bentoml.models.get(bentos["next_item"][1]).path),
            bodies,
            args.batch,
            4.0,
        )
        print(
            f"raw ceilings (no HTTP, {roof['torch_threads']} torch threads, batches of {args.batch} requests, "
            "propensity: of 1,024 candidates):",
            flush=True,
        )
        for path in paths_wanted:
            print(f"  {path:<16} {roof[path]:10,.0f} req/s", flush=True)

        env = dict(e.split("=", 1) for e in args.env)
        results = []
        for bento, endpoint, group in (
            ("next_item", "recommend", ("known users", "sent histories")),
            ("purchase_propensity", "purchase_probability", ("propensity 100", "propensity 1000")),
        ):
            group = [p for p in group if p in paths_wanted]
            if not group:
                continue
            with served(paths, bentos[bento][0], env=env) as url:
                for path in group:
                    body_file = home / f"{path.replace(' ', '-')}.json"
                    body_file.write_text(json.dumps(bodies[path]))
                    for c in levels:
                        measured = measure(f"{url}/{endpoint}", body_file, c, args.seconds)
                        row = {"path": path, **measured}
                        row["of_ceiling"] = row["rps"] / roof[path]
                        results.append(row)
                        print(
                            f"{path:<16} {c:>4} clients: {row['rps']:8.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
                            f"p95 {row['p95_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                            f"{row['of_ceiling']:6.1%} of ceiling  errors {row['errors']}",
                            flush=True,
                        )
                import httpx

                stats = httpx.post(f"{url}/metadata", json={}, timeout=30).json()["batching"]
                per_batch = 1000 * stats["model_seconds"] / max(stats["batches"], 1)
                print(
                    f"  {bento} server batches: {stats['batches']:,.0f} of {stats['mean_batch']:.1f} rows on "
                    f"average, largest {stats['largest']:.0f}, {per_batch:.1f} ms each, refused "
                    f"{stats['overloaded']:.0f} (one worker's figures)",
                    flush=True,
                )
        at = 64 if 64 in levels else max(levels)
        for r in results:
            if r["concurrency"] == at:
                print(
                    f"{r['path']} at {at} clients: {r['rps']:.0f} req/s, p99 {r['p99_ms']:.0f} ms, "
                    f"{r['of_ceiling']:.0%} of the raw ceiling"
                )
        print(json.dumps({"ceilings": roof, "results": results}))
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
