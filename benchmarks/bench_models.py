"""Next-item metrics on Amazon Beauty (../shared/data) and training throughput, on this machine.

Protocol of the sequential-recommendation papers that use this file: per user, the last item is the
test target, the second to last the validation target, the rest is training; every item of the
catalog is ranked (no sampled negatives). Prints Recall@10/20 and NDCG@10/20 for popularity,
item co-occurrence and SASRec, and SASRec's training throughput in sequences per second.

    python -m benchmarks.bench_models [--epochs 8] [--patience 3] [--device auto] [--compile auto|on|off]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models.baselines import CooccurrenceRecommender, PopularityRecommender
from models.sasrec import SASRec, SASRecConfig
from models.train import TrainConfig, train
from pipeline.families.next_item.features import NextItemExamples, left_pad, training_windows
from pipeline.families.next_item.train import evaluate_scorer

BEAUTY = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "amazon_beauty" / "Beauty.txt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile the model (auto: on CUDA, where it pays off)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, default=BEAUTY)
    args = parser.parse_args()

    # Beauty item ids are 1..n; index = id + 1 keeps 0 for padding and 1 for "unknown".
    seqs = [np.array([int(x) + 1 for x in line.split()[1:]], dtype=np.int64) for line in args.data.open()]
    n_items = max(int(s.max()) for s in seqs) + 1
    train_seqs = {str(u): s[:-2] for u, s in enumerate(seqs)}
    users = [str(u) for u in range(len(seqs))]
    valid = NextItemExamples(users, np.stack([left_pad(s[:-2], args.max_len) for s in seqs]),
                             np.array([s[-2] for s in seqs]))
    test = NextItemExamples(users, np.stack([left_pad(s[:-1], args.max_len) for s in seqs]),
                            np.array([s[-1] for s in seqs]))
    print(f"{args.data.name}: {len(seqs)} users, {n_items - 2} items, {sum(map(len, seqs))} interactions")

    results = {}
    pop = PopularityRecommender(n_items, np.concatenate(list(train_seqs.values())))
    results["popularity"] = evaluate_scorer(pop.score, test)
    # Co-occurrence may also learn from the validation item, as SASRec's test history includes it.
    cooc = CooccurrenceRecommender(n_items, [s[:-1] for s in seqs])
    results["cooccurrence"] = evaluate_scorer(cooc.score, test)

    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=n_items, max_len=args.max_len, dim=args.dim, dropout=0.5))
    windows = torch.from_numpy(training_windows(train_seqs, args.max_len))
    start = time.perf_counter()
    result = train(
        model, windows, lambda m, b: m(b[:, :-1], b[:, 1:], n_negatives=512),
        lambda m: evaluate_scorer(m, valid)["ndcg_at_10"],
        TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, patience=args.patience,
                    device=args.device, compile={"auto": "auto", "on": True, "off": False}[args.compile],
                    progress=False),
    )
    model.eval()
    results["sasrec"] = evaluate_scorer(model, test)
    print(f"sasrec: {result.epochs_run} epochs in {time.perf_counter() - start:.0f}s on {result.device}, "
          f"{result.samples_per_second:,.0f} sequences/s ({result.samples_per_second * args.max_len:,.0f} "
          f"positions/s), best epoch {result.best_epoch + 1}")
    print(f"{'model':>14} {'Recall@10':>10} {'NDCG@10':>9} {'Recall@20':>10} {'NDCG@20':>9}")
    for name, m in results.items():
        print(f"{name:>14} {m['recall_at_10']:>10.4f} {m['ndcg_at_10']:>9.4f} {m['recall_at_20']:>10.4f} "
              f"{m['ndcg_at_20']:>9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
