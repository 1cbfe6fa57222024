"""Run by tests/test_models.py: a small SASRec training that a test may SIGKILL and start again.

Usage: kill_worker.py CHECKPOINT_DIR OUTPUT_FILE. Batches are slowed down a little so that the test
can kill the process between two checkpoints.
"""

import sys
import time
from pathlib import Path

import torch

from models.sasrec import SASRec, SASRecConfig
from models.train import TrainConfig, train

checkpoints, output = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
data = torch.randint(2, 300, (400, 11))
model = SASRec(SASRecConfig(n_items=300, max_len=10, dim=16, layers=1))


def loss_fn(m, batch):
    time.sleep(0.02)
    return m(batch[:, :-1], batch[:, 1:], n_negatives=32)


train(
    model,
    data,
    loss_fn,
    lambda m: -float(m.item_emb.weight.abs().sum()),
    TrainConfig(epochs=4, batch_size=32, patience=10, seed=0, progress=False),
    checkpoint_dir=checkpoints,
)
torch.save(model.state_dict(), output)
