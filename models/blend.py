"""SASRec blended with item co-occurrence: the sequential model's scores plus a weighted log of the
co-occurrence scores of the user's last items.

On shop data the two are complementary: co-occurrence is hard to beat on the next step after a
popular item, SASRec on longer and rarer histories. The weight ``beta`` is chosen on validation
data (``choose_beta``), with the co-occurrence counted on the same sequences SASRec trained on;
``beta = 0`` is SASRec alone, so the blend is never worse on validation than SASRec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from models.baselines import CooccurrenceRecommender
from models.sasrec import SASRec

BETAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


class BlendedRecommender(nn.Module):
    """``sasrec(history) + beta * log(1 + cooccurrence(history))`` for every item."""

    def __init__(self, sasrec: SASRec, cooccurrence: CooccurrenceRecommender, beta: float) -> None:
        super().__init__()
        self.sasrec, self.cooccurrence, self.beta = sasrec, cooccurrence, float(beta)

    @property
    def config(self):
        return self.sasrec.config

    @property
    def tail_len(self) -> int:
        """How many of a history's most recent items ``score_states`` reads."""
        return self.cooccurrence.recent

    def user_state(self, seq: torch.Tensor) -> torch.Tensor:
        return self.sasrec.user_state(seq)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.score_states(self.user_state(seq), seq)

    def score_states(self, states: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """SASRec's scores of the user states plus the co-occurrence boost of the histories' last
        ``tail_len`` items (``seq`` may hold only those)."""
        scores = self.sasrec.score_states(states)
        if self.beta == 0.0:
            return scores
        return self.cooccurrence.add_log_scores(scores, seq, self.beta)


def choose_beta(
    sasrec: SASRec,
    cooccurrence: CooccurrenceRecommender,
    validate: Callable[[nn.Module], float],
    betas: Sequence[float] = BETAS,
) -> tuple[float, dict[float, float]]:
    """The weight with the best validation metric (the smallest on ties), and the metric of each."""
    curve = {b: validate(BlendedRecommender(sasrec, cooccurrence, b)) for b in betas}
    best = max(curve.values())
    return min(b for b, v in curve.items() if v == best), curve
