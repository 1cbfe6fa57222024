"""Run by tests/test_ddp.py under torchrun: a small SASRec training on every rank.

Each rank writes what it saw and a checksum of its final weights to OUT/rank<r>.json.
"""

import json
import os
import sys
from pathlib import Path

import torch

from models.sasrec import SASRec, SASRecConfig
from models.train import TrainConfig, train

out = Path(sys.argv[1])
torch.manual_seed(0)  # every rank starts from the same weights, as DDP expects
sequences = torch.randint(2, 200, (301, 11))
model = SASRec(SASRecConfig(n_items=200, max_len=10, dim=16, layers=1))
seen = []


def loss_fn(m, batch):
    seen.append(batch.shape[0])
    return m(batch[:, :-1], batch[:, 1:], n_negatives=32)


result = train(
    model,
    sequences,
    loss_fn,
    lambda m: -float(m.item_emb.weight.abs().sum()),
    TrainConfig(epochs=3, batch_size=32, patience=1, seed=0, progress=False),
)
rank = int(os.environ["RANK"])
checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
(out / f"rank{rank}.json").write_text(
    json.dumps(
        {
            "world": int(os.environ["WORLD_SIZE"]),
            "rows_seen": sum(seen),
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "checksum": checksum,
        }
    )
)
