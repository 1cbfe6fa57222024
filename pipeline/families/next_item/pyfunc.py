"""The next-item recommender as an MLflow pyfunc model: item ids in, ranked item ids out.

Input: a DataFrame with ``history`` (a list of item ids, oldest first) and optionally ``k``.
Output: a DataFrame with ``items`` (top-k item ids), ``scores`` (their scores) and ``source``:
``model``, or ``popularity`` for a cold-start history (empty, or with no item the model knows),
which gets the most popular items of the training period instead of the model's guess.
Items unknown to the model in a history are kept as the "unknown item", never an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

DEFAULT_K = 20


class SASRecPyfunc(mlflow.pyfunc.PythonModel):
    @classmethod
    def from_parts(cls, model, item_ids: list[str], popular: list[str]) -> SASRecPyfunc:
        """A ready wrapper around an in-memory model (to infer the signature before logging)."""
        wrapper = cls()
        wrapper._set(model, item_ids, popular)
        return wrapper

    def _set(self, model, item_ids: list[str], popular: list[str]) -> None:
        self.model = model.eval()
        self.item_ids = list(item_ids)
        self.index = {item: i + 2 for i, item in enumerate(self.item_ids)}
        self.popular = list(popular)

    def load_context(self, context) -> None:
        from models.baselines import CooccurrenceRecommender, CooccurrenceScorer
        from models.blend import BlendedRecommender
        from models.sasrec import SASRec, SASRecConfig

        if "checkpoint" not in context.artifacts:  # a floor serving as the model (CooccurrenceScorer)
            saved = torch.load(context.artifacts["cooccurrence"], map_location="cpu", weights_only=True)
            model = CooccurrenceScorer(CooccurrenceRecommender.from_state(saved["state"]), int(saved["max_len"]))
        else:
            ckpt = torch.load(context.artifacts["checkpoint"], map_location="cpu", weights_only=True)
            model = SASRec(SASRecConfig(**ckpt["model_args"]))
            model.load_state_dict(ckpt["model"])
        if "checkpoint" in context.artifacts and "cooccurrence" in context.artifacts:
            # SASRec blended with co-occurrence (models/blend.py)
            saved = torch.load(context.artifacts["cooccurrence"], map_location="cpu", weights_only=True)
            model = BlendedRecommender(model, CooccurrenceRecommender.from_state(saved["state"]), saved["beta"])
        with open(context.artifacts["vocab"]) as fh:
            item_ids = json.load(fh)
        with open(context.artifacts["popular"]) as fh:
            self._set(model, item_ids, json.load(fh))

    def encode(self, history) -> np.ndarray:
        max_len = self.model.config.max_len
        seq = [self.index.get(str(item), 1) for item in list(history)[-max_len:]]
        out = np.zeros(max_len, dtype=np.int64)
        if seq:
            out[-len(seq) :] = seq
        return out

    def encode_many(self, histories) -> torch.Tensor:
        """[n, max_len] left-padded item indices of raw histories, on the model's device."""
        from models.train import model_device

        return torch.from_numpy(np.stack([self.encode(h) for h in histories])).to(model_device(self.model))

    def user_states(self, encoded: torch.Tensor) -> UserStates:
        """What ``rank`` needs of each encoded history: the model's user state, the most recent
        items (a blend's co-occurrence reads them) and whether no item of it is known (cold)."""
        with torch.no_grad():
            states = self.model.user_state(encoded)
        return UserStates(states, encoded[:, -self.model.tail_len :], (encoded < 2).all(dim=1))

    def rank(self, users: UserStates, ks: list[int], exclude: list[list[str]] | None = None) -> pd.DataFrame:
        """``rank_lists`` as ``predict``'s output table."""
        items, values, sources = self.rank_lists(users, ks, exclude)
        return pd.DataFrame({"items": items, "scores": values, "source": sources})

    def rank_lists(
        self, users: UserStates, ks: list[int], exclude: list[list[str]] | None = None
    ) -> tuple[list[list[str]], list[list[float]], list[str]]:
        """The top-k items of each user state (``predict``'s output), without the ``exclude`` items
        of each row. Serving calls it on user states computed once at packaging (known users) or
        per request (sent histories); ``predict`` on states of the histories it is given."""
        with torch.no_grad():
            scores = self.model.score_states(users.states, users.tails)
        scores[:, :2] = -torch.inf  # padding and the unknown item are never recommended
        for row, items in enumerate(exclude or []):
            excluded = [self.index[i] for i in items if i in self.index]
            if excluded:
                scores[row, excluded] = -torch.inf
        top_scores, top = scores.topk(min(max(ks), len(self.item_ids)), dim=1)
        top_scores, top = top_scores.tolist(), top.tolist()
        cold = users.cold.tolist()
        items, values, sources = [], [], []
        for row, k in enumerate(ks):
            if cold[row]:
                # Popularity scores decrease with rank, so they sort like the model's scores do.
                banned = set(exclude[row]) if exclude else ()
                items.append([i for i in self.popular if i not in banned][:k])
                values.append([1.0 / (rank + 1) for rank in range(len(items[-1]))])
                sources.append("popularity")
            else:
                kept = [(i, v) for i, v in zip(top[row][:k], top_scores[row][:k], strict=True) if v > -np.inf]
                items.append([self.item_ids[i - 2] for i, _ in kept])
                values.append([float(v) for _, v in kept])
                sources.append("model")
        return items, values, sources

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        ks = (
            model_input["k"].fillna(DEFAULT_K).astype(int).tolist()
            if "k" in model_input
            else [DEFAULT_K] * len(model_input)
        )
        return self.rank(self.user_states(self.encode_many(model_input["history"])), ks)


