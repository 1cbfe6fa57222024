"""Training throughput of both models through the project's one training loop, eager and compiled.

The inputs are random but shaped like production: SASRec on windows of ``--max-len`` + 1 items
from a catalog of ``--items`` items (Zipf-distributed, as shop traffic is), DCN-v2 on rows of the
propensity features (3 id columns with realistic cardinalities, 16 dense columns). Each variant runs
``--epochs`` epochs of ``models.train.train``; the first epoch (warm-up, and compilation where
asked) is left out and the median of the others is printed, in samples per second.

Needs only torch and numpy, so it runs as-is on a GPU machine:

    python -m benchmarks.bench_throughput [--device auto] [--compile both]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from models.propensity import DCNConfig, DCNv2, packed_loss
from models.sasrec import SASRec, SASRecConfig
from models.train import TrainConfig, select_device, train

PROPENSITY_IDS = (60_000, 40, 500)  # items, categories, brands
N_DENSE = 16


def _zipf_items(rng: np.random.Generator, n_items: int, shape: tuple[int, ...]) -> np.ndarray:
    ranks = rng.zipf(1.2, size=shape)
    return (np.minimum(ranks, n_items - 2) + 1).astype(np.int64)  # 0 is padding, 1 unknown


def sasrec_case(args, rng):
    windows = torch.from_numpy(_zipf_items(rng, args.items, (args.sasrec_rows, args.max_len + 1)))
    model = SASRec(SASRecConfig(n_items=args.items, max_len=args.max_len, dim=args.dim))
    return model, windows, lambda m, b: m(b[:, :-1], b[:, 1:], n_negatives=args.negatives)


def dcn_case(args, rng):
    ids = np.stack([rng.integers(0, n, size=args.dcn_rows) for n in PROPENSITY_IDS], axis=1)
    dense = rng.lognormal(0.0, 1.5, size=(args.dcn_rows, N_DENSE))
    labels = (rng.random(args.dcn_rows) < 0.05)[:, None]
    packed = torch.from_numpy(np.concatenate([ids, dense, labels], axis=1).astype(np.float32))
    model = DCNv2(DCNConfig(n_dense=N_DENSE, id_cardinalities=PROPENSITY_IDS))
    n_ids = len(PROPENSITY_IDS)
    model.fit_scaler(packed[:, n_ids:-1])
    return model, packed, packed_loss(n_ids)


def measure(case, args, batch_size: int, compile_: bool) -> tuple[float, float, str]:
    torch.manual_seed(0)
    model, data, loss = case(args, np.random.default_rng(0))
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=batch_size,
        patience=args.epochs,
        device=args.device,
        compile=compile_,
        progress=False,
    )
    start = time.perf_counter()
    result = train(model, data, loss, lambda m: 0.0, config)
    steady = [h["samples_per_second"] for h in result.history[1:]]
    return statistics.median(steady), time.perf_counter() - start, result.device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off")
    parser.add_argument("--epochs", type=int, default=3, help="at least 2: the first is warm-up")
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--negatives", type=int, default=256)
    parser.add_argument("--sasrec-rows", type=int, default=None, help="default: 8,192 on CPU, 131,072 on GPU")
    parser.add_argument("--dcn-rows", type=int, default=None, help="default: 131,072 on CPU, 2,097,152 on GPU")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated; default 256 on CPU, 256,1024 on GPU")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is warm-up)")
    device = select_device(args.device)
    gpu = device.type == "cuda"
    args.sasrec_rows = args.sasrec_rows or (131_072 if gpu else 8_192)
    args.dcn_rows = args.dcn_rows or (2_097_152 if gpu else 131_072)
    batch_sizes = [int(b) for b in (args.batch_sizes or ("256,1024" if gpu else "256")).split(",")]
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}; bf16 autocast: {gpu}")
    print(f"{'model':>8} {'batch':>6} {'compile':>8} {'samples/s':>12} {'wall s':>7}")
    for label, case in (("SASRec", sasrec_case), ("DCN-v2", dcn_case)):
        for batch_size in batch_sizes:
            for compile_ in compiles:
                rate, wall, _ = measure(case, args, batch_size, compile_)
                print(f"{label:>8} {batch_size:>6} {compile_!s:>8} {rate:>12,.0f} {wall:>7.1f}", flush=True)
    print(
        f"SASRec: {args.items:,} items, sequences of {args.max_len}, dim {args.dim}, {args.negatives} shared "
        f"negatives; DCN-v2: ids {PROPENSITY_IDS}, {N_DENSE} dense features; median of epochs 2..{args.epochs}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
