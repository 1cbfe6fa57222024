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

    python -m benchmarks.bench_models [--data FILE | --sessions DIR] [--seeds 3] [--epochs 200]
                                      [--patience 10] [--json OUT] [--device auto] [--compile auto|on|off]

``--sessions DIR`` reads the session-based format of SR-GNN and GCE-GNN (``benchmarks/sessions.py``;
``python -m benchmarks.sessions train-item-views.csv DIR`` builds it from Diginetica's raw file):
the models learn from the training sessions (the last tenth held out for validation), and every
prefix of every test session is scored by P@20 and MRR@20 over all items.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.data import sample
from models.baselines import CooccurrenceRecommender, PopularityRecommender
from models.blend import BlendedRecommender, choose_beta
from models.sasrec import SASRec, SASRecConfig
from models.train import TrainConfig, train
from pipeline.families.next_item.features import NextItemExamples, left_pad, training_windows
from pipeline.families.next_item.train import evaluate_scorer

BEAUTY = sample("amazon_beauty", "Beauty.txt")  # $SHOPML_DATA_DIR, default ../shared/data
# Published on this very file (full-catalog ranking, leave-last-out).
PUBLISHED = {
    "SASRec, sampled softmax 256 negatives (eSASRec paper, 2025)": {"recall_at_10": 0.0921, "ndcg_at_10": 0.0531},
    "BSARec (AAAI 2024)": {"recall_at_10": 0.1008, "ndcg_at_10": 0.0611, "recall_at_20": 0.1373, "ndcg_at_20": 0.0703},
}
METRICS = ("recall_at_10", "ndcg_at_10", "recall_at_20", "ndcg_at_20")
# Published on the full Diginetica split of SR-GNN's preprocessing (``benchmarks/sessions.py``),
# as fractions (the papers print percentages).
PUBLISHED_SESSIONS = {
    "SR-GNN (Wu et al., AAAI 2019)": {"p_at_20": 0.5073, "mrr_at_20": 0.1759},
    "V-SkNN (Ludewig et al., 2019)": {"p_at_20": 0.5203, "mrr_at_20": 0.1841},
}
SESSION_METRICS = ("p_at_20", "mrr_at_20")


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
        if len(items) >= 3:  # a training, a validation and a test item at least
            seqs.append(np.asarray(items, dtype=np.int64))
    if not seqs:
        raise SystemExit(f"{path}: no user with three or more items")
    return seqs


def _examples(histories: list[np.ndarray], targets, max_len: int) -> NextItemExamples:
    return NextItemExamples(
        [str(u) for u in range(len(histories))],
        np.stack([left_pad(h, max_len) for h in histories]),
        np.asarray(targets, dtype=np.int64),
    )


def session_metrics(scorer, examples: NextItemExamples, batch: int = 1024) -> dict[str, float]:
    """P@20 (the share of examples whose next item is in the top 20; SR-GNN's name for hit rate)
    and MRR@20 (1 / rank inside the top 20, else 0), ranking every item, ties against the target."""
    from models.metrics import target_ranks
    from models.train import model_device

    device, ranks = model_device(scorer), []
    histories, targets = torch.from_numpy(examples.histories), torch.from_numpy(examples.targets)
    with torch.no_grad():
        for i in range(0, targets.numel(), batch):
            ranks.append(
                target_ranks(scorer(histories[i : i + batch].to(device)), targets[i : i + batch].to(device))
                .cpu()
                .numpy()
            )
    r = np.concatenate(ranks)
    return {"p_at_20": float((r < 20).mean()), "mrr_at_20": float(np.where(r < 20, 1.0 / (r + 1), 0.0).mean())}


def session_data(folder: Path, max_len: int, valid_share: float = 0.1):
    """Training sequences, validation and test examples from an SR-GNN session folder.

    The last ``valid_share`` of the training sessions (they are in time order) are held out: every
    prefix of them, with its next item, is a validation example. Every model learns from the other
    training sessions only, so all of them get the same information for the test."""
    from benchmarks.sessions import read_sessions

    data = read_sessions(folder)
    cut = max(1, int(len(data.train) * (1 - valid_share)))
    learn, held = data.train[:cut], [s for s in data.train[cut:] if s.size >= 2]
    if not held:
        raise SystemExit(f"{folder}: too few training sessions to hold out validation sessions")
    valid_h = [s[:i] for s in held for i in range(1, s.size)]
    valid_t = [s[i] for s in held for i in range(1, s.size)]
    train_seqs = {str(u): s + 1 for u, s in enumerate(learn)}  # 0 pads, 1 is the unknown item
    valid = _examples([h + 1 for h in valid_h], np.asarray(valid_t) + 1, max_len)
    test = _examples([p + 1 for p in data.test_prefixes], data.test_labels + 1, max_len)
    print(
        f"{folder}: {len(data.train)} training sessions ({len(learn)} to learn from, {len(held)} held out "
        f"for validation: {len(valid_t)} examples), {len(data.test_labels)} test examples, "
        f"{data.n_items - 1} items"
    )
    return train_seqs, valid, test, data.n_items + 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=BEAUTY)
    parser.add_argument(
        "--sessions",
        type=Path,
        help="an SR-GNN session folder (all_train_seq.txt, test.txt) instead of --data; reports P@20 and MRR@20",
    )
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
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the model (auto: on CUDA, where it pays off)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="write {model: {metric: mean}} here")
    args = parser.parse_args()

    if args.sessions:
        train_seqs, valid, test, n_items = session_data(args.sessions, args.max_len)
        metrics, score = SESSION_METRICS, session_metrics
    else:
        seqs = read_sequences(args.data)
        n_items = max(int(s.max()) for s in seqs) + 1
        train_seqs = {str(u): s[:-2] for u, s in enumerate(seqs)}
        valid = _examples([s[:-2] for s in seqs], [s[-2] for s in seqs], args.max_len)
        test = _examples([s[:-1] for s in seqs], [s[-1] for s in seqs], args.max_len)
        print(f"{args.data.name}: {len(seqs)} users, {n_items - 2} items, {sum(map(len, seqs))} interactions")
        metrics, score = METRICS, evaluate_scorer

    runs: dict[str, list[dict[str, float]]] = {}
    pop = PopularityRecommender(n_items, np.concatenate(list(train_seqs.values())))
    runs["popularity"] = [score(pop.score, test)]
    cooc = CooccurrenceRecommender(n_items, list(train_seqs.values()))
    runs["cooccurrence"] = [score(cooc.score, test)]
    windows = torch.from_numpy(training_windows(train_seqs, args.max_len))
    started = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        torch.manual_seed(seed)
        model = SASRec(
            SASRecConfig(
                n_items=n_items,
                max_len=args.max_len,
                dim=args.dim,
                layers=args.layers,
                dropout=args.dropout,
                loss=args.loss,
            )
        )
        if args.loss == "sampled":
            model.set_item_counts(torch.bincount(windows[:, 1:].reshape(-1), minlength=n_items))
        start = time.perf_counter()
        result = train(
            model,
            windows,
            lambda m, b: m(b[:, :-1], b[:, 1:]),
            lambda m: evaluate_scorer(m, valid)["ndcg_at_10"],
            TrainConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                patience=args.patience,
                seed=seed,
                device=args.device,
                compile={"auto": "auto", "on": True, "off": False}[args.compile],
                progress=False,
            ),
        )
        seconds = time.perf_counter() - start
        model.eval()
        beta, curve = choose_beta(model, cooc, lambda m: evaluate_scorer(m, valid)["ndcg_at_10"])
        runs.setdefault("sasrec", []).append(score(model, test))
        runs.setdefault("sasrec_cooc_blend", []).append(score(BlendedRecommender(model, cooc, beta), test))
        print(
            f"seed {seed}: {result.epochs_run} epochs in {seconds:.0f} s on {result.device} "
            f"({seconds / max(result.epochs_run, 1):.1f} s/epoch, {result.samples_per_second:,.0f} sequences/s), "
            f"best epoch {result.best_epoch + 1} (validation NDCG@10 {result.best_metric:.4f}); blend weight "
            f"{beta:g} (validation NDCG@10 {curve[beta]:.4f}; by weight: "
            + ", ".join(f"{b:g}: {v:.4f}" for b, v in curve.items())
            + ")",
            flush=True,
        )
    if args.seeds:
        print(
            f"time to converge (early stopping included), mean over seeds: "
            f"{(time.perf_counter() - started) / args.seeds:.0f} s per seed"
        )

    print(f"\n{'model':>20} " + " ".join(f"{m:>17}" for m in metrics) + "   (test, mean ± std over seeds)")
    summary = {}
    for name, results in runs.items():
        values = {m: np.array([r[m] for r in results]) for m in metrics}
        summary[name] = {m: float(v.mean()) for m, v in values.items()}
        print(f"{name:>20} " + " ".join(f"{v.mean():>9.4f} ± {v.std():.4f}" for v in values.values()))
    published = PUBLISHED_SESSIONS if args.sessions else PUBLISHED if args.data.resolve() == BEAUTY.resolve() else {}
    if published:
        print(
            "\npublished"
            + (" on the full Diginetica split (SR-GNN preprocessing):" if args.sessions else " on this file:")
        )
        for name, figures in published.items():
            print(f"  {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
