"""Recommendation baselines every evaluation reports beside the learned model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class PopularityRecommender:
    """Scores items by how often they were interacted with (optionally only recently)."""

    def __init__(self, n_items: int, item_indices: np.ndarray) -> None:
        counts = np.bincount(item_indices, minlength=n_items).astype(np.float32)
        self.scores = torch.from_numpy(counts)

    def score(self, histories: torch.Tensor) -> torch.Tensor:
        return self.scores.expand(histories.shape[0], -1)


class CooccurrenceRecommender:
    """Item-to-item: items that followed the user's recent items in other users' sequences.

    Counts transitions a -> b within ``window`` steps, weighted 1/distance, and scores candidates
    by the transitions from the user's last ``recent`` items (most recent weighted most). Falls back
    to popularity for users with no history. Sparse, so it scales to large catalogs.
    """

    def __init__(self, n_items: int, sequences: list[np.ndarray], window: int = 3, recent: int = 3) -> None:
        rows, cols, vals = [], [], []
        for seq in sequences:
            for d in range(1, window + 1):
                if seq.size > d:
                    rows.append(seq[:-d])
                    cols.append(seq[d:])
                    vals.append(np.full(seq.size - d, 1.0 / d, dtype=np.float32))
        if rows:
            index = torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)]))
            matrix = torch.sparse_coo_tensor(
                index, torch.from_numpy(np.concatenate(vals)), (n_items, n_items), check_invariants=True
            )
            self.matrix = matrix.coalesce().to_sparse_csr()
        else:
            self.matrix = torch.sparse_csr_tensor(
                torch.zeros(n_items + 1, dtype=torch.int64),
                torch.zeros(0, dtype=torch.int64),
                torch.zeros(0),
                (n_items, n_items),
            )
        pop = np.bincount(
            np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int64), minlength=n_items
        ).astype(np.float32)
        self.popularity = torch.from_numpy(pop / max(pop.max(), 1.0))
        self.n_items, self.recent = n_items, recent

    def to_state(self) -> dict:
        """What ``from_state`` rebuilds it from (plain tensors: ``torch.save`` writes them)."""
        m = self.matrix
        return {
            "crow": m.crow_indices(),
            "col": m.col_indices(),
            "values": m.values(),
            "n_items": self.n_items,
            "recent": self.recent,
            "popularity": self.popularity,
        }

    @classmethod
    def from_state(cls, state: dict) -> CooccurrenceRecommender:
        self = cls.__new__(cls)
        n = state["n_items"]
        self.matrix = torch.sparse_csr_tensor(state["crow"], state["col"], state["values"], (n, n))
        self.popularity, self.n_items, self.recent = state["popularity"], n, state["recent"]
        return self

    def entries(self, histories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The non-zero part of ``score`` (without popularity) as (rows, items, values), each
        (row, item) once: the transitions from each history's recent items, gathered from the
        matrix's rows. Costs what the user's items have, not the catalog's size (``score`` builds
        dense [batch, items] tensors: fine for evaluation, too slow per request)."""
        h = histories.cpu()[:, -self.recent :]
        batch, width = h.shape
        weight = (2.0 ** (torch.arange(width) - width + 1)).repeat(batch)
        items, rows = h.reshape(-1), torch.arange(batch).repeat_interleave(width)
        keep = items > 0  # padding has no weight, as in ``score``
        items, rows, weight = items[keep], rows[keep], weight[keep]
        crow, col, val = self.matrix.crow_indices(), self.matrix.col_indices(), self.matrix.values()
        starts = crow[items]
        lengths = crow[items + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return empty, empty, torch.zeros(0)
        offsets = (
            torch.arange(total)
            - (lengths.cumsum(0) - lengths).repeat_interleave(lengths)
            + starts.repeat_interleave(lengths)
        )
        rows, cols = rows.repeat_interleave(lengths), col[offsets]
        values = val[offsets] * weight.repeat_interleave(lengths).to(val.dtype)
        # Sum the transitions that reach the same item: a scratch [batch, items] accumulator and
        # a scan for its non-zeros costs less than sorting the pairs (``torch.unique``) when a
        # popular item's row is long.
        summed = torch.zeros(batch, self.n_items, dtype=values.dtype).index_put_((rows, cols), values, accumulate=True)
        rows, cols = summed.nonzero(as_tuple=True)
        return rows, cols, summed[rows, cols]

    def add_log_scores(self, scores: torch.Tensor, seq: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """Add ``weight * log(1 + cooccurrence + 1e-3 * popularity)`` of every item to ``scores``
        [batch, items], in place: the popularity part for all items (one vector, the same for every
        user) plus a correction where the co-occurrence of ``seq``'s recent items is not zero (a
        handful of items per user, from ``entries``, instead of [batch, catalog] dense tensors)."""
        popularity = 1e-3 * self.popularity.to(scores.device, scores.dtype)
        floor = torch.log1p(popularity)
        scores.add_(floor, alpha=weight)
        rows, items, counts = self.entries(seq)
        if counts.numel():
            rows, items, counts = (
                rows.to(scores.device),
                items.to(scores.device),
                counts.to(scores.device, scores.dtype),
            )
            delta = torch.log1p(counts + popularity[items]) - floor[items]
            scores.index_put_((rows, items), weight * delta, accumulate=True)
        return scores

    def score(self, histories: torch.Tensor) -> torch.Tensor:
        histories = histories.cpu()  # a sparse CPU matrix: a model on an accelerator sends its histories here
        recent = histories[:, -self.recent :]
        weights = torch.zeros(histories.shape[0], self.n_items)
        for j in range(recent.shape[1]):
            col = recent[:, j]
            weights[torch.arange(col.shape[0]), col] += 2.0 ** (j - recent.shape[1] + 1)
        weights[:, 0] = 0.0
        scores = (self.matrix.t() @ weights.t()).t().to_dense() if self.matrix._nnz() else torch.zeros_like(weights)
        # Popularity breaks ties and serves users without history.
        return scores + 1e-3 * self.popularity


@dataclass(frozen=True)
class ScorerConfig:
    """What the pyfunc and the packaged user states read of a model's config."""

    max_len: int
    dim: int = 1


class CooccurrenceScorer(nn.Module):
    """A ``CooccurrenceRecommender`` behind the sequential models' interface (``user_state``,
    ``score_states``, ``config``, ``tail_len``), so the strongest floor is logged, packaged and served
    by the recommender's own pyfunc and service when no learned model beats it.

    Scores are ``log(1 + cooccurrence + 1e-3 * popularity)`` (``add_log_scores``, the blend's
    co-occurrence part): the order of ``CooccurrenceRecommender.score``. With ``window=0`` (no
    transitions counted) it is popularity.
    """

    def __init__(self, cooccurrence: CooccurrenceRecommender, max_len: int) -> None:
        super().__init__()
        self.cooccurrence = cooccurrence
        self.config = ScorerConfig(max_len=max_len)

    @property
    def tail_len(self) -> int:
        return self.cooccurrence.recent

    def user_state(self, seq: torch.Tensor) -> torch.Tensor:
        return torch.zeros(seq.shape[0], self.config.dim)  # the whole state is the tail

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.score_states(self.user_state(seq), seq)

    def score_states(self, states: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        return self.cooccurrence.add_log_scores(torch.zeros(states.shape[0], self.cooccurrence.n_items), seq)
