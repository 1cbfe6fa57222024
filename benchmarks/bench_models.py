"""Next-item metrics on Amazon Beauty (../shared/data) or any file in its format, on this machine.

Protocol of the sequential-recommendation papers that use this file: one user per line, items in
time order; per user, the last item is the test target, the second to last the validation target,
the rest is training; every item of the catalog is ranked (no sampled negatives).

Every model gets the same information: SASRec's weights learn from the training part only, so the
co-occurrence baseline (and the co-occurrence inside the blend) is counted on the training part
too; all test histories include the validation item. The recipe (epochs, patience, lr, dropout,
the blend's weight) is chosen on the validation targets, never on the test targets. Each model is
trained with ``--seeds`` seeds; the table shows mean ± standard deviation, beside the figures
published for this file.

Models: ``popularity``, ``cooccurrence``, ``sasrec`` (alone) and ``sasrec_cooc_blend`` (what the
pipeline promotes: SASRec + beta * log(1 + co-occurrence), ``models/blend.py``).

    python -m benchmarks.bench_models [--data FILE] [--seeds 3] [--epochs 200] [--patience 10]
                                      [--json OUT] [--device auto] [--compile auto|on|off]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models.baselines import CooccurrenceRecommender, PopularityRecommender
from models.blend import BlendedRecommender, choose_beta
from models.sasrec import SASRec, SASRecConfig
from models.train import TrainConfig, train
from pipeline.families.next_item.features import NextItemExamples, left_pad, training_windows
from pipeline.families.next_item.train import evaluate_scorer

BEAUTY = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "amazon_beauty" / "Beauty.txt"
# Published on this very file (full-catalog ranking, leave-last-out).
PUBLISHED = {
    "SASRec, sampled softmax 256 negatives (eSASRec paper, 2025)": {"recall_at_10": 0.0921, "ndcg_at_10": 0.0531},
    "BSARec (AAAI 2024)": {"recall_at_10": 0.1008, "ndcg_at_10": 0.0611, "recall_at_20": 0.1373,
                           "ndcg_at_20": 0.0703},
}
METRICS = ("recall_at_10", "ndcg_at_10", "recall_at_20", "ndcg_at_20")


def read_sequences(path: Path) -> list[np.ndarray]:
    """One user per line, ``user item item ...``, items in time order; ids shifted by 1 so that 0
    pads and 1 is the unknown item."""
    seqs = []
    for number, line in enumerate(path.open(), start=1):
        fields = line.split()
        try:
            items = [int(x) + 1 for x in fields[1:]]
        except ValueError as exc:
            raise SystemExit(f"{path}:{number}: not 'user item item ...' with integer item ids ({exc})") from None
        if len(items) >= 3:          # a training, a validation and a test item at least
            seqs.append(np.asarray(items, dtype=np.int64))
    if not seqs:
        raise SystemExit(f"{path}: no user with three or more items")
    return seqs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=BEAUTY)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--epochs", type=int, default=200, help="at most; early stopping on validation NDCG@10")
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--loss", choices=("full", "sampled"), default="full")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile the model (auto: on CUDA, where it pays off)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="write {model: {metric: mean}} here")
    args = parser.parse_args()

    seqs = read_sequences(args.data)
    n_items = max(int(s.max()) for s in seqs) + 1
    train_seqs = {str(u): s[:-2] for u, s in enumerate(seqs)}
    users = [str(u) for u in range(len(seqs))]
    valid = NextItemExamples(users, np.stack([left_pad(s[:-2], args.max_len) for s in seqs]),
                             np.array([s[-2] for s in seqs]))
    test = NextItemExamples(users, np.stack([left_pad(s[:-1], args.max_len) for s in seqs]),
                            np.array([s[-1] for s in seqs]))
    print(f"{args.data.name}: {len(seqs)} users, {n_items - 2} items, {sum(map(len, seqs))} interactions")

    runs: dict[str, list[dict[str, float]]] = {}
    pop = PopularityRecommender(n_items, np.concatenate(list(train_seqs.values())))
    runs["popularity"] = [evaluate_scorer(pop.score, test)]
    cooc = CooccurrenceRecommender(n_items, list(train_seqs.values()))
    runs["cooccurrence"] = [evaluate_scorer(cooc.score, test)]
    windows = torch.from_numpy(training_windows(train_seqs, args.max_len))
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        torch.manual_seed(seed)
        model = SASRec(SASRecConfig(n_items=n_items, max_len=args.max_len, dim=args.dim, layers=args.layers,
                                    dropout=args.dropout, loss=args.loss))
        if args.loss == "sampled":
            model.set_item_counts(torch.bincount(windows[:, 1:].reshape(-1), minlength=n_items))
        start = time.perf_counter()
        result = train(
            model, windows, lambda m, b: m(b[:, :-1], b[:, 1:]),
            lambda m: evaluate_scorer(m, valid)["ndcg_at_10"],
            TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                        seed=seed, device=args.device, compile={"auto": "auto", "on": True, "off": False}[args.compile],
                        progress=False),
        )
        seconds = time.perf_counter() - start
        model.eval()
        beta, curve = choose_beta(model, cooc, lambda m: evaluate_scorer(m, valid)["ndcg_at_10"])
        runs.setdefault("sasrec", []).append(evaluate_scorer(model, test))
        runs.setdefault("sasrec_cooc_blend", []).append(evaluate_scorer(BlendedRecommender(model, cooc, beta), test))
        print(f"seed {seed}: {result.epochs_run} epochs in {seconds:.0f} s on {result.device} "
              f"({seconds / max(result.epochs_run, 1):.0f} s/epoch, {result.samples_per_second:,.0f} sequences/s), "
              f"best epoch {result.best_epoch + 1} (validation NDCG@10 {result.best_metric:.4f}); blend weight "
              f"{beta:g} (validation NDCG@10 {curve[beta]:.4f})", flush=True)

    print(f"\n{'model':>20} " + " ".join(f"{m:>17}" for m in METRICS) + "   (test, mean ± std over seeds)")
    summary = {}
    for name, results in runs.items():
        values = {m: np.array([r[m] for r in results]) for m in METRICS}
        summary[name] = {m: float(v.mean()) for m, v in values.items()}
        print(f"{name:>20} " + " ".join(f"{v.mean():>9.4f} ± {v.std():.4f}" for v in values.values()))
    if args.data.resolve() == BEAUTY.resolve():
        print("\npublished on this file:")
        for name, figures in PUBLISHED.items():
            print(f"  {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
