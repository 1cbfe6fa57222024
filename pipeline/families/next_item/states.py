"""Every known user's state, computed once at packaging: a request by user id is then a dot product.

A known user's history changes only when a new dataset version is published, yet encoding it is
most of the cost of a recommendation (the transformer over up to ``max_len`` items). Packaging runs
the recommender's own ``user_states`` (the code path of evaluation and of ``predict``) over every
history of the feature snapshot, in batches, and ships the result in the Bento as a BentoML model
``shopml-user-states:<model version>.<snapshot>``:

* ``states.npy``: [users, dim] float32, the model's user states;
* ``tails.npy``: [users, tail_len] int64, each history's most recent item indices (a blend's
  co-occurrence part reads them);
* ``cold.npy``: [users] bool, no item of the history is known to the model (popularity answers);
* ``users.json``: the user ids, in row order; ``meta.json``: counts, dimension, seconds taken.

The service scores them with the recommender's ``rank``, batched; a request that sends its own
history still runs the transformer. The parity check replays requests by user id against answers
computed offline, so a state that does not match the user's features fails packaging.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

BATCH = 1024


def write_user_states(pyfunc, user_ids: list[str], histories: list[list[str]], out: Path, batch: int = BATCH) -> dict:
    """Encode every history with the recommender pyfunc (``SASRecPyfunc``) and write the files."""
    start = time.perf_counter()
    states, tails, cold = [], [], []
    for i in range(0, len(histories), batch):
        users = pyfunc.user_states(pyfunc.encode_many(histories[i : i + batch]))
        states.append(users.states.float().cpu().numpy())
        tails.append(users.tails.cpu().numpy())
        cold.append(users.cold.cpu().numpy())
    dim, tail_len = pyfunc.model.config.dim, pyfunc.model.tail_len
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "states.npy", np.concatenate(states) if states else np.zeros((0, dim), np.float32))
    np.save(out / "tails.npy", np.concatenate(tails) if tails else np.zeros((0, tail_len), np.int64))
    np.save(out / "cold.npy", np.concatenate(cold) if cold else np.zeros(0, bool))
    (out / "users.json").write_text(json.dumps(list(user_ids)))
    meta = {"users": len(user_ids), "dim": dim, "tail_len": tail_len, "seconds": round(time.perf_counter() - start, 2)}
    (out / "meta.json").write_text(json.dumps(meta))
    return meta


class UserStateTable:
    """The loaded states: ``row(user_id)`` (None for a user packaging did not see) and ``take(rows)``."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        self.meta = json.loads((path / "meta.json").read_text())
        self.states = torch.from_numpy(np.load(path / "states.npy"))
        self.tails = torch.from_numpy(np.load(path / "tails.npy"))
        self.cold = torch.from_numpy(np.load(path / "cold.npy"))
        self._row = {u: i for i, u in enumerate(json.loads((path / "users.json").read_text()))}
        if not (len(self._row) == len(self.states) == len(self.tails) == len(self.cold)):
            raise ValueError(
                f"user states at {path} are inconsistent: {len(self._row)} users, "
                f"{len(self.states)} states, {len(self.tails)} tails, {len(self.cold)} cold flags"
            )

    def __len__(self) -> int:
        return len(self._row)

    def row(self, user_id: str) -> int | None:
        return self._row.get(user_id)

    def take(self, rows: list[int]):
        from pipeline.families.next_item.pyfunc import UserStates

        index = torch.tensor(rows, dtype=torch.long)
        return UserStates(self.states[index], self.tails[index], self.cold[index])
