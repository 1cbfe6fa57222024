"""SASRec: self-attentive sequential recommendation (Kang and McAuley, 2018).

Item and learned positional embeddings feed causal transformer blocks; the hidden state at each
position scores every item of the catalog by a dot product with the (shared) item embeddings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SASRecConfig:
    n_items: int
    max_len: int = 50
    dim: int = 64
    heads: int = 2
    layers: int = 2
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


class SASRec(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.n_items, config.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(config.dim, config.heads, dim_feedforward=config.dim * 2,
                                           dropout=config.dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        causal = torch.triu(torch.ones(config.max_len, config.max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        """[batch, len] item indices (0 = padding, on the left) -> [batch, len, dim]."""
        length = seq.shape[1]
        positions = torch.arange(length, device=seq.device)
        x = self.item_emb(seq) * self.config.dim**0.5 + self.pos_emb(positions)[None]
        x = self.dropout(x) * (seq > 0).unsqueeze(-1)
        # Left padding with a causal mask: every position attends to itself, so no row is all-masked.
        x = self.blocks(x, mask=self.causal_mask[:length, :length], is_causal=True)
        return self.norm(x)

    def forward(self, seq: torch.Tensor, labels: torch.Tensor | None = None, n_negatives: int = 256) -> torch.Tensor:
        """Without labels: scores of every item as the next one after each history, [batch, n_items].

        With next-item ``labels`` ([batch, len], 0 = none): the training loss. Training goes through
        ``forward`` so that DistributedDataParallel sees it and synchronises gradients.
        """
        if labels is not None:
            return self.sampled_loss(seq, labels, n_negatives)
        return self.hidden(seq)[:, -1] @ self.item_emb.weight.t()

    def sampled_loss(self, inputs: torch.Tensor, labels: torch.Tensor, n_negatives: int = 256) -> torch.Tensor:
        """Softmax cross-entropy of each next item against negatives shared across the batch.

        Shared uniform negatives keep the cost independent of the catalog size; a negative that
        happens to be the label is masked out.
        """
        h = self.hidden(inputs)                                  # [B, L, D]
        mask = labels > 0
        h, labels = h[mask], labels[mask]                        # [N, D], [N]
        negatives = torch.randint(2, self.config.n_items, (n_negatives,), device=labels.device)
        pos = (h * self.item_emb(labels)).sum(-1, keepdim=True)  # [N, 1]
        neg = h @ self.item_emb(negatives).t()                   # [N, K]
        neg = neg.masked_fill(negatives[None] == labels[:, None], -torch.inf)
        logits = torch.cat([pos, neg], dim=1)
        return nn.functional.cross_entropy(logits, torch.zeros_like(labels))
