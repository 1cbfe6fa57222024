"""Load benchmark of the served recommender (``make bench-serve``).

Builds a ``next_item`` Bento around a SASRec pyfunc over a catalog of ``--items`` items (default
50,000; the default model size of ``params.yaml``, weights at their seeded initial values, which cost
the same to run as trained ones) and a feature snapshot of ``--users`` users, then:

1. the ceiling: the raw pyfunc's batched forward pass (``predict`` on batches of 64 histories, the
   batch the server forms), rows per second, in this process with nothing else running;
2. ``bentoml serve`` of the Bento with adaptive batching on, then off; for each, a load generator in
   a separate process (``benchmarks.load_client``) drives ``/recommend`` with known users at each
   ``--concurrency`` level and reports requests per second and p50/p95/p99 latency.

Everything lives in a temporary folder, removed at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def synthetic_shop(items: int, users: int, seed: int = 0):
    """Events (canonical schema) and a catalog: users viewing Zipf-popular items over a week."""
    import polars as pl

    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 60, users)
    n = int(lengths.sum())
    ranks = np.minimum(rng.zipf(1.2, n), items) - 1
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    events = pl.DataFrame({
        "event_time": [start + timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, 7 * 86400, n))],
        "user_id": np.repeat([f"u{u}" for u in range(users)], lengths),
        "session_id": np.repeat([f"s{u}" for u in range(users)], lengths),
        "item_id": [f"i{r}" for r in ranks],
        "event_type": rng.choice(["view", "add_to_cart", "purchase"], n, p=[0.85, 0.1, 0.05]),
        "price": rng.uniform(1, 100, n), "quantity": np.ones(n, dtype=np.int64),
    })
    catalog = pl.DataFrame({"item_id": [f"i{i}" for i in range(items)],
                            "category": [f"c{i % 50}" for i in range(items)],
                            "brand": [f"b{i % 300}" for i in range(items)],
                            "price": rng.uniform(1, 100, items)})
    return events, catalog


def save_model(directory: Path, items: int) -> Path:
    """A SASRec pyfunc over ``items`` items, saved as the training stage logs it."""
    import mlflow.pyfunc
    import pandas as pd
    import torch

    from models.sasrec import SASRec, SASRecConfig
    from pipeline.core.params import TrainRecommenderParams
    from pipeline.families.next_item.pyfunc import pyfunc_model_args

    p = TrainRecommenderParams()
    config = SASRecConfig(n_items=items + 2, max_len=p.max_len, dim=p.dim, heads=p.heads, layers=p.layers,
                          dropout=p.dropout)
    torch.manual_seed(0)
    model = SASRec(config).eval()
    parts = directory / "parts"
    parts.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "model_args": config.to_dict()}, parts / "best.pt")
    item_ids = [f"i{i}" for i in range(items)]
    example = pd.DataFrame({"history": [item_ids[:5], item_ids[5:7]], "k": [10, 10]})
    out = directory / "model"
    mlflow.pyfunc.save_model(str(out), **pyfunc_model_args(model, item_ids, item_ids[:100], parts / "best.pt",
                                                           parts, example))
    return out


def ceiling(model_dir: Path, histories: list[list[str]], k: int, batch: int = 64, seconds: float = 5.0) -> dict:
    """Rows per second of the pyfunc's batched predict, and of the bare torch forward pass."""
    import mlflow.pyfunc
    import pandas as pd
    import torch

    from models.train import model_device

    pyfunc = mlflow.pyfunc.load_model(str(model_dir))
    frames = [pd.DataFrame({"history": histories[i:i + batch], "k": k})
              for i in range(0, len(histories) - batch, batch)]
    pyfunc.predict(frames[0])
    rows, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        rows += len(pyfunc.predict(frames[(rows // batch) % len(frames)]))
    predict_rps = rows / (time.perf_counter() - start)
    inner = pyfunc.unwrap_python_model()
    encoded = torch.from_numpy(np.stack([inner.encode(h) for h in histories[:batch]]))
    encoded = encoded.to(model_device(inner.model))
    with torch.no_grad():
        inner.model(encoded)
        rows, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            inner.model(encoded).topk(k, dim=1)
            rows += batch
    return {"predict_rows_per_s": predict_rps, "forward_rows_per_s": rows / (time.perf_counter() - start),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--modes", default="on,off", help="adaptive batching modes to run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="shopml-bench-serve-"))
    os.environ["BENTOML_HOME"] = str(home / "bentoml")   # before BentoML is imported
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    try:
        import bentoml

        from pipeline import families
        from pipeline.core.settings import StatePaths
        from pipeline.serving.package import build, served
        from pipeline.serving.snapshot import SNAPSHOT_MODEL, write_snapshot_of

        paths = StatePaths(home=home, dvc_remote_url=str(home / "dvc-remote"))
        t0 = time.perf_counter()
        events, catalog = synthetic_shop(args.items, args.users)
        model_dir = save_model(home, args.items)
        model_tag, snapshot_tag = f"next_item:bench-{args.items}", f"{SNAPSHOT_MODEL}:bench-{args.items}"
        bentoml.mlflow.import_model(model_tag, str(model_dir))
        with bentoml.models.create(snapshot_tag) as snapshot:
            write_snapshot_of(events, catalog, "synthetic", Path(snapshot.path))
        bento_tag = build({"model_name": "next_item", "model_tag": model_tag, "snapshot_tag": snapshot_tag,
                           "version": "bench", "run_id": "none", "dataset_version": "synthetic",
                           "git_commit": "bench", "bento_tag": f"shopml-next-item:bench-{args.items}"},
                          families.get("next_item").service)
        print(f"setup: {args.items:,} items, {args.users:,} users, {events.height:,} events, Bento {bento_tag} "
              f"({time.perf_counter() - t0:.0f} s)")

        users = [f"u{u}" for u in np.random.default_rng(1).integers(0, args.users, 2000)]
        histories_by_user = dict(zip(*events.group_by("user_id", maintain_order=True)
                                     .agg("item_id").to_dict(as_series=False).values(), strict=True))
        roof = ceiling(model_dir, [histories_by_user[u][-50:] for u in users], args.k)
        print(f"ceiling (no server, {roof['torch_threads']} torch threads, batch 64): pyfunc predict "
              f"{roof['predict_rows_per_s']:,.0f} rows/s; bare forward + top-k "
              f"{roof['forward_rows_per_s']:,.0f} rows/s")

        bodies = home / "bodies.json"
        bodies.write_text(json.dumps([{"user_id": u, "k": args.k} for u in users]))
        results = []
        for mode in args.modes.split(","):
            env = {"SHOPML_ADAPTIVE_BATCHING": "1" if mode == "on" else "0"}
            with served(paths, bento_tag, env=env) as url:
                for c in [int(x) for x in args.concurrency.split(",")]:
                    out = subprocess.run([sys.executable, "-m", "benchmarks.load_client", "--url", f"{url}/recommend",
                                          "--bodies", str(bodies), "--concurrency", str(c),
                                          "--seconds", str(args.seconds)],
                                         cwd=REPO, capture_output=True, text=True, check=True)
                    row = {"batching": mode, **json.loads(out.stdout.strip().splitlines()[-1])}
                    results.append(row)
                    print(f"batching {mode:<3} concurrency {c:>3}: {row['rps']:8.1f} req/s  p50 {row['p50_ms']:7.1f} ms"
                          f"  p95 {row['p95_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}",
                          flush=True)
        at64 = [r for r in results if r["concurrency"] == max(int(x) for x in args.concurrency.split(","))]
        for r in at64:
            print(f"at {r['concurrency']} clients, batching {r['batching']}: {r['rps']:.0f} req/s = "
                  f"{r['rps'] / roof['predict_rows_per_s']:.0%} of the pyfunc ceiling, p99 {r['p99_ms']:.1f} ms")
        print(json.dumps({"ceiling": roof, "results": results}))
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
