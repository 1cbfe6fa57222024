"""Ranking metrics over the full catalog (no sampled negatives)."""

from __future__ import annotations

import numpy as np
import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each target among all items, by descending score.

    Args:
        scores: [batch, n_items] scores for every item index.
        targets: [batch] the item that came next.
        exclude: [batch, m] item indices that must not be recommended (padding, history); a target
            is never excluded.

    Ties count against the target (pessimistic), so a constant scorer gets no credit.
    """
    scores = scores.float().clone()
    scores[:, :2] = -torch.inf  # padding and the unknown item are never recommended
    if exclude is not None:
        keep = scores.gather(1, targets[:, None])
        scores.scatter_(1, exclude, -torch.inf)
        scores.scatter_(1, targets[:, None], keep)
    target_score = scores.gather(1, targets[:, None])
    return (scores >= target_score).sum(dim=1) - 1


def ranking_values(ranks: np.ndarray, ks: tuple[int, ...] = (10, 20)) -> dict[str, np.ndarray]:
    """Per example, Recall@K (hit rate, one target per example) and NDCG@K from 0-based ranks.

    The one definition of the ranking metrics: training's validation and test figures
    (``recall_ndcg``), the lifecycle's evaluation through the pyfunc, and the gate's bootstrap over
    users all use it. A target outside the ranked list has any rank >= max(ks).
    """
    ranks = np.asarray(ranks)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"recall_at_{k}"] = hit.astype(np.float64)
        out[f"ndcg_at_{k}"] = np.where(hit, 1.0 / np.log2(ranks + 2), 0.0)
    return out


def recall_ndcg(ranks: np.ndarray, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over examples from 0-based ranks (0.0 for no examples)."""
    return {name: float(v.mean()) if v.size else 0.0 for name, v in ranking_values(ranks, ks).items()}


def scorer_metrics(scorer, histories: np.ndarray, targets: np.ndarray, batch: int = 1024) -> dict[str, float]:
    """Recall@10/20 and NDCG@10/20 of a scorer over the full catalog, in batches on the scorer's
    device (a model's own; the CPU for a baseline)."""
    from models.train import model_device

    device = model_device(scorer)
    histories, targets = torch.from_numpy(histories), torch.from_numpy(targets)
    ranks = []
    with torch.no_grad():
        for i in range(0, targets.numel(), batch):
            scores = scorer(histories[i : i + batch].to(device))
            ranks.append(target_ranks(scores, targets[i : i + batch].to(device)).cpu().numpy())
    return recall_ndcg(np.concatenate(ranks) if ranks else np.zeros(0))