@dataclass
class UserStates:
    """A batch of users as the model scores them: states [n, dim], tails [n, tail_len] (the most
    recent item indices), cold [n] (no known item: answered from popularity)."""

    states: torch.Tensor
    tails: torch.Tensor
    cold: torch.Tensor

    def __len__(self) -> int:
        return len(self.states)

    @staticmethod
    def cat(parts: list[UserStates]) -> UserStates:
        return UserStates(
            torch.cat([p.states for p in parts]),
            torch.cat([p.tails for p in parts]),
            torch.cat([p.cold for p in parts]),
        )


def pyfunc_model_args(
    model, item_ids: list[str], popular: list[str], checkpoint: Path | None, workdir: Path, example: pd.DataFrame
) -> dict:
    """The arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` for a trained SASRec (or a
    ``BlendedRecommender`` around one, or a ``CooccurrenceScorer`` floor, which has no
    ``checkpoint``): the artifacts ``load_context`` reads (``checkpoint``, ``vocab``, ``popular``,
    and for a blend or a floor ``cooccurrence``), the project code, and a signature inferred from
    ``example``. The vocabulary, popularity and co-occurrence files go to ``workdir``.
    """
    from mlflow.models import infer_signature

    from models.baselines import CooccurrenceScorer
    from models.blend import BlendedRecommender
    from pipeline.core.tracking import REPO_ROOT

    vocab_file, popular_file = Path(workdir) / "vocab.json", Path(workdir) / "popular.json"
    vocab_file.write_text(json.dumps(list(item_ids)))
    popular_file.write_text(json.dumps(list(popular)))
    wrapper = SASRecPyfunc.from_parts(model, item_ids, popular)
    artifacts = {"vocab": str(vocab_file), "popular": str(popular_file)}
    if isinstance(model, CooccurrenceScorer):
        artifacts["cooccurrence"] = str(Path(workdir) / "cooccurrence.pt")
        torch.save({"state": model.cooccurrence.to_state(), "max_len": model.config.max_len}, artifacts["cooccurrence"])
    else:
        artifacts["checkpoint"] = str(checkpoint)
    if isinstance(model, BlendedRecommender):
        artifacts["cooccurrence"] = str(Path(workdir) / "cooccurrence.pt")
        torch.save({"state": model.cooccurrence.to_state(), "beta": model.beta}, artifacts["cooccurrence"])
    return {
        "python_model": SASRecPyfunc(),
        "artifacts": artifacts,
        "code_paths": [str(REPO_ROOT / "models"), str(REPO_ROOT / "pipeline")],
        "signature": infer_signature(example, wrapper.predict(None, example)),
        "input_example": example,
    }
