"""Purchase propensity: a wide & deep DCN-v2 (Wang et al., 2021) over id embeddings and dense features.

Item, category and brand ids are embedded (index 0 = unknown, so new ids are a value); dense
features are log-scaled and standardised with statistics from the training rows. A cross network
(explicit feature crosses) runs beside a deep network; their outputs are concatenated into one logit,
to which a wide part adds a linear term of the dense features and a learned bias per id (Cheng et
al., 2016): the logistic regression a shop would fit is inside the model, and the deep part only has
to learn what it misses. With no ``id_cardinalities`` the model reads only the dense features (ids
are then ignored): on shops where identity adds little beyond the counts, id embeddings overfit.
``constant_inputs`` learned constants join the cross network's input x0: then x0 * (W x) also holds
each feature's own linear terms, so a cross layer adds a degree without losing the lower ones.
``calibrate`` fits Platt scaling on validation rows so that ``predict_proba`` is a probability.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DCNConfig:
    n_dense: int
    id_cardinalities: tuple[int, ...]
    embedding_dim: int = 16
    cross_layers: int = 2
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    wide: bool = True
    constant_inputs: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class CrossLayer(nn.Module):
    """x_{l+1} = x_0 * (W x_l + b) + x_l."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


def _every_input_learnt(module, state_dict, prefix, *_) -> None:
    """A checkpoint saved before ``dense_learnt`` existed: every input enters as it did then."""
    if prefix + "dense_std" in state_dict and prefix + "dense_learnt" not in state_dict:
        state_dict[prefix + "dense_learnt"] = torch.ones_like(state_dict[prefix + "dense_std"])


class DCNv2(nn.Module):
    def __init__(self, config: DCNConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.ModuleList(nn.Embedding(n, config.embedding_dim) for n in config.id_cardinalities)
        width = config.n_dense + config.embedding_dim * len(config.id_cardinalities) + config.constant_inputs
        self.constant = nn.Parameter(torch.randn(config.constant_inputs))
        self.cross = nn.ModuleList(CrossLayer(width) for _ in range(config.cross_layers))
        layers, last = [], width
        for h in config.hidden:
            layers += [nn.Linear(last, h), nn.ReLU(), nn.Dropout(config.dropout)]
            last = h
        self.deep = nn.Sequential(*layers)
        self.head = nn.Linear(width + last, 1)
        if config.wide:
            self.wide = nn.Linear(config.n_dense, 1)
            self.id_bias = nn.ModuleList(nn.Embedding(n, 1) for n in config.id_cardinalities)
            for bias in self.id_bias:
                nn.init.zeros_(bias.weight)
        # Standardisation of dense inputs and Platt scaling of the logit, saved with the weights.
        self.register_buffer("dense_mean", torch.zeros(config.n_dense))
        self.register_buffer("dense_std", torch.ones(config.n_dense))
        # 1 for a dense input that varied in the rows the scaler saw, 0 for one that was constant
        # there: it taught the network nothing, so it enters as 0 whatever value it takes later.
        # Dividing by the std's floor instead made the first unseen value (a fraud family's first
        # chargeback count of 1 after a training set with none) a million standard deviations.
        self.register_buffer("dense_learnt", torch.ones(config.n_dense))
        self.register_load_state_dict_pre_hook(_every_input_learnt)
        self.register_buffer("platt", torch.tensor([1.0, 0.0]))

    @staticmethod
    def transform(dense: torch.Tensor) -> torch.Tensor:
        """Counts and durations are heavy-tailed: compress them before standardising."""
        return torch.sign(dense) * torch.log1p(dense.abs())

    def fit_scaler(self, dense: torch.Tensor) -> None:
        x = self.transform(dense)
        self.dense_mean.copy_(x.mean(0))
        self.dense_std.copy_(x.std(0).clamp_min(1e-6))
        # Compared exactly: a constant column's float32 std is its mean's rounding error, not 0.
        self.dense_learnt.copy_((x.amax(0) > x.amin(0)).to(x.dtype))

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits, [batch]."""
        standard = (self.transform(dense) - self.dense_mean) / self.dense_std
        # Selected, not multiplied: an infinite value of an unlearnt input (an amount past float32's
        # range) times 0 would be NaN.
        x_dense = torch.where(self.dense_learnt > 0, standard, torch.zeros_like(standard))
        x0 = torch.cat(
            [
                x_dense,
                *(emb(ids[:, j]) for j, emb in enumerate(self.embeddings)),
                self.constant.expand(x_dense.shape[0], -1),
            ],
            dim=1,
        )
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        logit = self.head(torch.cat([x, self.deep(x0)], dim=1))
        if self.config.wide:
            logit = logit + self.wide(x_dense) + sum(b(ids[:, j]) for j, b in enumerate(self.id_bias))
        return logit.squeeze(1)

    def predict_proba(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        a, b = self.platt
        return torch.sigmoid(a * self(ids, dense) + b)

    @torch.no_grad()
    def calibrate(self, ids: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor) -> None:
        """Fit Platt scaling (a * logit + b) on held-out rows by minimising log loss, on the model's device."""
        device = self.platt.device
        logits = self(ids.to(device), dense.to(device)).detach().float()
        labels = labels.to(device=device, dtype=logits.dtype)
        params = torch.tensor([1.0, 0.0], device=device, requires_grad=True)
        optimizer = torch.optim.LBFGS([params], max_iter=100)

        def closure():
            optimizer.zero_grad()
            with torch.enable_grad():
                loss = nn.functional.binary_cross_entropy_with_logits(params[0] * logits + params[1], labels)
                loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        self.platt.copy_(params.detach())


def packed_loss(n_ids: int):
    """Training loss on packed rows ``[ids (as float) | dense features | label]``.

    The training loop batches one tensor, so ids, features and labels travel packed in one row.
    """

    def loss(model: DCNv2, batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch[:, :n_ids].long(), batch[:, n_ids:-1])
        return nn.functional.binary_cross_entropy_with_logits(logits, batch[:, -1])

    return loss
